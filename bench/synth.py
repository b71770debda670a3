"""Synthetic customers shaped like a real raw table, for benchmarks at any size.

Rows of the real table are drawn with replacement (stratified on the target, so the class
balance is kept), numeric columns are jittered a little inside the schema's ranges, and every
row gets a fresh id. Column names come from the arguments (``params/data.yaml`` ``schema``);
nothing here knows the default data's columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlab.errors import ChurnlabError

MAX_DECIMALS = 6


def _blank(text: pd.Series) -> np.ndarray:
    """Mask of the cells that are missing or only whitespace."""
    return (text.isna() | (text.astype("str").str.strip() == "")).to_numpy()


def _decimals(text: pd.Series) -> int:
    """The most digits after the decimal point among the values of a text column."""
    digits = text.astype("str").str.strip().str.partition(".")[2].str.len()
    return int(min(digits.max() if len(digits) else 0, MAX_DECIMALS))


def stratified_rows(labels: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Row positions drawn with replacement so that each label keeps its share.

    Args:
        labels: the target value of every template row.
        rows: how many positions to draw.
        rng: the seeded generator to draw with.

    Returns:
        ``rows`` positions into ``labels``, in random order.
    """
    classes, counts = np.unique(labels, return_counts=True)
    wanted = np.floor(counts / counts.sum() * rows).astype(int)
    # the rows lost to rounding down go to the classes with the largest remainders
    remainders = counts / counts.sum() * rows - wanted
    wanted[np.argsort(-remainders, kind="stable")[: rows - wanted.sum()]] += 1
    drawn = [
        rng.choice(np.flatnonzero(labels == value), size=size, replace=True)
        for value, size in zip(classes, wanted, strict=True)
    ]
    return rng.permutation(np.concatenate(drawn))


def jitter_numbers(
    text: pd.Series, rule: dict, scale: float, rng: np.random.Generator
) -> pd.Series:
    """Multiply the numbers of a text column by ``1 + scale * N(0, 1)``, kept in range.

    Zero stays zero, blanks stay blank (as they were written), values keep the number of
    decimals the column has, and results are clipped to the rule's ``min`` and ``max``.

    Args:
        text: the column as text, as read from the raw file.
        rule: ``{"min": ..., "max": ..., "nullable": ...}`` from the schema (keys optional).
        scale: the relative size of the noise (0.02 = about 2 %).
        rng: the seeded generator to draw with.

    Raises:
        ChurnlabError: a non-blank value that is not a number.
    """
    blank = _blank(text)
    numbers = pd.to_numeric(text.where(~blank, None), errors="coerce").to_numpy(dtype=float)
    if np.isnan(numbers[~blank]).any():
        raise ChurnlabError(f"column '{text.name}': a value is neither blank nor a number")
    noisy = numbers * (1.0 + scale * rng.standard_normal(len(numbers)))
    low = -np.inf if rule.get("min") is None else float(rule["min"])
    high = np.inf if rule.get("max") is None else float(rule["max"])
    decimals = _decimals(text[~blank])
    noisy = np.clip(np.round(noisy, decimals), low, high)
    form = f"{{:.{decimals}f}}"
    values = [form.format(number) for number in noisy]
    out = np.where(blank, text.astype("str").to_numpy(), np.asarray(values, dtype=object))
    return pd.Series(out, index=text.index, name=text.name, dtype=object)


def generate_customers(
    template: pd.DataFrame,
    rows: int,
    seed: int,
    id_column: str,
    target: str,
    numeric: dict[str, dict],
    jitter: float = 0.02,
    id_prefix: str = "synth-",
) -> pd.DataFrame:
    """A table of ``rows`` synthetic customers with the template's columns, as text.

    Rows are drawn from the template with replacement, stratified on ``target`` (so the
    churn rate is the template's), and shuffled. Categorical and other text columns are
    copied, so every value is one the template holds. The ``numeric`` columns are jittered
    by :func:`jitter_numbers` within their schema range; blanks stay blank. Ids are new and
    unique: ``id_prefix`` and a zero-padded row number.

    Args:
        template: the real raw table, every column as text (``churnlab.data.read_table``).
        rows: the number of customers to make (at least 1).
        seed: the seed of the numpy Generator; the same seed gives the same table.
        id_column: the id column (``schema.id_column``).
        target: the label column (``schema.target``).
        numeric: ``{column: {"min", "max", "nullable"}}`` (``schema.numeric``).
        jitter: the relative size of the numeric noise.
        id_prefix: the text in front of the row number in each id.

    Returns:
        A new DataFrame with the template's columns in the template's order.

    Raises:
        ChurnlabError: a column named in the arguments that the template lacks, an empty
            template or a row count below 1.
    """
    missing = [c for c in (id_column, target, *numeric) if c not in template.columns]
    if missing:
        raise ChurnlabError(f"template: missing column(s) {missing}")
    if template.empty or rows < 1:
        raise ChurnlabError(f"need a non-empty template and rows >= 1 (rows = {rows})")
    rng = np.random.default_rng(seed)
    picked = stratified_rows(template[target].astype("str").to_numpy(), rows, rng)
    table = template.iloc[picked].reset_index(drop=True)
    for name, rule in numeric.items():
        table[name] = jitter_numbers(table[name], rule or {}, jitter, rng)
    width = len(str(rows))
    table[id_column] = [f"{id_prefix}{number:0{width}d}" for number in range(1, rows + 1)]
    return table
