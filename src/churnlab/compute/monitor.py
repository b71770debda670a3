"""The monitor's statistics over a large month on a Dask cluster, with the local verdict.

Each worker reads one part of the month (a file of a partitioned Parquet dataset), checks
its quality and scores it with the champion, and sends back sums, not rows: per numeric
column its distinct values with counts, per categorical column its counts per category,
the distinct scores with counts, and the labelled customers' labels and scores. Combined,
these hold everything the verdict needs; ``Monitor.judge_columns`` then judges them with
the same statistic code as the local run (a numeric column is rebuilt from its value
counts, sorted), so the verdict is the same JSON. A repeated id in two different parts is
not seen (each part checks its own ids).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab.compute.cluster import ComputeSettings, gather, share
from churnlab.data import TableSpec, read_table
from churnlab.errors import ChurnlabError
from churnlab.files import write_json
from churnlab.monitoring import drift
from churnlab.monitoring.champion import Champion
from churnlab.monitoring.months import (
    month_file,
    month_parts,
    read_labels,
    unknown_labels_error,
)
from churnlab.monitoring.quality import MAX_EXAMPLES, check_quality, type_month
from churnlab.monitoring.verdict import (
    Monitor,
    MonthColumns,
    _file_record,
    locate_month,
    verdict_path,
)


@dataclass(frozen=True)
class ValueCounts:
    """A numeric column as its distinct values (sorted) with counts, and its blanks."""

    values: np.ndarray
    counts: np.ndarray
    missing: int

    @classmethod
    def of(cls, column: np.ndarray) -> ValueCounts:
        column = np.asarray(column, dtype=float)
        present = ~np.isnan(column)
        values, counts = np.unique(column[present], return_counts=True)
        return cls(values, counts, int((~present).sum()))

    @classmethod
    def combine(cls, items: list[ValueCounts]) -> ValueCounts:
        values = np.concatenate([i.values for i in items])
        counts = np.concatenate([i.counts for i in items])
        distinct, where = np.unique(values, return_inverse=True)
        return cls(
            distinct,
            np.bincount(where, weights=counts).astype(np.int64),
            sum(i.missing for i in items),
        )

    def expand(self) -> np.ndarray:
        """The column again, sorted, blanks (NaN) last."""
        return np.concatenate([np.repeat(self.values, self.counts), np.full(self.missing, np.nan)])


@dataclass(frozen=True)
class PartSummary:
    """What one part of a month sends back: sums over its rows, never the rows."""

    rows: int
    quality: dict
    numeric: dict[str, ValueCounts] | None
    categorical: dict[str, pd.Series] | None
    scores: ValueCounts | None
    labelled: tuple[np.ndarray, np.ndarray] | None  # (churned, scores) of labelled rows
    matched: int  # labelled ids found in this part


def summarise_part(
    path: str,
    spec: TableSpec,
    fill_missing: Mapping[str, float],
    champion: Champion,
    labels: pd.Series | None,
) -> PartSummary:
    """One part's sums (a task on a worker).

    Args:
        labels: 0/1 churned by customer id (the month's labels), or None.
    """
    raw = read_table(Path(path))
    typed = type_month(raw, spec)
    quality = check_quality(raw, spec, typed)
    if quality["missing_columns"]:
        return PartSummary(len(raw), quality, None, None, None, None, 0)
    for name, value in fill_missing.items():
        if name in typed.columns:
            typed[name] = typed[name].fillna(float(value))
    scores = champion.scores(typed)
    numeric = {n: ValueCounts.of(typed[n].to_numpy(float)) for n in champion.numeric}
    categorical = {n: drift.categorical_shares(typed[n]) for n in champion.categorical}
    labelled, matched = None, 0
    if labels is not None:
        ids = typed[spec.id_column].astype(str).str.strip()
        found = ids.isin(labels.index).to_numpy()
        matched = int(pd.unique(ids[found]).size)
        churned = labels.reindex(ids[found].array).to_numpy(dtype=int)
        labelled = (churned, scores[found])
    return PartSummary(
        len(raw), quality, numeric, categorical, ValueCounts.of(scores), labelled, matched
    )


def combine_quality(items: list[dict], rows: int) -> dict:
    """The quality section of the whole month from its parts' sections (in part order)."""
    merged: dict[tuple[str, str], dict] = {}
    for quality in items:
        for v in quality["violations"]:
            key = (v["column"], v["rule"])
            if key not in merged:
                merged[key] = {**v, "examples": list(v["examples"]), "parts": 0}
            else:
                merged[key]["count"] += v["count"]
                merged[key]["examples"] = list(
                    dict.fromkeys([*merged[key]["examples"], *v["examples"]])
                )[:MAX_EXAMPLES]
            merged[key]["parts"] += 1
    violations = []
    for (_, rule), v in merged.items():
        parts = v.pop("parts")
        if rule == "column present":
            v["count"] = 1
        elif rule == "blank in every row":
            if parts < len(items):  # blank in some parts only
                continue
            v["count"] = rows
        violations.append(v)
    violations.sort(key=lambda v: (v["column"], v["rule"]))
    missing = list(dict.fromkeys(c for q in items for c in q["missing_columns"]))
    return {"passed": not violations, "violations": violations, "missing_columns": missing}


def combine_parts(parts: list[PartSummary]) -> tuple[dict, MonthColumns | None]:
    """The month's quality section and its columns (None when it cannot be scored)."""
    rows = sum(p.rows for p in parts)
    quality = combine_quality([p.quality for p in parts], rows)
    if quality["missing_columns"]:
        return quality, None
    values: dict[str, Any] = {}
    for name in parts[0].numeric:
        values[name] = ValueCounts.combine([p.numeric[name] for p in parts]).expand()
    for name in parts[0].categorical:
        counts = pd.concat([p.categorical[name] for p in parts]).groupby(level=0).sum()
        values[name] = counts.sort_index()
    scores = ValueCounts.combine([p.scores for p in parts]).expand()
    labelled = None
    if parts[0].labelled is not None:
        labelled = (
            np.concatenate([p.labelled[0] for p in parts]),
            np.concatenate([p.labelled[1] for p in parts]),
        )
    return quality, MonthColumns(rows, values, scores, labelled)


def monitor_month_on_cluster(
    monitor: Monitor, month: str, client: Any, settings: ComputeSettings
) -> tuple[dict, Path]:
    """``monitor_month`` with the month's parts summarised on the cluster's workers.

    The verdict is written (atomically) only when every part was summarised.

    Raises:
        ChurnlabError: as ``monitor_month`` for the month and its labels.
    """
    root, p, spec = monitor.root, monitor.params, monitor.spec
    batch_path = locate_month(root, p, month)
    try:
        parts = month_parts(batch_path)
        labels_path = month_file(root / p.labels, month, "the labels")
        labels = read_labels(labels_path, spec, None) if labels_path is not None else None
    except ChurnlabError as exc:
        raise ChurnlabError(str(exc).replace(f"{root}/", "")) from None
    churned = None
    if labels is not None:
        churned = pd.Series(labels.churned, index=pd.Index(labels.ids.astype(str)))
    shared = share(
        client, [spec, dict(monitor.fill_missing), monitor.champion, churned], f"judging-{month}"
    )
    futures = client.map(
        summarise_part,
        [str(part) for part in parts],
        *[[item] * len(parts) for item in shared],
        key=[f"churnlab-monitor-{month}-{k}-{part.name}" for k, part in enumerate(parts)],
    )
    summaries = gather(client, futures, settings, f"judging {month}")
    quality, columns = combine_parts(summaries)
    if labels is not None:
        matched = sum(s.matched for s in summaries)
        if columns is not None and matched < len(labels.ids):
            raise unknown_labels_error(
                labels_path.relative_to(root), spec, len(labels.ids) - matched, []
            )
    verdict = monitor.judge_columns(month, quality, columns)
    verdict["batch"] = _file_record(root, batch_path, sum(s.rows for s in summaries))
    verdict["labels"] = (
        _file_record(root, labels_path, len(labels.ids)) if labels is not None else None
    )
    target = verdict_path(root, p, month)
    write_json(target, verdict)
    return verdict, target
