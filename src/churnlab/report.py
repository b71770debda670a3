"""The stakeholder report: ``reports/index.html`` and ``reports/model_card.html``.

The pages are for people who decide on retention offers and never read code. Everything on
them is computed here from the pipeline's outputs (test scores, metrics, params): headline
numbers in business terms, bootstrap confidence intervals, performance by segment and the
comparison with the champion. The pages are self-contained: styles inline, figures embedded as
PNG, no script, no font or image from anywhere else, every value HTML-escaped.

The functions that compute take tables and dicts and return tables and dicts; reading the
project's files and writing the pages happens in :func:`build_reports` only.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab.config import flatten
from churnlab.errors import ChurnlabError

REPORT_PARAMS = "params/report.yaml"
# The metrics compared with the champion and shown with confidence intervals, in page order.
METRIC_LABELS = {
    "roc_auc": "ROC AUC (ranking quality)",
    "pr_auc": "PR AUC (average precision)",
    "top_precision": "share who leave among the top-scored customers",
    "top_capture_rate": "share of all leavers among the top-scored customers",
    "precision": "precision at the threshold",
    "recall": "recall at the threshold (leavers caught)",
    "f1": "F1 at the threshold",
    "accuracy": "accuracy at the threshold",
    "brier": "Brier score (lower is better)",
}
LOWER_IS_BETTER = {"brier"}


# --- numbers ------------------------------------------------------------------------------


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


def segment_labels(values: pd.Series, spec: Mapping[str, Any], where: str) -> pd.Series:
    """The group of each customer for one segment of ``report.segments``.

    A segment is ``{column, label}`` plus either ``bins`` (upper edges of numeric bands:
    ``[12, 24]`` gives "up to 12", "12 to 24", "over 24") or ``names`` (display names of
    the column's values); without either, the values themselves are the groups.
    """
    if spec.get("bins") is not None:
        edges = spec["bins"]
        if (
            not isinstance(edges, list)
            or not edges
            or not all(isinstance(e, (int, float)) for e in edges)
            or list(edges) != sorted(set(edges))
        ):
            raise ChurnlabError(f"{where}.bins: expected increasing numbers, found {edges!r}")
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any() and values.notna().all():
            raise ChurnlabError(f"{where}.bins: column '{spec['column']}' is not numeric")
        names = _band_names(edges)[:-1]
        codes = np.searchsorted(np.asarray(edges, dtype=float), numbers.to_numpy(float), "left")
        groups = pd.Series(np.asarray(names, dtype=object)[codes], index=values.index)
        return groups.where(numbers.notna(), "missing").astype(str)
    names = {str(k): str(v) for k, v in (spec.get("names") or {}).items()}
    text = values.astype(str).where(values.notna(), "missing")
    return text.map(lambda v: names.get(v, v))


def segment_performance(
    table: pd.DataFrame,
    labels,
    scores,
    threshold: float,
    segments: Sequence[Mapping[str, Any]],
    min_size: int,
) -> pd.DataFrame:
    """Customers, churn, flags, precision, recall and ROC AUC for each group of each segment.

    Args:
        table: the test customers with the segment columns, in the order of ``labels``.
        segments: ``report.segments`` from params.
        min_size: groups smaller than this are marked ``small`` (too few to judge).

    Raises:
        ChurnlabError: a segment naming a column the table does not have.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    rows = []
    for index, spec in enumerate(segments):
        where = f"{REPORT_PARAMS} report.segments[{index}]"
        if not isinstance(spec, Mapping) or "column" not in spec:
            raise ChurnlabError(f"{where}: expected a mapping with 'column' and 'label'")
        if spec["column"] not in table.columns:
            raise ChurnlabError(
                f"{where}.column: '{spec['column']}' is not a column of the test data; "
                f"columns: {sorted(table.columns)}"
            )
        groups = segment_labels(table[spec["column"]], spec, where).to_numpy()
        order = sorted(set(groups))
        if spec.get("bins") is not None:  # bands low to high, not alphabetically
            order = [g for g in _band_names(spec["bins"]) if g in order]
        for group in order:
            member = groups == group
            metrics = point_metrics(labels[member], scores[member], threshold)
            rows.append(
                {
                    "segment": str(spec.get("label", spec["column"])),
                    "group": str(group),
                    "customers": int(member.sum()),
                    "churn_rate": float(labels[member].mean()),
                    "mean_score": float(scores[member].mean()),
                    "flagged_share": float((scores[member] >= threshold).mean()),
                    "precision": metrics["precision"],
                    "recall": metrics["recall"],  # NaN for a group without leavers
                    "roc_auc": metrics["roc_auc"],  # NaN for a group of one class
                    "small": bool(member.sum() < min_size),
                }
            )
    return pd.DataFrame(rows)


def _band_names(edges: list) -> list[str]:
    """Names of the numeric bands cut at ``edges`` (upper edges, inclusive), low to high."""
    names = [f"up to {edges[0]:g}"]
    names += [f"{low:g} to {high:g}" for low, high in zip(edges, edges[1:], strict=False)]
    return [*names, f"over {edges[-1]:g}", "missing"]


def segment_gaps(performance: pd.DataFrame, metric: str = "recall") -> list[dict[str, Any]]:
    """For each segment, the groups (of judgeable size) with the highest and lowest metric."""
    gaps = []
    for segment, part in performance[~performance["small"]].groupby("segment", sort=False):
        part = part.dropna(subset=[metric])
        if len(part) < 2:
            continue
        best = part.loc[part[metric].idxmax()]
        worst = part.loc[part[metric].idxmin()]
        gaps.append(
            {
                "segment": segment,
                "metric": metric,
                "best_group": best["group"],
                "best": float(best[metric]),
                "worst_group": worst["group"],
                "worst": float(worst[metric]),
                "gap": float(best[metric] - worst[metric]),
            }
        )
    return sorted(gaps, key=lambda g: -g["gap"])


def business_summary(metrics: Mapping[str, Any], evaluate: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers in business terms, from the test metrics and the cost params."""
    confusion = metrics["confusion"]
    customers = metrics["rows"]
    flagged = confusion["tp"] + confusion["fp"]
    saving = metrics["cost"]["saving"]
    return {
        "top_fraction": float(evaluate["top_fraction"]),
        "top_precision": float(metrics["top_precision"]),
        "top_capture_rate": float(metrics["top_capture_rate"]),
        "top_lift": float(metrics["top_lift"]),
        "threshold": float(metrics["threshold"]),
        "threshold_rule": str(evaluate["threshold_rule"]),
        "customers": int(customers),
        "flagged": int(flagged),
        "flagged_share": flagged / customers,
        "caught": int(confusion["tp"]),
        "leavers": int(confusion["tp"] + confusion["fn"]),
        "recall": float(metrics["recall"]),
        "precision": float(metrics["precision"]),
        "cost_missed": float(evaluate["cost_missed_churner"]),
        "cost_offer": float(evaluate["cost_wasted_offer"]),
        "cost_model": float(metrics["cost"]["model"]),
        "cost_no_action": float(metrics["cost"]["no_action"]),
        "saving": float(saving),
        "saving_per_1000": float(saving) / customers * 1000,
    }


def _listed(names: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def sensitive_inputs(
    sensitive: Sequence[str], inputs: Sequence[str], segments: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The model card's sentences on sensitive attributes, from what the model really uses.

    Args:
        sensitive: ``report.sensitive_columns``: the columns whose effect on a customer's
            treatment must be watched (in law or by the company's rules).
        inputs: the model's input columns (``models/features.json``).
        segments: ``report.segments``; a sensitive column there is shown group by group, and
            is named by its segment label.
    """
    if not sensitive:
        return [
            "No column is marked as sensitive (report.sensitive_columns in "
            f"{REPORT_PARAMS}), so this card cannot say whether the model uses attributes "
            "such as age or sex; list them there."
        ]
    labels = {str(s["column"]): str(s.get("label", s["column"])) for s in segments}
    used = [column for column in sensitive if column in set(inputs)]
    unused = [column for column in sensitive if column not in set(inputs)]
    sentences = []
    for columns, is_input in ((used, True), (unused, False)):
        if not columns:
            continue
        one = len(columns) == 1
        they, them, their = ("it", "it", "its") if one else ("they", "them", "their")
        names = _listed([labels.get(c, c) for c in columns])
        names = names[:1].upper() + names[1:]
        shown = [c for c in columns if c in labels]
        groups = (
            "each group"
            if len(shown) == len(columns)
            else f"the groups of {_listed([labels[c] for c in shown])}"
        )
        if is_input:
            sentence = f"{names} {'is an input' if one else 'are inputs'} of the model"
            if shown:
                sentence += (
                    f"; {they} {'is' if one else 'are'} kept so that {their} effect can be "
                    f"measured here, and the segment table shows how the model treats {groups}"
                )
            sentence += (
                f". Dropping {them} does not by itself remove {their} effect, since other "
                f"attributes correlate with {them}."
            )
        else:
            sentence = (
                f"{names} {'is not an input' if one else 'are not inputs'} of the model, but "
                f"other attributes may correlate with {them}"
            )
            shows = f"; the segment table shows how the model treats {groups}"
            sentence += f"{shows}." if shown else "."
        sentences.append(sentence)
    return sentences


def _change(metric: str, label: str, champion: float, current: float) -> dict[str, Any]:
    """One row of the comparison: both values, the change, and whether it is better."""
    delta = float(current) - float(champion)
    better = -delta if metric in LOWER_IS_BETTER else delta
    return {
        "metric": metric,
        "label": label,
        "champion": float(champion),
        "current": float(current),
        "delta": delta,
        "direction": "better" if better > 1e-9 else "worse" if better < -1e-9 else "same",
    }


def compare_with_champion(
    current: Mapping[str, Any], champion: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What changed between this model and the champion: metrics with deltas, params, data.

    Args:
        current: ``{"metrics": test metrics, "cv": cv metrics, "params": ..., "data": ...}``.
        champion: the same shape, read from the champion file; None when there is none.
    """
    if not champion:
        return {"status": "none", "metrics": [], "params": [], "same_data": True}
    rows = [
        _change(name, label, champion["metrics"][name], current["metrics"][name])
        for name, label in METRIC_LABELS.items()
        if name in champion["metrics"] and name in current["metrics"]
    ]
    per_1000 = [
        m["cost"]["saving"] / m["rows"] * 1000 for m in (champion["metrics"], current["metrics"])
    ]
    rows.append(_change("saving_per_1000", "expected saving per 1,000 customers", *per_1000))
    old_params, new_params = flatten(champion.get("params", {})), flatten(current.get("params", {}))
    changed = [
        {
            "key": key,
            "champion": old_params.get(key, "(not set)"),
            "current": new_params.get(key, "(not set)"),
        }
        for key in sorted(set(old_params) | set(new_params))
        if old_params.get(key, "(not set)") != new_params.get(key, "(not set)")
    ]
    same_data = champion.get("data", {}).get("sha256") == current.get("data", {}).get("sha256")
    identical = not changed and all(r["direction"] == "same" for r in rows) and same_data
    return {
        "status": "identical" if identical else "different",
        "metrics": rows,
        "params": changed,
        "same_data": same_data,
        "champion_commit": champion.get("commit"),
    }


def champion_record(
    metrics: Mapping[str, Any],
    cv: Mapping[str, Any],
    params: Mapping[str, Any],
    data: Mapping[str, Any],
    commit: str | None,
    dirty: bool,
) -> dict[str, Any]:
    """What the champion file keeps of a model: its metrics, params, data and commit."""
    from churnlab.secrets import masked_params

    return {
        "commit": commit,
        "dirty": dirty,
        "data": dict(data),
        "params": masked_params(dict(params)),
        "metrics": dict(metrics),
        "cv": dict(cv),
    }


# --- figures -------------------------------------------------------------------------------

_BLUE, _GREY, _ORANGE = "#1f5f99", "#8c8c8c", "#d9822b"


def _png(fig) -> str:
    """A figure as a ``data:`` URI; PNG bytes are stable (no date, no software stamp)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figures(
    labels,
    scores,
    threshold: float,
    top_fraction: float,
    performance: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
) -> dict[str, str]:
    """The report's figures as embedded PNGs: gains and lift, precision-recall,
    calibration and churn by segment (``tables``: :func:`churnlab.evaluation.plot_tables`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    out = {}

    fig, (gains_ax, lift_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
    gains = tables["gains"]
    gains_ax.plot(
        gains["customers_contacted"] * 100,
        gains["churners_captured"] * 100,
        color=_BLUE,
        label="contact by model score",
    )
    gains_ax.plot([0, 100], [0, 100], "--", color=_GREY, label="contact at random")
    at_top = float(
        np.interp(top_fraction, gains["customers_contacted"], gains["churners_captured"])
    )
    gains_ax.scatter([top_fraction * 100], [at_top * 100], color=_ORANGE, zorder=3)
    gains_ax.annotate(
        f"top {top_fraction:.0%}: {at_top:.0%} of leavers",
        (top_fraction * 100, at_top * 100),
        xytext=(8, -14),
        textcoords="offset points",
        fontsize=9,
    )
    gains_ax.set(
        title="Cumulative gains", xlabel="% of customers contacted", ylabel="% of leavers reached"
    )
    gains_ax.legend(loc="lower right", frameon=False, fontsize=8)
    order = np.argsort(-scores, kind="stable")
    deciles = np.array_split(labels[order], 10)
    lift = [part.mean() / labels.mean() for part in deciles]
    lift_ax.bar(range(1, 11), lift, color=_BLUE)
    lift_ax.axhline(1, color=_GREY, linestyle="--", linewidth=1)
    lift_ax.set(
        title="Lift by score decile",
        xlabel="decile (1 = highest scores)",
        ylabel="churn rate / average",
        xticks=range(1, 11),
    )
    fig.tight_layout()
    out["gains_lift"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    precision, recall, _ = precision_recall_curve(labels, scores)
    ax.plot(recall, precision, color=_BLUE)
    ax.axhline(labels.mean(), color=_GREY, linestyle="--", linewidth=1, label="random")
    flagged = scores >= threshold
    point_p = labels[flagged].mean() if flagged.any() else 0.0
    point_r = labels[flagged].sum() / labels.sum()
    ax.scatter([point_r], [point_p], color=_ORANGE, zorder=3, label="chosen threshold")
    ax.set(
        title="Precision and recall",
        xlabel="recall (share of leavers caught)",
        ylabel="precision (share of flagged who leave)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    fig.tight_layout()
    out["precision_recall"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    observed, predicted = tables["calibration"]["observed"], tables["calibration"]["predicted"]
    ax.plot([0, 1], [0, 1], "--", color=_GREY, linewidth=1, label="perfect")
    ax.plot(predicted, observed, "o-", color=_BLUE, label="model")
    ax.set(
        title="Calibration",
        xlabel="predicted churn probability",
        ylabel="observed churn rate",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    out["calibration"] = _png(fig)

    segments = list(dict.fromkeys(performance["segment"]))
    if segments:
        columns = min(2, len(segments))
        rows = -(-len(segments) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(9, 2.6 * rows), squeeze=False)
        for ax, segment in zip(axes.flat, segments, strict=False):
            part = performance[performance["segment"] == segment]
            y = np.arange(len(part))
            ax.barh(
                y - 0.2, part["churn_rate"] * 100, height=0.4, color=_BLUE, label="observed churn"
            )
            ax.barh(
                y + 0.2, part["mean_score"] * 100, height=0.4, color=_ORANGE, label="mean predicted"
            )
            ax.set_yticks(
                y, [f"{g} (n={n})" for g, n in zip(part["group"], part["customers"], strict=True)]
            )
            ax.invert_yaxis()
            ax.set(title=segment, xlabel="% of customers")
        for ax in list(axes.flat)[len(segments) :]:
            ax.axis("off")
        axes.flat[0].legend(loc="lower right", frameon=False, fontsize=8)
        fig.tight_layout()
        out["segments"] = _png(fig)
    return out


# --- pages ---------------------------------------------------------------------------------


def _environment():
    import jinja2
    from markupsafe import Markup

    from churnlab.runner import CONTENT_SECURITY_POLICY

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("churnlab", "templates"),
        autoescape=True,  # every value is text: a payload in the data shows, never runs
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # one policy for these pages and the notebook pages; Markup: its quotes stay as written
    env.globals["content_security_policy"] = Markup(CONTENT_SECURITY_POLICY)
    env.filters["pct"] = lambda v, digits=0: (
        "n/a" if v is None or v != v else (f"{v * 100:.{digits}f}%")
    )
    env.filters["num"] = lambda v, digits=3: "n/a" if v is None or v != v else f"{v:.{digits}f}"
    env.filters["money"] = lambda v, currency: f"{currency}{v:,.0f}"  # report.currency
    env.filters["signed"] = lambda v, digits=3: f"{v:+.{digits}f}"
    env.filters["count"] = lambda v: f"{int(v):,}"
    return env


def render_pages(context: Mapping[str, Any]) -> dict[str, str]:
    """``{"index.html": page, "model_card.html": page}`` from the report context."""
    env = _environment()
    return {
        name: env.get_template(name).render(**context) for name in ("index.html", "model_card.html")
    }


# --- the stage -----------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ChurnlabError(f"{path}: not found; run `dvc repro` first") from None
    except json.JSONDecodeError as exc:
        raise ChurnlabError(f"{path}: not valid JSON ({exc})") from None


def _notebook_title(executed: Path) -> str:
    content = _read_json(executed)
    for cell in content.get("cells", []):
        if cell.get("cell_type") == "markdown":
            first = "".join(cell.get("source", "")).strip().splitlines()
            if first:
                return first[0].lstrip("# ").strip()
    return executed.stem


def _model_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that make a model what it is (compared with the champion's)."""
    return {
        section: params[section]
        for section in ("prepare", "train", "evaluate")
        if section in params
    }


def _data_record(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"source": str(params["data"]["source"]), "sha256": params["data"].get("sha256")}


def sensitive_columns(report: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    """``report.sensitive_columns``, checked against the columns of the data.

    Raises:
        ChurnlabError: not a list of names, or a name that is not a column (a typo would
            otherwise read as "not an input of the model").
    """
    names = report.get("sensitive_columns")
    where = f"{REPORT_PARAMS} report.sensitive_columns"
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise ChurnlabError(f"{where}: expected a list of column names (or []), found {names!r}")
    unknown = [name for name in names if name not in set(columns)]
    if unknown:
        raise ChurnlabError(
            f"{where}: {unknown} are not columns of the data; columns: {sorted(columns)}"
        )
    return names


def build_context(root: Path) -> dict[str, Any]:
    """Read the pipeline's outputs and params and compute everything the pages show."""
    from churnlab.config import get_key, load_params
    from churnlab.data import ID_COLUMN, TARGET_COLUMN
    from churnlab.evaluation import plot_tables
    from churnlab.runner import load_stage, notebook_stages
    from churnlab.secrets import masked_params

    params = load_params(root)
    report = get_key(params, "report", REPORT_PARAMS)
    evaluate = get_key(params, "evaluate", "params/evaluate.yaml")
    paths = get_key(params, "paths", "params/paths.yaml")
    metrics = _read_json(root / paths["test_metrics"])
    cv = _read_json(root / paths["cv_metrics"])
    prepared = _read_json(root / paths["prepare_summary"])
    features = _read_json(root / paths["features"])
    scores_path = root / paths["test_scores"]
    if not scores_path.is_file():
        raise ChurnlabError(f"{paths['test_scores']}: not found; run `dvc repro evaluate`")
    scored = pd.read_parquet(scores_path)
    test = pd.read_parquet(root / paths["test"])
    table = scored[[ID_COLUMN]].merge(test, on=ID_COLUMN, how="left", validate="one_to_one")
    if table[TARGET_COLUMN].isna().any() or len(table) != len(scored):
        raise ChurnlabError(
            f"{paths['test_scores']}: its customers are not those of {paths['test']}; "
            "run `dvc repro`"
        )
    labels = scored[TARGET_COLUMN].to_numpy().astype(int)
    scores = scored["score"].to_numpy(dtype=float)
    threshold = float(metrics["threshold"])
    top_fraction = float(evaluate["top_fraction"])

    intervals = bootstrap_intervals(
        labels,
        scores,
        threshold,
        top_fraction,
        int(report["bootstrap_samples"]),
        int(report["seed"]),
        float(report["confidence"]),
    )
    performance = segment_performance(
        table,
        labels,
        scores,
        threshold,
        report.get("segments") or [],
        int(report["min_segment_size"]),
    )
    champion_path = root / paths["champion"]
    champion = _read_json(champion_path).get("champion") if champion_path.is_file() else None
    current = {
        "metrics": metrics,
        "cv": cv,
        "params": masked_params(_model_params(params)),
        "data": _data_record(params),
    }
    notebooks = []
    for name in notebook_stages(root):
        stage = load_stage(root, name)
        html = Path(stage.html_path)
        notebooks.append(
            {
                "stage": name,
                "title": _notebook_title(root / stage.executed_path),
                "href": html.relative_to(Path(paths["report_index"]).parent).as_posix(),
            }
        )
    tables = plot_tables(labels, scores, threshold)
    calibration = tables["calibration"]
    return {
        "report": report,
        "business": business_summary(metrics, evaluate),
        "metrics": metrics,
        "cv": cv,
        "intervals": intervals,
        "metric_labels": METRIC_LABELS,
        "segments": performance.to_dict("records"),
        "gaps": segment_gaps(performance),
        "sensitive": sensitive_inputs(
            sensitive_columns(report, list(test.columns)),
            [*features["numeric"], *features["categorical"]],
            report.get("segments") or [],
        ),
        "calibration_gap": float((calibration["observed"] - calibration["predicted"]).abs().max()),
        "comparison": compare_with_champion(current, champion),
        "champion_file": paths["champion"],
        "data": {
            **_data_record(params),
            "rows": int(sum(prepared["rows"].values())),
            "train_rows": int(prepared["rows"]["train"]),
            "test_rows": int(prepared["rows"]["test"]),
            "churn_rate_train": float(prepared["churn_rate"]["train"]),
            "churn_rate_test": float(prepared["churn_rate"]["test"]),
            "numeric": list(features["numeric"]),
            "categorical": list(features["categorical"]),
        },
        "model": {
            "family": str(get_key(params, "train.family", "params/train.yaml")),
            "cv_folds": int(cv["folds"]),
        },
        "notebooks": notebooks,
        "figures": figures(labels, scores, threshold, top_fraction, performance, tables),
    }


def build_reports(root: Path) -> list[Path]:
    """Compute the report and write its pages; nothing is written unless all pages render."""
    from churnlab.config import get_key, load_params
    from churnlab.files import write_atomic_all
    from churnlab.secrets import redact, secret_values

    params = load_params(root)
    index = root / get_key(params, "paths.report_index", "params/paths.yaml")
    card = root / get_key(params, "paths.model_card", "params/paths.yaml")
    print("[report] computing bootstrap intervals, segments and figures", file=sys.stderr)
    pages = render_pages(build_context(root))
    secrets = secret_values(params)
    # both pages or neither: a full disk must not leave a new index beside an old card
    write_atomic_all(
        {
            path: redact(pages[name], secrets).encode()
            for path, name in ((index, "index.html"), (card, "model_card.html"))
        }
    )
    return [index, card]


def promote(root: Path) -> Path:
    """Make the current model the champion: write its record to ``paths.champion``."""
    from churnlab.config import get_key, load_params
    from churnlab.files import write_json
    from churnlab.tracking.lineage import git_state

    params = load_params(root)
    paths = get_key(params, "paths", "params/paths.yaml")
    metrics = _read_json(root / paths["test_metrics"])
    cv = _read_json(root / paths["cv_metrics"])
    commit, dirty = git_state(root)
    record = champion_record(
        metrics, cv, _model_params(params), _data_record(params), commit, dirty
    )
    target = root / paths["champion"]
    write_json(target, {"champion": record})
    return target
