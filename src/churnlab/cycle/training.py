"""The cycle's training table: the labelled customers of the months in the window, in the
schema of the raw data, less a seeded held-out share of the latest month.

The cycle writes it to ``paths.cycle_training`` (``data/cycle/``, versioned by DVC); the
prepare stage adds its rows to the training split (never to the test split), so the
pipeline retrains on the reference plus these months.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab.data import TableSpec, clean_table, read_table, validate_table
from churnlab.monitoring.months import month_file, read_labels
from churnlab.monitoring.quality import type_month


def labelled_rows(batch: Path, labels: Path, spec: TableSpec) -> pd.DataFrame:
    """The month's labelled customers as raw text rows with the target column."""
    raw = read_table(batch)
    ids = type_month(raw, spec)[spec.id_column]
    found = read_labels(labels, spec, ids)
    names = {True: spec.positive_label, False: spec.negative_label}
    target = pd.Series([str(names[bool(c)]) for c in found.churned], index=found.ids)
    raw = raw.drop(columns=[spec.target], errors="ignore")
    keep = raw[ids.isin(target.index).to_numpy()].copy()
    keep[spec.target] = target.loc[ids[ids.isin(target.index)].to_numpy()].to_numpy()
    columns = [spec.id_column, *spec.features, spec.target]
    return keep[columns].astype("str").reset_index(drop=True)


def month_weights(
    months: list[str], reference_month: str, half_life: float | None
) -> dict[str, float]:
    """Each training month's row weight: ``2 ** (k / half_life)`` for a month ``k`` months
    after the reference (whose rows count 1), so a month weighs half as much as one
    ``half_life`` months later; every month 1 when ``half_life`` is None."""

    def after(month: str) -> int:
        return (
            (int(month[:4]) - int(reference_month[:4])) * 12
            + int(month[5:])
            - int(reference_month[5:])
        )

    if half_life is None:
        return dict.fromkeys(months, 1.0)
    return {m: float(2 ** (after(m) / half_life)) for m in months}


def holdout_ids(ids: pd.Series, share: float, seed: int, month: str) -> set[str]:
    """A seeded share of a month's labelled customers, the same for the month every time."""
    ordered = sorted(ids.astype(str))
    rng = np.random.default_rng([seed, int(month[:4]), int(month[5:])])
    count = math.ceil(share * len(ordered))
    return {ordered[i] for i in rng.permutation(len(ordered))[:count]}


def month_files(root: Path, batches: str, labels: str, month: str) -> tuple[Path, Path | None]:
    return month_file(root / batches, month, "the batch"), month_file(
        root / labels, month, "the labels"
    )


def prepared_rows(raw: pd.DataFrame, spec: TableSpec, fill_missing: dict, where: str):
    """Raw rows as the prepare stage makes them (typed, checked, cleaned)."""
    return clean_table(validate_table(raw, spec, where), spec, fill_missing)


def all_labelled_rows(
    root: Path, batches: str, labels: str, spec: TableSpec, fill_missing: dict
) -> pd.DataFrame:
    """Every labelled customer of every month that passes the schema, prepared: where the
    customers of a champion trained on months no longer in the training table are found."""
    from churnlab.errors import ChurnlabError
    from churnlab.monitoring.months import batch_months

    tables = []
    for month in batch_months(root / batches):
        batch, labelled = month_files(root, batches, labels, month)
        if batch is None or labelled is None:
            continue
        try:
            rows = labelled_rows(batch, labelled, spec)
            tables.append(prepared_rows(rows, spec, fill_missing, str(batch)))
        except ChurnlabError:  # a month that fails the schema was never trained on
            continue
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
