"""Row-by-row checks of customers to score, against the schema in ``params/data.yaml``.

The pipeline refuses a whole table when one value is wrong (``churnlab.data.validate_table``);
scoring keeps every good row and rejects each bad one with its reasons. The rules are the
schema's: a numeric column holds finite numbers within its ``min`` and ``max`` and is blank
only when ``nullable``; a categorical column holds one of its allowed values (any text when
they are ``null``) and is never blank; the id is never blank and appears once.

Decisions:

- The target column may be present (last month's labelled file) or absent: it is never read.
- Columns the schema does not name are ignored (an export from a customer system carries
  more columns than the model reads); :attr:`CheckedRows.extra` names them so the caller can
  say so.
- A schema column missing from the table is not a row's fault: the table is refused.
- Every row of a repeated id is rejected: which copy is right cannot be told.
- Duplicates are looked for within the frame given: a caller that checks a file in parts
  (Dask partitions) checks ids across parts itself.

Every rule is one operation over a whole column; only the failing rows become text, so a
million clean rows cost a few column scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnlab.data import TableSpec, _as_text
from churnlab.errors import ChurnlabError

# a decimal number as people write it (no thousands separators, no inf or nan): what does
# not match is "not a finite number" before any parsing
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
ROW = "row"  # the rejects' row number: 1 is the first row after the header
REASON = "reason"


@dataclass(frozen=True)
class CheckedRows:
    """The outcome of :func:`check_rows`.

    Attributes:
        valid: the rows that passed, typed (numbers as float64, the rest as text, blanks
            missing), with the id and feature columns only, in the table's order and index.
        rejects: one row per rejected row: ``row`` (its index + 1), the id as given, and
            ``reason``: every rule it breaks, ``column: rule: found value``, joined by ``; ``.
        extra: the table's columns the schema does not name (ignored).
    """

    valid: pd.DataFrame
    rejects: pd.DataFrame
    extra: list[str]


def _found(values: pd.Series) -> pd.Series:
    """How a failing value is shown in a reason: quoted as given, or ``blank``."""
    text = values.astype("str")
    shown = "'" + text + "'"
    return shown.mask(values.isna() | (text.str.strip() == ""), "blank")


def _reasons(mask: np.ndarray, column: str, rule: str, values: pd.Series) -> pd.Series:
    """``column: rule: found value`` for the rows of ``mask`` (indexed like ``values``)."""
    if not mask.any():  # the common case: no text to build
        return pd.Series([], dtype="str")
    return f"{column}: {rule}: found " + _found(values[mask])


def _numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The column as float64 (blank and unparsed as NaN) and a mask of unparsed values."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        numbers = series.astype("float64").to_numpy()
        return numbers, np.isinf(numbers)
    text = _as_text(series)
    values = pa.array(text.astype("str").to_numpy(na_value=None), type=pa.string())
    parses = pc.fill_null(pc.match_substring_regex(values, NUMBER), False)
    parsed = pc.cast(pc.if_else(parses, values, pa.scalar(None, pa.string())), pa.float64())
    numbers = parsed.to_numpy(zero_copy_only=False)
    unparsed = text.notna().to_numpy() & ~parses.to_numpy(zero_copy_only=False)
    return numbers, unparsed | np.isinf(numbers)


def _numeric_reasons(name: str, rule: dict, raw: pd.Series) -> tuple[pd.Series, list[pd.Series]]:
    numbers, unparsed = _numbers(raw)
    blank = np.isnan(numbers) & ~unparsed
    reasons = [_reasons(unparsed, name, "a finite number", raw)]
    if not rule.get("nullable", False):
        reasons.append(_reasons(blank, name, "not blank", raw))
    with np.errstate(invalid="ignore"):  # NaN compares False: blanks are judged above
        if rule.get("min") is not None:
            reasons.append(_reasons(numbers < rule["min"], name, f">= {rule['min']}", raw))
        if rule.get("max") is not None:
            reasons.append(_reasons(numbers > rule["max"], name, f"<= {rule['max']}", raw))
    return pd.Series(numbers, index=raw.index, name=name), reasons


def _categorical_reasons(
    name: str, allowed: list[str] | None, raw: pd.Series
) -> tuple[pd.Series, list[pd.Series]]:
    text = _as_text(raw)
    blank = text.isna().to_numpy()
    reasons = [_reasons(blank, name, "not blank", raw)]
    if allowed is not None:
        unknown = ~blank & ~text.isin(allowed).to_numpy()
        reasons.append(_reasons(unknown, name, f"one of {allowed}", raw))
    return text.rename(name), reasons


def _id_reasons(name: str, raw: pd.Series) -> tuple[pd.Series, list[pd.Series]]:
    ids = _as_text(raw)
    blank = ids.isna().to_numpy()
    repeated = ids.duplicated(keep=False).to_numpy() & ~blank
    reasons = [_reasons(blank, name, "not blank", raw)]
    if repeated.any():
        copies = ids[repeated].map(ids[repeated].value_counts())
        reasons.append(
            f"{name}: unique: found "
            + _found(raw[repeated])
            + " in "
            + copies.astype("str")
            + " rows"
        )
    return ids.rename(name), reasons


def extra_columns(columns, spec: TableSpec) -> list[str]:
    """The columns the schema does not name (the target is named: it is ignored, not extra)."""
    named = {spec.id_column, *spec.features, spec.target}
    return [c for c in columns if c not in named]


def check_rows(raw: pd.DataFrame, spec: TableSpec, where: str) -> CheckedRows:
    """Check every row of ``raw`` against the schema; split the good rows from the rejects.

    Args:
        raw: the customers as read (text columns, or typed columns of a Parquet file).
        spec: the data description (``params/data.yaml`` ``schema``).
        where: the file, for the message when a column is missing.

    Raises:
        ChurnlabError: a schema column (id or feature) missing from the table.
    """
    expected = [spec.id_column, *spec.features]
    missing = [c for c in expected if c not in raw.columns]
    if missing:
        raise ChurnlabError(
            f"{where}: missing column(s) {missing} named in params/data.yaml schema; the file "
            f"has {list(raw.columns)}: add them, or describe this file's columns in the schema"
        )
    typed, reasons = {}, []
    typed[spec.id_column], found = _id_reasons(spec.id_column, raw[spec.id_column])
    reasons += found
    for name, rule in spec.numeric.items():
        typed[name], found = _numeric_reasons(name, rule, raw[name])
        reasons += found
    for name, allowed in spec.categorical.items():
        typed[name], found = _categorical_reasons(name, allowed, raw[name])
        reasons += found
    table = pd.DataFrame(typed, index=raw.index)
    failing = [r for r in reasons if len(r)]
    if failing:
        # rule order within a row: the schema's column order, as the checks ran
        joined = pd.concat(failing).groupby(level=0, sort=True).agg("; ".join)
    else:
        joined = pd.Series([], dtype="str")
    rejected = raw.index.isin(joined.index)
    rejects = pd.DataFrame(
        {
            ROW: (joined.index.to_numpy() + 1).astype("int64"),
            spec.id_column: raw.loc[joined.index, spec.id_column].astype("str").to_numpy(),
            REASON: joined.astype("str").to_numpy(),
        }
    )
    return CheckedRows(
        valid=table[~rejected], rejects=rejects, extra=extra_columns(raw.columns, spec)
    )
