"""Reading, validating and cleaning the customer table (splitting it: churnlab.split).

Every function takes the data description (``schema`` params) as an argument; none knows a
column name of its own.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from churnlab.errors import ChurnlabError

if TYPE_CHECKING:  # pandera is imported where a table is validated: not by every importer
    import pandera.pandas as pa

# the prepared tables name these two columns the same whatever the source
ID_COLUMN = "customer_id"
TARGET_COLUMN = "churned"  # 0/1
# a training row's weight: written by the cycle when recent months weigh more
# (cycle.recent_half_life); a training split without it counts every row once
WEIGHT_COLUMN = "sample_weight"
# YAML 1.1 reads these words, unquoted, as booleans: `[yes, no]` is [True, False]
YAML_BOOLEAN_WORDS = frozenset({"yes", "no", "on", "off", "true", "false", "y", "n"})
# Records of raw files that passed the schema (fetch writes them, explore and prepare read
# them), one per file; git-ignored run state, never a DVC output.
VALIDATED_DIR = ".churnlab/validated"


@dataclass(frozen=True)
class TableSpec:
    """The description of a churn table, as given in ``params/data.yaml`` ``schema``."""

    id_column: str
    target: str
    positive_label: Any
    negative_label: Any
    numeric: dict[str, dict]
    categorical: dict[str, list | None]

    @classmethod
    def from_params(cls, schema: dict) -> TableSpec:
        """Build a spec from the ``schema`` section, naming the key that is wrong."""
        where = "params/data.yaml schema"
        if not isinstance(schema, dict):
            raise ChurnlabError(f"{where}: expected a mapping")
        known = {
            "id_column",
            "target",
            "positive_label",
            "negative_label",
            "numeric",
            "categorical",
        }
        unknown = sorted(set(schema) - known)
        if unknown:
            raise ChurnlabError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        for key in ("id_column", "target", "positive_label", "negative_label"):
            if schema.get(key) in (None, ""):
                raise ChurnlabError(f"{where}.{key}: missing")
        numeric = schema.get("numeric") or {}
        categorical = schema.get("categorical") or {}
        if not isinstance(numeric, dict) or not isinstance(categorical, dict):
            raise ChurnlabError(f"{where}.numeric / .categorical: expected mappings")
        for name, rule in numeric.items():
            rule = rule or {}
            if not isinstance(rule, dict) or set(rule) - {"min", "max", "nullable"}:
                raise ChurnlabError(
                    f"{where}.numeric.{name}: expected keys min, max, nullable; found {rule!r}"
                )
        for name, allowed in categorical.items():
            if allowed is not None and not isinstance(allowed, list):
                raise ChurnlabError(f"{where}.categorical.{name}: expected a list or null")
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise ChurnlabError(f"{where}: {sorted(overlap)} are both numeric and categorical")
        if not numeric and not categorical:
            raise ChurnlabError(f"{where}: no feature columns (numeric, categorical) described")
        return cls(
            id_column=str(schema["id_column"]),
            target=str(schema["target"]),
            positive_label=str(schema["positive_label"]),
            negative_label=str(schema["negative_label"]),
            numeric={k: dict(v or {}) for k, v in numeric.items()},
            categorical={
                k: (None if v is None else [str(x) for x in v]) for k, v in categorical.items()
            },
        )

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        return [self.id_column, *self.features, self.target]


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable data file (what it is instead), or None when it is.

    Only looks at the path, never opens it: opening a FIFO would wait for a writer forever.
    """
    try:
        info = path.stat()  # follows symlinks
    except FileNotFoundError:
        if path.is_symlink():
            return f"a symlink to a missing file ({os.readlink(path)})"
        return "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (the link leads back to itself): point it at a file"
        if exc.errno == errno.EACCES:
            return "cannot be reached: permission denied on a folder of its path"
        return f"cannot be looked at: {exc.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return "a directory, not a file: name the .csv or .parquet file itself"
    if stat.S_ISFIFO(info.st_mode):
        return (
            "a FIFO (named pipe), not a file: it is not read, as reading would wait for a "
            "writer; copy the data to a regular file"
        )
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a socket or a device): copy the data to a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied): give the user running churnlab read access"
    return None


def _header(path: Path) -> list[str]:
    """The column names exactly as the file's header row has them (duplicates kept)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        return next(csv.reader(handle), [])


def read_table(path: Path) -> pd.DataFrame:
    """Read a raw CSV or Parquet file with every column as text (types come from the spec).

    Raises:
        ChurnlabError: a missing, empty or unreadable file; a file that is not a regular
            file (naming what it is); a column name that appears twice in the header.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ChurnlabError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise ChurnlabError(f"{path}: the file is empty")
    try:
        # pandas renames a repeated CSV column to 'x.1' and pyarrow refuses it: either
        # way one copy would be lost without a word
        repeated = [name for name, count in Counter(_header(path)).items() if count > 1]
    except Exception as exc:  # pyarrow raises many types for a file that is not Parquet
        raise ChurnlabError(f"{path}: cannot be read as a table: {exc}") from None
    if repeated:
        raise ChurnlabError(
            f"{path}: column(s) {repeated} appear more than once in the header: rename or "
            f"drop the copies so that each column has one name"
        )
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
            frame = frame.astype({c: "str" for c in frame.columns if frame[c].dtype == object})
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas and pyarrow raise many types for an unreadable file
        raise ChurnlabError(f"{path}: cannot be read as a table: {exc}") from None
    if frame.empty:
        raise ChurnlabError(f"{path}: the file has a header but no rows")
    return frame


def _as_text(series: pd.Series) -> pd.Series:
    """Text values, stripped, with blanks as missing; numbers like 1.0 become '1'."""
    if pd.api.types.is_float_dtype(series):
        whole = series.dropna() % 1 == 0
        if whole.all():
            series = series.astype("Int64")
    text = series.astype("str").str.strip()
    return text.mask(series.isna() | (text == ""))


def _to_number(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse numbers; return the numbers and a mask of the values that did not parse."""
    text = _as_text(series)
    numbers = pd.to_numeric(text, errors="coerce")
    return numbers.astype("float64"), text.notna() & numbers.isna()


def build_schema(spec: TableSpec) -> pa.DataFrameSchema:
    """The pandera schema that the typed table must satisfy."""
    import pandera.pandas as pa

    columns: dict[str, pa.Column] = {
        spec.id_column: pa.Column(str, nullable=False, unique=True),
        spec.target: pa.Column(
            str, pa.Check.isin([spec.positive_label, spec.negative_label]), nullable=False
        ),
    }
    for name, rule in spec.numeric.items():
        checks = []
        if rule.get("min") is not None:
            checks.append(pa.Check.ge(rule["min"]))
        if rule.get("max") is not None:
            checks.append(pa.Check.le(rule["max"]))
        columns[name] = pa.Column(float, checks, nullable=bool(rule.get("nullable", False)))
    for name, allowed in spec.categorical.items():
        checks = [pa.Check.isin(allowed)] if allowed is not None else []
        columns[name] = pa.Column(str, checks, nullable=False)
    return pa.DataFrameSchema(columns, strict=False)


def _describe_failures(cases: pd.DataFrame, where: str, max_examples: int = 3) -> str:
    lines = []
    cases = cases.copy()
    cases["column"] = cases["column"].fillna("(table)")
    for (column, check), group in cases.groupby(["column", "check"], sort=True):
        shown = []
        for _, case in group.head(max_examples).iterrows():
            index = case["index"]
            row = "" if pd.isna(index) else f"row {int(index) + 1}: "
            value = case["failure_case"]
            shown.append(f"{row}{'blank' if pd.isna(value) else repr(value)}")
        more = f" (+{len(group) - max_examples} more)" if len(group) > max_examples else ""
        lines.append(
            f"  - column '{column}', rule {check}: {len(group)} rows, e.g. {'; '.join(shown)}{more}"
        )
    return f"{where}: the data does not match params/data.yaml schema:\n" + "\n".join(lines)


def _judged_by(schema: dict) -> str:
    """Everything a verdict on a table depends on besides its bytes: the ``schema`` params,
    this module's code (the typing and the rules) and the pandas and pandera versions."""
    from importlib.metadata import version

    judged_by = json.dumps(
        {
            "schema": schema,
            "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
            "pandas": pd.__version__,
            "pandera": version("pandera"),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(judged_by.encode()).hexdigest()


def _file_identity(path: Path) -> list[int]:
    """Size, inode, modification and change times (ns): any write changes the change time,
    which no one can set back, so an equal identity means the same bytes (as for git)."""
    info = path.stat()
    return [info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]


def _record_path(root: Path, path: Path) -> Path:
    relative = Path(path).resolve().relative_to(Path(root).resolve())
    return Path(root) / VALIDATED_DIR / f"{relative.as_posix().replace('/', '%')}.json"


def record_validated(root: Path, path: Path, schema: dict, data_sha256: str) -> None:
    """Record that the raw file at ``path`` (inside ``root``), with these bytes, passed
    ``schema`` in full."""
    from churnlab.files import write_json

    try:
        record = _record_path(root, path)
    except ValueError:  # a raw file outside the project: nothing to record it in
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        record,
        {
            "sha256": data_sha256,
            "judged_by": _judged_by(schema),
            "identity": _file_identity(Path(path)),
        },
    )


def validated_before(path: Path, schema: dict) -> bool:
    """Whether the file at ``path``, as its bytes are now, passed ``schema`` before.

    The record is looked for in the project that holds the file (so a notebook opened in
    JupyterLab finds what ``churnlab fetch`` wrote). It counts only for the same schema, code
    and library versions, and for the same bytes: the file's identity (size, inode, times)
    unchanged since the record, or else its SHA-256 computed again and equal. In that case
    the record takes the file's new identity (DVC touches an output after its stage), so the
    next stage does not hash the file again.
    """
    from churnlab.config import project_root

    try:
        root = project_root(Path(path).resolve().parent)
        record = json.loads(_record_path(root, path).read_text())
        if record["judged_by"] != _judged_by(schema):
            return False
        identity = _file_identity(Path(path))
        if record["identity"] == identity:
            return True
        if hashlib.sha256(Path(path).read_bytes()).hexdigest() != record["sha256"]:
            return False
    except (ChurnlabError, OSError, ValueError, KeyError, TypeError):
        return False  # outside a project, no record, an unreadable one: check in full
    with contextlib.suppress(OSError):  # only a shortcut for the next reader
        from churnlab.files import write_json

        write_json(_record_path(root, path), {**record, "identity": identity})
    return True


def validate_table(
    raw: pd.DataFrame, spec: TableSpec, where: str, passed_before: bool = False
) -> pd.DataFrame:
    """Type the raw text table by the spec and check it; return the typed table.

    All problems are reported at once: missing columns, values of the wrong type, values
    out of range or not allowed, duplicate ids, unknown labels.

    Args:
        raw: the table as text (:func:`read_table`).
        spec: the data description.
        where: the file, for messages.
        passed_before: the same bytes passed the same schema (:func:`validated_before`):
            the table is typed and its cheap checks run, the pandera pass is skipped.

    Raises:
        ChurnlabError: naming ``where`` and, per column and rule, the count and example rows
            (rows counted from 1, after the header).
    """
    missing = [c for c in spec.columns if c not in raw.columns]
    if missing:
        raise ChurnlabError(
            f"{where}: missing column(s) {missing} named in params/data.yaml schema; "
            f"the file has {list(raw.columns)}"
        )
    typed = pd.DataFrame(index=raw.index)
    bad_type = []
    for name in spec.columns:
        if name in spec.numeric:
            typed[name], unparsed = _to_number(raw[name])
            for index in raw.index[unparsed]:
                bad_type.append(
                    {
                        "column": name,
                        "check": "is a number",
                        "index": index,
                        "failure_case": raw.at[index, name],
                    }
                )
        else:
            typed[name] = _as_text(raw[name])
    if passed_before:
        return _checked_types(typed, bad_type, spec, where)
    from pandera.errors import SchemaErrors

    try:
        build_schema(spec).validate(typed, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases[["column", "check", "index", "failure_case"]]
        # a value that did not parse is reported as a type error, not again as missing
        unparsed = {(case["column"], case["index"]) for case in bad_type}
        repeated = [
            (column, index) in unparsed and check == "not_nullable"
            for column, index, check in zip(
                cases["column"], cases["index"], cases["check"], strict=True
            )
        ]
        cases = pd.concat(
            [cases[~np.array(repeated, dtype=bool)], pd.DataFrame(bad_type)], ignore_index=True
        )
        hints = "".join(f"\n  {line}" for line in _boolean_word_hints(cases, spec))
        raise ChurnlabError(_describe_failures(cases, where) + hints) from None
    return _checked_types(typed, bad_type, spec, where)


def _checked_types(
    typed: pd.DataFrame, bad_type: list[dict], spec: TableSpec, where: str
) -> pd.DataFrame:
    """The checks that come with typing: unparsed numbers, numeric columns with no value."""
    if bad_type:
        raise ChurnlabError(_describe_failures(pd.DataFrame(bad_type), where))
    blank = [name for name in spec.numeric if typed[name].isna().all()]
    if blank:
        raise ChurnlabError(
            f"{where}: column(s) {blank} are blank in every row: nullable in params/data.yaml "
            f"schema.numeric, but a column without a single value gives the model nothing; "
            f"fill it, or remove it from the schema"
        )
    return typed


def _boolean_word_hints(cases: pd.DataFrame, spec: TableSpec) -> list[str]:
    """Explain allowed values True/False against data that says yes/no (YAML's booleans)."""
    rules = {name: allowed or [] for name, allowed in spec.categorical.items()}
    rules[spec.target] = [spec.positive_label, spec.negative_label]
    hints = []
    for column, allowed in rules.items():
        if not {"True", "False"} & set(allowed):
            continue
        found = cases.loc[cases["column"] == column, "failure_case"].dropna().astype(str)
        words = sorted({v for v in found if v.strip().lower() in YAML_BOOLEAN_WORDS})
        if words:
            key = (
                "positive_label/negative_label"
                if column == spec.target
                else f"categorical.{column}"
            )
            hints.append(
                f"params/data.yaml schema.{key} has True/False where the data says "
                f"{', '.join(repr(w) for w in words[:4])}: YAML reads unquoted yes/no/on/off "
                f'as booleans; quote the values in params/data.yaml ("{words[0]}")'
            )
    return hints


def clean_table(typed: pd.DataFrame, spec: TableSpec, fill_missing: dict) -> pd.DataFrame:
    """Return the modelling table: ``customer_id``, the features, and ``churned`` (0/1)."""
    unknown = sorted(set(fill_missing or {}) - set(spec.numeric))
    if unknown:
        raise ChurnlabError(
            f"params/prepare.yaml prepare.fill_missing: {unknown} are not numeric columns "
            f"of params/data.yaml schema"
        )
    table = typed[[spec.id_column, *spec.features]].copy()
    for name, value in (fill_missing or {}).items():
        table[name] = table[name].fillna(float(value))
    table[TARGET_COLUMN] = (typed[spec.target] == spec.positive_label).astype("int8")
    return table.rename(columns={spec.id_column: ID_COLUMN}).reset_index(drop=True)


def feature_columns(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns of a prepared table, by dtype."""
    features = [c for c in table.columns if c not in (ID_COLUMN, TARGET_COLUMN, WEIGHT_COLUMN)]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(table[c])]
    return numeric, [c for c in features if c not in numeric]


def churn_rate(labels: pd.Series) -> float:
    return float(np.mean(labels)) if len(labels) else float("nan")
