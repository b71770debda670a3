"""The monitor: one month against the champion's reference, as a verdict (docs/monitoring.md).

``Monitor.open`` loads what every month is judged against once (the champion, its reference
customers and scores, its feature importance); ``judge`` computes a verdict from a month's
tables without touching files; ``monitor_month`` reads a month's files, judges it and
writes ``monitoring/YYYY-MM.json`` atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab.config import get_key, load_params
from churnlab.data import TableSpec
from churnlab.errors import ChurnlabError
from churnlab.files import write_json
from churnlab.monitoring import drift
from churnlab.monitoring.champion import (
    Champion,
    feature_importance,
    load_champion,
    reference_table,
)
from churnlab.monitoring.months import (
    MONITOR_FILE,
    Labels,
    check_month,
    month_file,
    read_labels,
    read_month,
    table_sha256,
)
from churnlab.monitoring.performance import estimated_performance, realised_performance
from churnlab.monitoring.quality import check_quality, type_month
from churnlab.monitoring.records import tidy

FORMAT = 1
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class MonitorParams:
    """The ``monitor`` section of params/monitor.yaml (checked by churnlab.param_rules)."""

    batches: str
    labels: str
    verdicts: str
    reference_month: str
    chunks: int
    threshold_quantile: float
    alert_importance: float
    confidence: float
    importance_repeats: int
    importance_max_rows: int
    seed: int

    @classmethod
    def from_params(cls, params: dict) -> MonitorParams:
        section = get_key(params, "monitor", MONITOR_FILE)
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})


def _file_record(root: Path, path: Path, rows: int) -> dict:
    try:
        shown = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        shown = str(path)
    return {"path": shown, "sha256": table_sha256(path), "rows": rows}


def _score_summary(scores: np.ndarray, threshold: float) -> dict:
    return {
        "mean": float(np.mean(scores)),
        "quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in QUANTILES},
        "flagged_share": float(np.mean(scores >= threshold)),
    }


def _statistic(name: str, value, threshold: float, **extra) -> dict:
    drifted = value is not None and value > threshold
    return {"name": name, "value": value, "threshold": threshold, "drifted": drifted, **extra}


def _severity(entry: dict) -> float:
    ratios = [
        s["value"] / s["threshold"] if s["threshold"] > 0 else float(s["value"] > 0)
        for s in entry["statistics"]
        if s["value"] is not None
    ]
    return max(ratios, default=0.0)


@dataclass(frozen=True)
class MonthColumns:
    """What judging a scored month needs from its rows.

    Attributes:
        rows: customers in the month.
        values: per model input column: a numeric column's values (blanks as NaN, after
            ``prepare.fill_missing``), or a categorical column's counts per category.
        scores: the champion's scores of every customer.
        labelled: ``(churned, scores)`` of the labelled customers, or None without labels.
    """

    rows: int
    values: Mapping[str, Any]
    scores: np.ndarray
    labelled: tuple[np.ndarray, np.ndarray] | None


@dataclass
class Monitor:
    """What every month is judged against, loaded once."""

    root: Path
    params: MonitorParams
    spec: TableSpec
    fill_missing: dict
    gate_recall: float | None
    champion: Champion
    reference: pd.DataFrame
    importance: dict[str, float]
    numeric: dict[str, drift.NumericReference] = field(default_factory=dict)
    categorical: dict[str, pd.Series] = field(default_factory=dict)
    scores: np.ndarray = field(default_factory=lambda: np.array([]))
    score_reference: drift.NumericReference | None = None
    _thresholds: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, root: Path) -> Monitor:
        """Load params, the champion, its reference and importance.

        Raises:
            ChurnlabError: no champion yet, or a reference that cannot be found.
        """
        params = load_params(root)
        settings = MonitorParams.from_params(params)
        spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
        paths = get_key(params, "paths", "params/paths.yaml")
        champion = load_champion(root)
        fill_missing = get_key(params, "prepare", "params/prepare.yaml").get("fill_missing") or {}

        def labelled_months() -> pd.DataFrame:
            from churnlab.cycle.training import all_labelled_rows

            return all_labelled_rows(root, settings.batches, settings.labels, spec, fill_missing)

        reference = reference_table(
            champion, [root / paths["train"], root / paths["test"]], labelled_months
        )
        importance = feature_importance(
            root,
            champion,
            reference,
            settings.importance_repeats,
            settings.importance_max_rows,
            settings.seed,
        )
        gates = get_key(params, "evaluate", "params/evaluate.yaml").get("gates") or {}
        monitor = cls(
            root=root,
            params=settings,
            spec=spec,
            fill_missing=get_key(params, "prepare", "params/prepare.yaml").get("fill_missing")
            or {},
            gate_recall=gates.get("min_recall"),
            champion=champion,
            reference=reference,
            importance=importance,
        )
        for name in champion.numeric:
            monitor.numeric[name] = drift.NumericReference.of(reference[name].to_numpy(float))
        for name in champion.categorical:
            monitor.categorical[name] = drift.categorical_shares(reference[name])
        monitor.scores = champion.scores(reference)
        monitor.score_reference = drift.NumericReference.of(monitor.scores)
        return monitor

    def thresholds(self, n: int) -> dict:
        """Every statistic's threshold for a month of ``n`` customers (seeded by ``n``)."""
        if n not in self._thresholds:
            p = self.params
            rng = np.random.default_rng([p.seed, n])
            found = {}
            for name, ref in self.numeric.items():
                found[name] = drift.calibrate_numeric(ref, n, p.chunks, p.threshold_quantile, rng)
            for name, counts in self.categorical.items():
                found[name] = drift.calibrate_categorical(
                    counts, n, p.chunks, p.threshold_quantile, rng
                )
            scores = drift.calibrate_numeric(
                self.score_reference, n, p.chunks, p.threshold_quantile, rng
            )
            scores["flagged_share_change"] = drift.calibrate_share(
                float(np.mean(self.scores >= self.champion.threshold)),
                len(self.scores),
                n,
                p.chunks,
                p.threshold_quantile,
                rng,
            )
            found["(scores)"] = scores
            self._thresholds[n] = found
        return self._thresholds[n]

    def _features(self, month: Mapping[str, Any], thresholds: dict) -> list[dict]:
        """One entry per model input column; ``month[name]`` is a numeric column's values
        (blanks as NaN) or a categorical column's counts (``drift.categorical_shares``)."""
        entries = []
        for name in self.champion.columns:
            limit = thresholds[name]
            if name in self.numeric:
                ref = self.numeric[name]
                values = np.asarray(month[name], dtype=float)
                found = drift.numeric_statistics(ref, values)
                statistics = [_statistic(s, found[s], limit[s]) for s in ("wasserstein", "psi")]
                ref_values = self.reference[name].to_numpy(float)
                ref_summary = _numeric_summary(ref_values)
                month_summary = _numeric_summary(values)
                shift = (
                    (month_summary["mean"] - ref_summary["mean"]) / ref.sd
                    if month_summary["mean"] is not None and ref.sd > 0
                    else None
                )
                entry = {
                    "kind": "numeric",
                    "reference": ref_summary,
                    "month": month_summary,
                    "largest_change": {"mean_shift_sd": shift},
                }
            else:
                ref_counts = self.categorical[name]
                counts = month[name]
                found = drift.categorical_statistics(ref_counts, counts)
                statistics = [
                    _statistic("jensen_shannon", found["jensen_shannon"], limit["jensen_shannon"]),
                    _statistic("chi2", found["chi2"], limit["chi2"], p_value=found["p_value"]),
                ]
                ref_shares, month_shares = _shares(ref_counts, counts)
                moved = max(ref_shares, key=lambda c: abs(month_shares[c] - ref_shares[c]))
                entry = {
                    "kind": "categorical",
                    "reference": {"shares": ref_shares},
                    "month": {"shares": month_shares},
                    "largest_change": {
                        "category": moved,
                        "reference_share": ref_shares[moved],
                        "month_share": month_shares[moved],
                    },
                }
            entries.append(
                {
                    "column": name,
                    "importance": self.importance.get(name, 0.0),
                    "drifted": any(s["drifted"] for s in statistics),
                    "statistics": statistics,
                    **entry,
                }
            )
        return sorted(entries, key=lambda e: (-_severity(e), e["column"]))

    def judge(self, month: str, raw: pd.DataFrame, labels: Labels | None) -> dict:
        """The verdict of a month (without the file records), from its tables."""
        typed = type_month(raw, self.spec)
        quality = check_quality(raw, self.spec, typed)
        if quality["missing_columns"]:
            return self.judge_columns(month, quality, None)
        for name, value in self.fill_missing.items():
            if name in typed.columns:
                typed[name] = typed[name].fillna(float(value))
        scores = self.champion.scores(typed)
        labelled = None
        if labels is not None and self.spec.id_column in typed.columns:
            position = pd.Series(np.arange(len(typed)), index=typed[self.spec.id_column].array)
            position = position[~position.index.duplicated()]
            rows = position.reindex(labels.ids).to_numpy()
            labelled = (labels.churned, scores[rows])
        values = {name: typed[name].to_numpy(float) for name in self.numeric}
        values.update({name: drift.categorical_shares(typed[name]) for name in self.categorical})
        return self.judge_columns(
            month, quality, MonthColumns(len(typed), values, scores, labelled)
        )

    def judge_columns(self, month: str, quality: dict, columns: MonthColumns | None) -> dict:
        """The verdict of a month from its quality section and what its columns hold.

        ``columns`` is None when the month cannot be scored (a column is missing). The
        monitor on a Dask cluster (churnlab.compute.monitor) builds ``columns`` from sums
        over partitions and comes here, so both ways judge with the same code.
        """
        champion, p = self.champion, self.params
        verdict: dict[str, Any] = {
            "format": FORMAT,
            "month": month,
            "champion": {
                "name": champion.name,
                "version": champion.version,
                "run_id": champion.run_id,
                "threshold": champion.threshold,
            },
            "reference": {"rows": len(self.reference), "month": p.reference_month},
            "quality": quality,
            "usable_for_training": quality["passed"],
            "features": [],
            "drift": None,
            "prediction": None,
            "performance": None,
            "settings": {
                "chunks": p.chunks,
                "threshold_quantile": p.threshold_quantile,
                "seed": p.seed,
                "alert_importance": p.alert_importance,
            },
        }
        scored = columns is not None and not quality["missing_columns"]
        if scored:
            thresholds = self.thresholds(columns.rows)
            features = self._features(columns.values, thresholds)
            drifted = [e["column"] for e in features if e["drifted"]]
            verdict["features"] = features
            verdict["drift"] = {
                "score": sum(e["importance"] for e in features if e["drifted"]),
                "drifted_columns": drifted,
                "alert": any(
                    e["drifted"] and e["importance"] >= p.alert_importance for e in features
                ),
            }
            verdict["prediction"] = self._prediction(columns.scores, thresholds["(scores)"])
            verdict["performance"] = self._performance(columns.scores, columns.labelled)
        alerts = {
            "quality": not quality["passed"],
            "feature_drift": bool(scored and verdict["drift"]["alert"]),
            "prediction_drift": bool(scored and verdict["prediction"]["alert"]),
            "performance": bool(scored and verdict["performance"]["alert"]),
        }
        alerts["any"] = any(alerts.values())
        verdict["alerts"] = alerts
        if alerts["quality"]:
            status = "quality_failed"
        elif alerts["feature_drift"] or alerts["prediction_drift"]:
            status = "drift"
        elif alerts["performance"]:
            status = "performance"
        else:
            status = "ok"
        verdict["status"] = status
        verdict["summary"] = summary_sentence(verdict)
        return tidy(verdict)

    def _prediction(self, scores: np.ndarray, limits: dict) -> dict:
        threshold = self.champion.threshold
        found = drift.numeric_statistics(self.score_reference, scores)
        reference, month = (
            _score_summary(self.scores, threshold),
            _score_summary(scores, threshold),
        )
        change = abs(month["flagged_share"] - reference["flagged_share"])
        statistics = [
            _statistic("wasserstein", found["wasserstein"], limits["wasserstein"]),
            _statistic("psi", found["psi"], limits["psi"]),
            _statistic("flagged_share_change", change, limits["flagged_share_change"]),
        ]
        return {
            "reference": reference,
            "month": month,
            "statistics": statistics,
            "alert": any(s["drifted"] for s in statistics),
        }

    def _performance(self, scores: np.ndarray, labelled: tuple | None) -> dict:
        threshold = self.champion.threshold
        estimated = estimated_performance(scores, threshold, self.params.confidence)
        realised = None if labelled is None else realised_performance(*labelled, threshold)
        gate = self.gate_recall
        interval = estimated["recall_interval"]
        recall = realised["recall"] if realised is not None else None
        # the model does worse than its own probabilities promise: customers churn
        # differently (concept drift), which no feature drift shows
        below_estimate = recall is not None and interval is not None and recall < interval[0]
        if gate is None:
            below_gate = False
        elif recall is not None:
            below_gate = recall < gate
        else:
            below_gate = interval is not None and interval[1] < gate
        return {
            "gate": {"metric": "recall", "value": gate},
            "estimated": estimated,
            "realised": realised,
            "below_gate": below_gate,
            "below_estimate": below_estimate,
            "alert": below_gate or below_estimate,
        }


def _numeric_summary(values: np.ndarray) -> dict:
    present = values[~np.isnan(values)]
    return {
        "mean": float(present.mean()) if len(present) else None,
        "std": float(present.std()) if len(present) else None,
        "missing_share": float(np.isnan(values).mean()) if len(values) else None,
    }


def _shares(reference: pd.Series, month: pd.Series) -> tuple[dict, dict]:
    categories = sorted(set(reference.index) | set(month.index))
    r = reference.reindex(categories, fill_value=0)
    m = month.reindex(categories, fill_value=0)
    return (
        {c: float(v) for c, v in (r / r.sum()).items()},
        {c: float(v) for c, v in (m / m.sum()).items()},
    )


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def describe_violation(violation: dict) -> str:
    """One violation in words: ``column 'x': 12 rows break the rule ... (e.g. 'a', 'b')``."""
    where = f"column '{violation['column']}'"
    if violation["rule"] == "column present":
        return f"{where}: missing from the file (params/data.yaml schema names it)"
    examples = ", ".join(repr(e) for e in violation["examples"])
    return (
        f"{where}: {violation['count']} rows break the rule {violation['rule']} (e.g. {examples})"
    )


def summary_sentence(verdict: dict) -> str:
    """The verdict in one sentence, for people."""
    month = verdict["month"]
    quality = verdict["quality"]
    if not quality["passed"]:
        problems = "; ".join(describe_violation(v) for v in quality["violations"][:3])
        more = len(quality["violations"]) - 3
        tail = f" and {more} more" if more > 0 else ""
        return f"{month}: failed data quality ({problems}{tail}); never to be used for training."
    parts = []
    for entry in verdict["features"]:
        if not entry["drifted"]:
            continue
        change = entry["largest_change"]
        if entry["kind"] == "categorical":
            parts.append(
                f"customers with {entry['column']} = {change['category']} went from "
                f"{_percent(change['reference_share'])} to {_percent(change['month_share'])}"
            )
        elif change["mean_shift_sd"] is not None:
            parts.append(
                f"{entry['column']} moved by {change['mean_shift_sd']:+.2f} standard deviations"
            )
        if len(parts) == 2:
            break
    text = "; ".join(parts) if parts else "no feature drifted"
    performance = verdict["performance"]
    gate = performance["gate"]["value"]
    realised = performance["realised"]
    if realised is not None and realised["recall"] is not None:
        recall = f"realised recall {realised['recall']:.2f}"
        value = realised["recall"]
    else:
        estimated = performance["estimated"]
        low, high = estimated["recall_interval"] or (None, None)
        if estimated["recall"] is None:
            return f"{month}: {text}; no customer is flagged, so recall cannot be estimated."
        recall = f"estimated recall {estimated['recall']:.2f} ({low:.2f}-{high:.2f})"
        value = estimated["recall"]
    if performance["below_estimate"]:
        low, high = performance["estimated"]["recall_interval"]
        recall += (
            f", below the {low:.2f}-{high:.2f} its scores promise (customers leave differently "
            "than the model expects: concept drift?)"
        )
    if gate is None:
        return f"{month}: {text}; {recall}."
    side = "still above" if value >= gate else "below"
    return f"{month}: {text}; {recall}, {side} the gate {gate:g}."


def verdict_path(root: Path, params: MonitorParams, month: str) -> Path:
    return root / params.verdicts / f"{month}.json"


def locate_month(root: Path, params: MonitorParams, month: str) -> Path:
    """The batch file of ``month``.

    Raises:
        ChurnlabError: a bad month name, a month not after the reference, no batch file.
    """
    check_month(month)
    if month <= params.reference_month:
        raise ChurnlabError(
            f"{MONITOR_FILE}: monitor.reference_month: month {month} is not after the "
            f"reference ({params.reference_month}, the last month of the champion's training "
            "data): only later months can be compared with it"
        )
    batch_path = month_file(root / params.batches, month, "the batch")
    if batch_path is None:
        raise ChurnlabError(
            f"{params.batches}/{month}.parquet: file not found: expected the batch of {month} "
            f"as {params.batches}/{month}.csv or .parquet (monitor.batches in {MONITOR_FILE})"
        )
    return batch_path


def monitor_month(monitor: Monitor, month: str) -> tuple[dict, Path]:
    """Read a month's batch (and labels, when they are there), judge it, write its verdict.

    Nothing is written unless the whole verdict could be made.

    Raises:
        ChurnlabError: naming the file and field: a bad month name, a month not after the
            reference, a missing, empty or unreadable batch, bad labels.
    """
    root, p = monitor.root, monitor.params
    batch_path = locate_month(root, p, month)
    try:
        raw = read_month(batch_path)
        labels_path = month_file(root / p.labels, month, "the labels")
        labels = None
        if labels_path is not None:
            ids = type_month(raw, monitor.spec).get(
                monitor.spec.id_column, pd.Series([], dtype=str)
            )
            labels = read_labels(labels_path, monitor.spec, ids)
    except ChurnlabError as exc:  # files named as the user names them: from the project
        raise ChurnlabError(str(exc).replace(f"{root}/", "")) from None
    verdict = monitor.judge(month, raw, labels)
    verdict["batch"] = _file_record(root, batch_path, len(raw))
    verdict["labels"] = (
        _file_record(root, labels_path, len(labels.ids)) if labels is not None else None
    )
    target = verdict_path(root, p, month)
    write_json(target, verdict)
    return verdict, target
