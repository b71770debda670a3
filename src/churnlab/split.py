"""Who trains and who is tested: the seeded sample, the stratified split, and whether a
table can be split at all for the folds and the test share in params.

Every function takes the data description (``schema`` params) as an argument; none knows a
column name of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab.data import (
    ID_COLUMN,
    TARGET_COLUMN,
    WEIGHT_COLUMN,
    TableSpec,
    churn_rate,
    clean_table,
    read_table,
    validate_table,
    validated_before,
)
from churnlab.errors import ChurnlabError


def sample_rows(table: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of ``rows`` rows, stratified on the target; all rows for ``None``."""
    if rows is None or rows >= len(table):
        return table
    if rows < 20:
        raise ChurnlabError(f"params/prepare.yaml prepare.sample_rows: {rows} is below 20")
    from sklearn.model_selection import train_test_split  # only where a table is cut

    kept, _ = train_test_split(
        table, train_size=rows, stratify=table[TARGET_COLUMN], random_state=seed
    )
    return kept.sort_index().reset_index(drop=True)


def check_split(train: pd.DataFrame, test: pd.DataFrame) -> None:
    """The split is disjoint and stratified: its two churn rates differ by rounding only.

    A stratified split puts each class into the two parts in proportion, up to less than one
    customer per part, so the rates may differ by up to ``1/len(train) + 1/len(test)`` (on
    50 customers that is 12 points, on 7,043 it is 0.09).

    Raises:
        ChurnlabError: a customer in both parts, or rates further apart than rounding allows.
    """
    overlap = set(train[ID_COLUMN]) & set(test[ID_COLUMN])
    if overlap:
        raise ChurnlabError(
            f"the split puts {len(overlap)} customer(s) in both the training and the test "
            f"split (e.g. {sorted(map(str, overlap))[:3]}): customer ids must be unique"
        )
    rates = churn_rate(train[TARGET_COLUMN]), churn_rate(test[TARGET_COLUMN])
    tolerance = 1 / len(train) + 1 / len(test)
    if not abs(rates[0] - rates[1]) <= tolerance:
        raise ChurnlabError(
            f"the split is not stratified: churn rate {rates[0]:.4f} in the training split, "
            f"{rates[1]:.4f} in the test split (rounding allows {tolerance:.4f})"
        )


@dataclass(frozen=True)
class SplitPlan:
    """How the pipeline cuts the data: the sample, the test split and the folds."""

    test_size: float  # prepare.test_size
    seed: int  # prepare.seed
    cv_folds: int  # train.cv_folds
    sample_rows: int | None = None  # prepare.sample_rows

    def rows_needed(self) -> int:
        """Rows of each class that are always enough: ``cv_folds`` of them in the training
        split and at least one in the test split.

        A stratified split gives a class ``test_size`` of its rows in the test split, rounded
        either way, and the test split's size is rounded up; one row more covers both.
        """
        rows = 2
        while (
            rows - math.ceil(rows * self.test_size) - 1 < self.cv_folds
            or math.floor(rows * self.test_size) < 1
        ):
            rows += 1
        return rows


def check_usable(labels: pd.Series, plan: SplitPlan, names: tuple[str, str], where: str) -> None:
    """The data can go through the pipeline: both classes, enough of each for the folds.

    The sample and the split are made here as prepare will make them (same functions, same
    seed), so what is checked is what the stages will get.

    Args:
        labels: 1 for a leaver, 0 for a stayer, one per customer.
        plan: the sample, test split and folds from params.
        names: the target's values for a leaver and a stayer, for the message.
        where: the data file, for the message.

    Raises:
        ChurnlabError: saying how many leavers and stayers are needed and how many there are.
    """
    table = pd.DataFrame({TARGET_COLUMN: np.asarray(labels, dtype="int8")})
    leavers, stayers = int(table[TARGET_COLUMN].sum()), int((table[TARGET_COLUMN] == 0).sum())
    found = f"found {leavers} leaver(s) ({names[0]!r}) and {stayers} stayer(s) ({names[1]!r})"
    if not leavers or not stayers:
        raise ChurnlabError(
            f"{where}: a churn model needs leavers and stayers; {found} "
            f"(params/data.yaml schema.target, positive_label, negative_label)"
        )
    needed = plan.rows_needed()
    advice = "add customers, or lower train.cv_folds"
    sampled = plan.sample_rows is not None and 20 <= plan.sample_rows < len(table)
    if not sampled and min(leavers, stayers) >= needed:
        return  # always enough (rows_needed): no split to make, and no scikit-learn to import
    if sampled:
        table = sample_rows(table, plan.sample_rows, plan.seed)
        leavers = int(table[TARGET_COLUMN].sum())
        stayers = len(table) - leavers
        found = (
            f"the {plan.sample_rows}-row sample (prepare.sample_rows) has {leavers} leaver(s) "
            f"and {stayers} stayer(s)"
        )
        advice = "raise prepare.sample_rows (or null for all rows), or lower train.cv_folds"
    try:  # the split itself decides; ``needed`` is what is always enough
        train, test = split_customers(table, plan.test_size, plan.seed)
        in_train = train[TARGET_COLUMN].value_counts()
        usable = min(in_train.get(0, 0), in_train.get(1, 0)) >= plan.cv_folds
        usable = usable and test[TARGET_COLUMN].nunique() == 2
    except ChurnlabError:  # too few rows to split at all
        usable = False
    if not usable:
        raise ChurnlabError(
            f"{where}: needs at least {needed} leavers and {needed} stayers for "
            f"{plan.cv_folds} folds (params/train.yaml train.cv_folds) and a "
            f"{plan.test_size:.0%} test split (params/prepare.yaml prepare.test_size); "
            f"{found}: {advice}"
        )


def split_customers(
    table: pd.DataFrame, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded, stratified train/test split; each part keeps the table's row order."""
    if not 0 < test_size < 1:
        raise ChurnlabError(
            f"params/prepare.yaml prepare.test_size: expected a fraction in (0, 1), "
            f"found {test_size}"
        )
    counts = table[TARGET_COLUMN].value_counts()
    if len(counts) < 2 or counts.min() < 2:
        raise ChurnlabError(
            f"the target needs at least 2 rows of each class to split; found {counts.to_dict()}"
        )
    in_test = math.ceil(test_size * len(table))  # as scikit-learn counts it
    if in_test < 2 or len(table) - in_test < 2:
        raise ChurnlabError(
            f"params/prepare.yaml prepare.test_size: a {test_size:.0%} test split of "
            f"{len(table)} rows keeps {in_test} for testing and {len(table) - in_test} for "
            f"training; each side needs a leaver and a stayer: add rows or change test_size"
        )
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        table, test_size=test_size, stratify=table[TARGET_COLUMN], random_state=seed
    )
    return train.sort_index().reset_index(drop=True), test.sort_index().reset_index(drop=True)


def load_prepared(
    raw_path: Path, schema: dict, prepare: dict
) -> tuple[pd.DataFrame, pd.DataFrame, TableSpec]:
    """Read, validate, clean, sample and split the raw file: what prepare and explore share.

    The pandera pass runs once per content: skipped when ``churnlab fetch`` recorded that
    these very bytes passed this schema (:func:`churnlab.data.validated_before`).
    """
    spec = TableSpec.from_params(schema)
    typed = validate_table(
        read_table(raw_path), spec, str(raw_path), validated_before(raw_path, schema)
    )
    table = clean_table(typed, spec, prepare.get("fill_missing") or {})
    table = sample_rows(table, prepare.get("sample_rows"), int(prepare["seed"]))
    train, test = split_customers(table, float(prepare["test_size"]), int(prepare["seed"]))
    return train, test, spec


def add_cycle_months(
    train: pd.DataFrame, test: pd.DataFrame, months: Path, spec: TableSpec, fill_missing: dict
) -> tuple[pd.DataFrame, int]:
    """The training split with the continuous-training cycle's labelled months added.

    The months (``paths.cycle_training``, written by ``churnlab cycle``; docs/cycle.md) are
    checked like the raw data and go to the training split only, after the split is made
    and checked: the test split stays the raw data's own, so the models of every cycle are
    compared on the same held-out customers. When the months carry a ``WEIGHT_COLUMN``
    (``cycle.recent_half_life``), the split gets it too, 1 for the raw data's rows.

    Returns:
        The training split (the same object when there is no months file) and the number
        of rows added.

    Raises:
        ChurnlabError: months that do not match the schema, or a month's customer whose id
            is also in the raw data.
    """
    if not months.is_file():
        return train, 0
    raw = read_table(months)
    weights = raw.pop(WEIGHT_COLUMN) if WEIGHT_COLUMN in raw.columns else None
    added = clean_table(validate_table(raw, spec, str(months)), spec, fill_missing)
    known = set(train[ID_COLUMN].astype(str)) | set(test[ID_COLUMN].astype(str))
    both = sorted(set(added[ID_COLUMN].astype(str)) & known)
    if both:
        raise ChurnlabError(
            f"{months}: column '{spec.id_column}': {len(both)} customers of the cycle's "
            f"months are also in the raw data (e.g. {both[:3]}): a month's customers need "
            "ids of their own"
        )
    if weights is not None:  # recent months weigh more; the raw data's rows count once
        added[WEIGHT_COLUMN] = weights.astype(float).to_numpy()
        train = train.assign(**{WEIGHT_COLUMN: 1.0})
    return pd.concat([train, added], ignore_index=True), len(added)
