"""A seeded year of monthly batches drawn from the real customers, with scenarios of drift.

Each month resamples customers of the raw data (with replacement, fresh ids) and applies the
scenarios active in it (docs/monitoring.md lists the kinds). The columns and categories a
scenario acts on are params; nothing here knows a column name. Labels are the drawn
customers' own, except where a concept-drift scenario relabels them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab.data import TableSpec
from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic
from churnlab.monitoring.months import MONITOR_FILE, add_months, check_month
from churnlab.param_rules import SCENARIO_KINDS

GROUND_TRUTH = "ground_truth.json"
KINDS = SCENARIO_KINDS
EXPECTED = {  # what the monitor should find, per kind
    "category_mix": "feature_drift",
    "numeric_shift": "feature_drift",
    "concept_drift": "performance",
    "missing_column": "quality",
    "blank_column": "quality",
    "new_category": "quality",
}


@dataclass(frozen=True)
class Scenario:
    kind: str
    start: str
    months: int | None
    column: str
    category: str | None = None
    size: float | None = None
    # concept_drift only: the stayers who turn are those with the highest values of this
    # numeric column (a change a model can learn); None: chosen at random (it cannot)
    by: str | None = None

    def active(self, month: str) -> bool:
        end = add_months(self.start, self.months) if self.months else "9999-12"
        return self.start <= month < end

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "column": self.column,
            "category": self.category,
            "size": self.size,
            **({"by": self.by} if self.by else {}),
            "expected": EXPECTED[self.kind],
        }


def scenarios_from_params(items: list[dict], spec: TableSpec) -> list[Scenario]:
    """Scenarios from ``monitor.simulate.scenarios``, checked against the schema.

    Raises:
        ChurnlabError: naming the scenario's key.
    """
    found = []
    for index, item in enumerate(items or []):
        where = f"{MONITOR_FILE}: monitor.simulate.scenarios[{index}]"
        scenario = Scenario(
            kind=item["kind"],
            start=check_month(str(item["start"]), f"{where}.start"),
            months=item.get("months"),
            column=str(item["column"]),
            category=None if item.get("category") is None else str(item["category"]),
            size=item.get("size"),
            by=None if item.get("by") is None else str(item["by"]),
        )
        kind = scenario.kind
        if kind not in KINDS:
            raise ChurnlabError(f"{where}.kind: expected one of {', '.join(KINDS)}, found {kind!r}")
        numeric = kind == "numeric_shift"
        if numeric:
            pool, what = spec.numeric, "a numeric column"
        elif kind in ("missing_column", "blank_column"):
            pool, what = {**spec.numeric, **spec.categorical}, "a column"
        else:
            pool, what = spec.categorical, "a categorical column"
        if scenario.column not in pool:
            raise ChurnlabError(
                f"{where}.column: expected {what} of params/data.yaml schema, found "
                f"{scenario.column!r}"
            )
        if kind in ("category_mix", "concept_drift", "new_category") and not scenario.category:
            raise ChurnlabError(f"{where}.category: expected a category for kind {kind}")
        allowed = spec.categorical.get(scenario.column) if not numeric else None
        if (
            kind in ("category_mix", "concept_drift")
            and allowed
            and scenario.category not in allowed
        ):
            raise ChurnlabError(
                f"{where}.category: expected one of {allowed} (params/data.yaml schema."
                f"categorical.{scenario.column}), found {scenario.category!r}"
            )
        if kind in ("category_mix", "numeric_shift", "concept_drift", "new_category") and (
            scenario.size is None
        ):
            raise ChurnlabError(f"{where}.size: expected a number for kind {kind}")
        if scenario.by is not None and (kind != "concept_drift" or scenario.by not in spec.numeric):
            raise ChurnlabError(
                f"{where}.by: expected a numeric column of params/data.yaml schema, for kind "
                f"concept_drift only; found {scenario.by!r} for kind {kind}"
            )
        found.append(scenario)
    return found


def _text(values: np.ndarray) -> list[str]:
    return [format(float(v), ".10g") for v in values]


def simulate_month(
    raw: pd.DataFrame,
    typed: pd.DataFrame,
    spec: TableSpec,
    month: str,
    customers: int,
    scenarios: list[Scenario],
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One month: the batch (raw text columns, no target) and its labels.

    Args:
        raw: the raw table as read (text); typed: the same rows typed (validate_table).
    """
    active = [s for s in scenarios if s.active(month)]
    weights = np.ones(len(raw))
    for scenario in active:
        if scenario.kind == "category_mix":
            inside = (typed[scenario.column] == scenario.category).to_numpy()
            share = inside.mean()
            goal = min(max(share + scenario.size, 0.0), 1.0)
            if 0 < share < 1 and 0 < goal < 1:
                # weight w on the category's customers moves its share to the goal
                weights[inside] *= goal * (1 - share) / (share * (1 - goal))
    rows = rng.choice(len(raw), size=customers, replace=True, p=weights / weights.sum())
    batch = raw.iloc[rows].reset_index(drop=True).copy()
    drawn = typed.iloc[rows].reset_index(drop=True)
    labels = (drawn[spec.target] == spec.positive_label).to_numpy()
    batch[spec.id_column] = [f"{month}-{i:06d}" for i in range(1, customers + 1)]
    for scenario in active:
        column = scenario.column
        if scenario.kind == "numeric_shift":
            values = drawn[column].to_numpy(float)
            sd = float(np.nanstd(typed[column].to_numpy(float)))
            rule = spec.numeric[column]
            shifted = np.clip(
                values + scenario.size * sd,
                rule.get("min") if rule.get("min") is not None else -np.inf,
                rule.get("max") if rule.get("max") is not None else np.inf,
            )
            present = ~np.isnan(shifted)
            batch[column] = batch[column].astype(object)
            batch.loc[present, column] = _text(shifted[present])
        elif scenario.kind == "concept_drift":
            inside = (drawn[column] == scenario.category).to_numpy()
            rate = labels[inside].mean() if inside.any() else 0.0
            goal = min(rate * scenario.size, 1.0)
            flip = (goal - rate) / (1 - rate) if rate < 1 else 0.0
            if scenario.by is None:
                turn = inside & ~labels & (rng.random(customers) < flip)
            else:
                turn = highest_stayers(drawn[scenario.by].to_numpy(float), inside & ~labels, flip)
            labels = labels | turn
        elif scenario.kind == "new_category":
            chosen = rng.random(customers) < scenario.size
            batch[column] = batch[column].astype(object)
            batch.loc[chosen, column] = scenario.category
        elif scenario.kind == "blank_column":
            batch[column] = ""
        elif scenario.kind == "missing_column":
            batch = batch.drop(columns=[column])
    batch = batch.drop(columns=[spec.target]).astype(str)
    label_table = pd.DataFrame(
        {
            spec.id_column: [f"{month}-{i:06d}" for i in range(1, customers + 1)],
            spec.target: np.where(labels, spec.positive_label, spec.negative_label),
        }
    ).astype(str)
    return batch, label_table


def highest_stayers(values: np.ndarray, stayers: np.ndarray, share: float) -> np.ndarray:
    """Mask of the ``share`` of ``stayers`` (rounded) with the highest ``values``; ties and
    missing values (last) in row order, so the same month gives the same customers."""
    count = int(round(share * stayers.sum()))
    rows = np.flatnonzero(stayers)
    ranked = rows[np.argsort(-np.nan_to_num(values[rows], nan=-np.inf), kind="stable")]
    turn = np.zeros(len(values), dtype=bool)
    turn[ranked[:count]] = True
    return turn


def table_bytes(frame: pd.DataFrame, suffix: str) -> bytes:
    """A month's file as bytes: CSV (LF line ends) or Parquet, without the frame's index."""
    if suffix == ".csv":
        return frame.to_csv(index=False, lineterminator="\n").encode()
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def simulate_year(
    raw: pd.DataFrame,
    typed: pd.DataFrame,
    spec: TableSpec,
    settings: dict,
) -> tuple[dict[str, tuple[pd.DataFrame, pd.DataFrame]], dict]:
    """Every simulated month (batch, labels) and the ground truth, from ``monitor.simulate``."""
    scenarios = scenarios_from_params(settings.get("scenarios") or [], spec)
    start = check_month(str(settings["start"]), f"{MONITOR_FILE}: monitor.simulate.start")
    rng = np.random.default_rng(settings["seed"])
    months, truth = {}, {}
    for offset in range(int(settings["months"])):
        month = add_months(start, offset)
        months[month] = simulate_month(
            raw, typed, spec, month, int(settings["customers"]), scenarios, rng
        )
        active = [s.describe() for s in scenarios if s.active(month)]
        truth[month] = {
            "scenarios": active,
            "stable": not active,
            "expected": sorted({s["expected"] for s in active}),
        }
    ground_truth = {
        "format": 1,
        "seed": settings["seed"],
        "customers": settings["customers"],
        "months": truth,
    }
    return months, ground_truth


def write_year(
    months: dict, ground_truth: dict, batches: Path, labels: Path, suffix: str
) -> list[Path]:
    """Write every month's batch and labels and the ground truth (each file atomically)."""
    written = []
    for month, (batch, label_table) in months.items():
        for folder, frame in ((batches, batch), (labels, label_table)):
            target = folder / f"{month}{suffix}"
            write_atomic(target, table_bytes(frame, suffix))
            other = folder / f"{month}{'.csv' if suffix == '.parquet' else '.parquet'}"
            other.unlink(missing_ok=True)  # a month is one file
            written.append(target)
    truth = batches / GROUND_TRUTH
    write_atomic(truth, (json.dumps(ground_truth, indent=2, sort_keys=True) + "\n").encode())
    return [*written, truth]
