"""Percentile bootstrap intervals of the report's headline metrics.

Resamples are held as counts per customer, so each one is scored in O(customers) without
sorting it again; the point values are the same computation with every customer counted once.
"""

from __future__ import annotations

import numpy as np

from churnlab.errors import ChurnlabError

# Where the report's knobs live: the errors of every report module name this file.
REPORT_PARAMS = "params/report.yaml"

BOOTSTRAP_METRICS = (
    "roc_auc",
    "top_precision",
    "top_capture_rate",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "brier",
)
_CHUNK_CELLS = 4_000_000  # resample counts held in memory at once (32 MB of int64)


def _resample_metrics(
    counts: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    groups: np.ndarray,
    top_count: int,
) -> dict[str, np.ndarray]:
    """Metrics of resamples given as counts per customer (rows: resamples).

    Customers are sorted by descending score; ``groups`` are the starts of runs of equal
    scores. Working on counts makes each resample O(customers), without sorting it again.
    """
    n = counts.shape[1]
    leaving = counts * labels
    staying = counts - leaving
    positives = leaving.sum(axis=1)
    negatives = n - positives
    tp = (leaving * flagged).sum(axis=1)
    fp = (staying * flagged).sum(axis=1)
    fn = positives - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        result = {
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(positives > 0, tp / positives, np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            "accuracy": (n - fp - fn) / n,
            "brier": (counts * (scores - labels) ** 2).sum(axis=1) / n,
        }
        # the top_count highest-scored customers of the resample, copies counted one by one
        before = np.cumsum(counts, axis=1) - counts
        taken = np.clip(top_count - before, 0, counts)
        top_leavers = (taken * labels).sum(axis=1)
        result["top_precision"] = top_leavers / top_count
        result["top_capture_rate"] = top_leavers / positives
        # ROC AUC: P(leaver scored above stayer) + half P(equal), by runs of equal scores
        group_pos = np.add.reduceat(leaving, groups, axis=1)
        group_neg = np.add.reduceat(staying, groups, axis=1)
        below = negatives[:, None] - np.cumsum(group_neg, axis=1)
        wins = (group_pos * below).sum(axis=1) + 0.5 * (group_pos * group_neg).sum(axis=1)
        result["roc_auc"] = wins / (positives * negatives)
    return result


def _ranked(labels, scores, threshold: float, top_fraction: float) -> tuple:
    """The arrays :func:`_resample_metrics` works on: customers by descending score (ties in
    their order, as the evaluation ranks them), flags, runs of equal scores, the top count."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    scores = np.asarray(scores, dtype=float)[order]
    labels = np.asarray(labels).astype(bool)[order].astype(np.int64)
    flagged = (scores >= threshold).astype(np.int64)
    groups = np.flatnonzero(np.concatenate([[True], scores[1:] != scores[:-1]]))
    top_count = max(1, int(round(top_fraction * len(scores))))
    return labels, scores, flagged, groups, top_count


def _each_once(ranked: tuple) -> dict[str, float]:
    once = np.ones((1, len(ranked[0])), dtype=np.int64)
    return {name: float(values[0]) for name, values in _resample_metrics(once, *ranked).items()}


def point_metrics(labels, scores, threshold: float, top_fraction: float = 1.0) -> dict[str, float]:
    """The bootstrapped metrics on the customers themselves (each counted once)."""
    return _each_once(_ranked(labels, scores, threshold, top_fraction))


def bootstrap_intervals(
    labels,
    scores,
    threshold: float,
    top_fraction: float,
    samples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of the headline metrics on the test customers.

    Customers are resampled with replacement ``samples`` times (seeded); each metric is
    recomputed on every resample, and the interval is the central ``confidence`` share.
    Resamples are handled as counts per customer in chunks, so memory stays bounded and
    time grows linearly with customers times samples.

    Returns:
        ``{metric: {"value", "low", "high"}}``; ``value`` is the metric on the data itself.
    """
    if samples < 10:
        raise ChurnlabError(
            f"{REPORT_PARAMS} report.bootstrap_samples: expected at least 10, found {samples}"
        )
    if not 0 < confidence < 1:
        raise ChurnlabError(
            f"{REPORT_PARAMS} report.confidence: expected a share between 0 and 1, "
            f"found {confidence}"
        )
    ranked = _ranked(labels, scores, threshold, top_fraction)
    n = len(ranked[0])
    point = _each_once(ranked)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    parts = []
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        rows = rng.integers(0, n, size=(size, n))
        offsets = (np.arange(size) * n)[:, None]
        counts = np.bincount((rows + offsets).ravel(), minlength=size * n).reshape(size, n)
        parts.append(_resample_metrics(counts, *ranked))
    tail = (1 - confidence) / 2
    intervals = {}
    for name in BOOTSTRAP_METRICS:
        values = np.concatenate([part[name] for part in parts])
        low, high = np.quantile(values[np.isfinite(values)], [tail, 1 - tail])
        intervals[name] = {"value": point[name], "low": float(low), "high": float(high)}
    return intervals
