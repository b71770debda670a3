"""Data quality of a month: the raw schema's rules counted by column and rule, never raised.

The rules are those of ``churnlab.data.build_schema`` (pandera) without the target column,
which a month of new customers does not have yet, plus three of churnlab's own: a column
that is missing, a value that is not a number, and a numeric column blank in every row.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa

from churnlab.data import TableSpec, _as_text, _to_number, build_schema

MAX_EXAMPLES = 3


def _example(value) -> str:
    return "blank" if pd.isna(value) else str(value)


def _violation(column: str, rule: str, values: list) -> dict:
    return {
        "column": column,
        "rule": rule,
        "count": len(values),
        # distinct values: three copies of the same bad value show less than one
        "examples": list(dict.fromkeys(_example(v) for v in values))[:MAX_EXAMPLES],
    }


def type_month(raw: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The month's feature and id columns typed as the schema says (unparsed numbers blank)."""
    typed = pd.DataFrame(index=raw.index)
    for name in [spec.id_column, *spec.features]:
        if name not in raw.columns:
            continue
        typed[name] = _to_number(raw[name])[0] if name in spec.numeric else _as_text(raw[name])
    return typed


def check_quality(raw: pd.DataFrame, spec: TableSpec) -> dict:
    """The quality section of a verdict: ``passed``, ``violations``, ``missing_columns``.

    Args:
        raw: the month as read (text columns).
        spec: the data description; its target column is not expected in a month.
    """
    expected = [spec.id_column, *spec.features]
    missing = [c for c in expected if c not in raw.columns]
    violations = [
        {"column": c, "rule": "column present", "count": 1, "examples": []} for c in missing
    ]
    for name in spec.numeric:
        if name in raw.columns:
            _, unparsed = _to_number(raw[name])
            if unparsed.any():
                violations.append(_violation(name, "is a number", list(raw.loc[unparsed, name])))
    typed = type_month(raw, spec)
    schema = build_schema(spec).remove_columns([spec.target, *missing])
    try:
        schema.validate(typed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        for (column, check), group in cases.groupby(["column", "check"], sort=True, dropna=False):
            if check == "not_nullable" and column in spec.numeric:
                # a value that did not parse is already counted as not a number
                _, unparsed = _to_number(raw[column])
                group = group[~group["index"].isin(raw.index[unparsed])]
                if group.empty:
                    continue
            violations.append(_violation(str(column), str(check), list(group["failure_case"])))
    for name in spec.numeric:
        if name in typed.columns and typed[name].isna().all():
            violations.append(_violation(name, "blank in every row", [None] * len(typed)))
    violations.sort(key=lambda v: (v["column"], v["rule"]))
    return {"passed": not violations, "violations": violations, "missing_columns": missing}
