"""The monitoring page and the Prometheus file: every month's verdict for people and machines.

``reports/monitoring.html`` is for the model's owners and the retention team: months across,
with data-quality issues, a months x features drift heat map (worst first), the shift of the
score distribution, realised and estimated performance with intervals, and each month's
verdict in a sentence. ``monitoring/metrics.prom`` holds the same numbers as Prometheus gauges
for a node-exporter textfile collector or a Pushgateway.

Both are built from the verdict JSONs alone (docs/monitoring.md), by pure functions; only
:func:`write_monitoring_outputs` reads and writes files. Nothing here knows a column's name:
every name on the page comes from a verdict.
"""

from __future__ import annotations

import base64
import calendar
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from churnlab.config import get_key, load_params
from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic_all
from churnlab.secrets import redact, secret_values

PAGE_NAME = "monitoring.html"
PROM_NAME = "metrics.prom"
VERDICT_FILE = re.compile(r"^(\d{4}-\d{2})\.json$")
STATUS_LABELS = {
    "ok": "OK",
    "drift": "drift",
    "performance": "performance",
    "quality_failed": "failed quality",
}
# heat-map bands of a column's worst statistic over its threshold (1 = at the threshold)
SEVERITY_BANDS = (0.5, 1.0, 2.0, 4.0, 8.0)
_BLUE, _GREY, _ORANGE, _RED = "#1f5f99", "#8c8c8c", "#d9822b", "#b3261e"


# --- reading ------------------------------------------------------------------------------


def read_verdicts(folder: Path, shown: str) -> list[dict]:
    """Every ``YYYY-MM.json`` verdict in ``folder``, in month order (none: an empty list).

    Args:
        folder: the verdict folder (``monitor.verdicts``).
        shown: how to name the folder in an error message (relative to the project).

    Raises:
        ChurnlabError: a verdict that is not JSON or lacks a field the page needs.
    """
    if not folder.is_dir():
        return []
    verdicts = []
    for path in sorted(folder.iterdir()):
        match = VERDICT_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            verdict = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ChurnlabError(
                f"{shown}/{path.name}: not a verdict: expected JSON written by `churnlab "
                f"monitor`, found {exc}; run `churnlab monitor {match.group(1)}` again"
            ) from None
        missing = [k for k in ("month", "status", "quality", "alerts") if k not in verdict]
        if missing or verdict.get("month") != match.group(1):
            field = missing[0] if missing else "month"
            raise ChurnlabError(
                f"{shown}/{path.name}: {field}: expected a verdict of {match.group(1)} "
                f"(docs/monitoring.md), found {verdict.get(field)!r}; run `churnlab monitor "
                f"{match.group(1)}` again"
            )
        verdicts.append(verdict)
    return verdicts


# --- words --------------------------------------------------------------------------------


def month_name(month: str) -> str:
    """``"2026-03"`` -> ``"March 2026"``."""
    year, number = month.split("-")
    return f"{calendar.month_name[int(number)]} {year}"


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def _feature_change(entry: dict) -> str | None:
    """How a drifted column moved, in words (None when it cannot be told)."""
    change = entry.get("largest_change") or {}
    column = entry["column"]
    if entry["kind"] == "categorical" and change.get("category") is not None:
        before, after = change["reference_share"], change["month_share"]
        verb = "rose" if after > before else "fell"
        return (
            f"customers with {column} = {change['category']} {verb} from {_pct(before)} "
            f"to {_pct(after)}"
        )
    shift = change.get("mean_shift_sd")
    if shift is None:
        return None
    verb = "rose" if shift > 0 else "fell"
    means = ""
    before, after = (
        (entry.get("reference") or {}).get("mean"),
        (entry.get("month") or {}).get("mean"),
    )
    if before is not None and after is not None:
        means = f" (mean {before:.4g} to {after:.4g})"
    return f"{column} {verb} by {abs(shift):.2f} standard deviations{means}"


def _side(value: float, gate: float) -> str:
    return f"{'still above' if value >= gate else 'below'} the gate {gate:g}"


def _performance_words(performance: dict) -> str:
    """Recall against the gate: realised when labels have arrived, else estimated."""
    gate = performance["gate"]["value"]
    realised = performance.get("realised") or {}
    estimated = performance["estimated"]
    recall, interval = estimated.get("recall"), estimated.get("recall_interval")
    span = f"{interval[0]:.2f}-{interval[1]:.2f}" if interval is not None else None
    if realised.get("recall") is not None:
        words = f"realised recall {realised['recall']:.2f}"
        if performance.get("below_estimate"):
            # worse than its own probabilities promise: what feature drift cannot show
            words += (
                f", below the {span} its scores promise (customers leave differently than "
                "the model expects: concept drift?)"
            )
        elif recall is not None:
            words += f" (estimated {recall:.2f}" + (f", {span})" if span else ")")
        if gate is not None:
            words += f", {_side(realised['recall'], gate)}"
        return words
    if recall is None:
        return "no customer is flagged, so recall cannot be estimated"
    words = f"estimated recall {recall:.2f}" + (f" ({span})" if span else "")
    if gate is None:
        return words
    if interval is not None and interval[1] < gate:
        return f"{words}, below the gate {gate:g}"
    if recall < gate or (interval is not None and interval[0] < gate):
        return f"{words}, possibly below the gate {gate:g}"
    return f"{words}, {_side(recall, gate)}"


def month_sentence(verdict: dict) -> str:
    """A month's verdict in one sentence for people, from its fields (plain text)."""
    name = month_name(verdict["month"])
    quality = verdict["quality"]
    if not quality["passed"]:
        problems = [
            f"{v['column']}: {v['rule']} ({v['count']:,} rows)" for v in quality["violations"][:2]
        ]
        more = len(quality["violations"]) - len(problems)
        tail = f" and {more} more" if more > 0 else ""
        text = (
            f"{name}: failed data quality ({'; '.join(problems)}{tail}); "
            "never to be used for training"
        )
        if verdict.get("performance") is None:
            return f"{text}; it could not be scored."
        return f"{text}; {_performance_words(verdict['performance'])}."
    parts = []
    for entry in verdict.get("features") or []:
        if entry["drifted"]:
            words = _feature_change(entry)
            if words is not None:
                parts.append(words)
        if len(parts) == 2:
            break
    drifted = len((verdict.get("drift") or {}).get("drifted_columns") or [])
    if drifted > len(parts) and parts:
        parts.append(f"{drifted - len(parts)} more columns drifted")
    prediction = verdict.get("prediction")
    if prediction is not None and prediction["alert"]:
        before = prediction["reference"]["flagged_share"]
        after = prediction["month"]["flagged_share"]
        parts.append(
            f"the share flagged at the threshold went from {_pct(before)} to {_pct(after)}"
        )
    text = "; ".join(parts) if parts else "no feature drifted"
    if verdict.get("performance") is None:
        return f"{name}: {text}."
    return f"{name}: {text}; {_performance_words(verdict['performance'])}."


# --- tables -------------------------------------------------------------------------------


def _severity(entry: dict) -> float | None:
    """A column's worst statistic over its threshold (None when none was computed)."""
    ratios = [
        s["value"] / s["threshold"] if s["threshold"] else float(s["value"] > 0)
        for s in entry["statistics"]
        if s["value"] is not None and s["threshold"] is not None
    ]
    return max(ratios) if ratios else None


def _band(severity: float | None) -> int:
    if severity is None:
        return -1
    return sum(severity >= edge for edge in SEVERITY_BANDS)


def drift_heat_map(verdicts: list[dict]) -> dict:
    """Months x columns of each column's worst statistic over its threshold.

    Returns:
        ``{"months": [...], "rows": [{"column", "importance", "drifted_months", "cells"}]}``,
        rows worst first (most months drifted, then the largest ratio, then the name); a
        cell is ``{"severity", "band", "drifted", "statistic", "value", "threshold"}`` or
        None where the month has no entry for the column.
    """
    months = [v["month"] for v in verdicts]
    columns: dict[str, dict[str, dict]] = {}
    for verdict in verdicts:
        for entry in verdict.get("features") or []:
            columns.setdefault(entry["column"], {})[verdict["month"]] = entry
    rows = []
    for column, by_month in columns.items():
        cells = []
        for month in months:
            entry = by_month.get(month)
            if entry is None:
                cells.append(None)
                continue
            severity = _severity(entry)
            worst = max(
                (s for s in entry["statistics"] if s["value"] is not None and s["threshold"]),
                key=lambda s: s["value"] / s["threshold"],
                default=None,
            )
            cells.append(
                {
                    "severity": severity,
                    "band": _band(severity),
                    "drifted": bool(entry["drifted"]),
                    "statistic": worst["name"] if worst else None,
                    "value": worst["value"] if worst else None,
                    "threshold": worst["threshold"] if worst else None,
                }
            )
        present = [c["severity"] for c in cells if c is not None and c["severity"] is not None]
        importances = [
            e["importance"] for e in by_month.values() if e.get("importance") is not None
        ]
        rows.append(
            {
                "column": column,
                "importance": importances[-1] if importances else None,
                "drifted_months": sum(1 for c in cells if c is not None and c["drifted"]),
                "worst": max(present, default=0.0),
                "cells": cells,
            }
        )
    rows.sort(key=lambda r: (-r["drifted_months"], -r["worst"], r["column"]))
    return {"months": months, "rows": rows}


def quality_table(verdicts: list[dict]) -> list[dict]:
    """Rows ``{"column", "rule", "counts": [per month or None], "examples"}``, by column and
    rule, of every violation in any month."""
    found: dict[tuple[str, str], dict] = {}
    for index, verdict in enumerate(verdicts):
        for violation in verdict["quality"]["violations"]:
            key = (violation["column"], violation["rule"])
            row = found.setdefault(
                key,
                {
                    "column": key[0],
                    "rule": key[1],
                    "counts": [None] * len(verdicts),
                    "examples": [],
                },
            )
            row["counts"][index] = violation["count"]
            for example in violation.get("examples") or []:
                if example not in row["examples"] and len(row["examples"]) < 3:
                    row["examples"].append(example)
    return [found[key] for key in sorted(found)]


def _value(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def month_rows(verdicts: list[dict]) -> list[dict]:
    """One row per month of the overview, scores and performance tables."""
    rows = []
    for verdict in verdicts:
        statistics = {s["name"]: s for s in _value(verdict, "prediction", "statistics") or []}
        rows.append(
            {
                "month": verdict["month"],
                "name": month_name(verdict["month"]),
                "status": verdict["status"],
                "status_label": STATUS_LABELS.get(verdict["status"], verdict["status"]),
                "alerts": verdict["alerts"],
                "customers": _value(verdict, "batch", "rows"),
                "usable": verdict.get("usable_for_training"),
                "violations": sum(v["count"] for v in verdict["quality"]["violations"]),
                "drifted": len(_value(verdict, "drift", "drifted_columns") or []),
                "drift_score": _value(verdict, "drift", "score"),
                "score_mean": _value(verdict, "prediction", "month", "mean"),
                "reference_score_mean": _value(verdict, "prediction", "reference", "mean"),
                "flagged": _value(verdict, "prediction", "month", "flagged_share"),
                "reference_flagged": _value(verdict, "prediction", "reference", "flagged_share"),
                "score_statistics": statistics,
                "estimated": _value(verdict, "performance", "estimated"),
                "realised": _value(verdict, "performance", "realised"),
                "gate": _value(verdict, "performance", "gate", "value"),
                "below_estimate": bool(_value(verdict, "performance", "below_estimate")),
                "sentence": month_sentence(verdict),
            }
        )
    return rows


# --- figures ------------------------------------------------------------------------------


def _png(fig) -> str:
    """A figure as a ``data:`` URI; PNG bytes are stable (no date, no software stamp)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def performance_figure(verdicts: list[dict]) -> str | None:
    """Recall and precision by month: estimated with its interval, realised, and the gate."""
    scored = [v for v in verdicts if v.get("performance") is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    months = [v["month"] for v in scored]
    x = list(range(len(months)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, metric in zip(axes, ("recall", "precision"), strict=True):
        estimated = [v["performance"]["estimated"] for v in scored]
        values = [_number(e.get(metric)) for e in estimated]
        intervals = [e.get(f"{metric}_interval") or (None, None) for e in estimated]
        low = [
            v - _number(i[0]) if i[0] is not None else 0.0
            for v, i in zip(values, intervals, strict=True)
        ]
        high = [
            _number(i[1]) - v if i[1] is not None else 0.0
            for v, i in zip(values, intervals, strict=True)
        ]
        ax.errorbar(
            x,
            values,
            yerr=[low, high],
            fmt="o-",
            color=_BLUE,
            capsize=3,
            label="estimated (interval)",
        )
        realised = [_number(_value(v, "performance", "realised", metric)) for v in scored]
        if any(not math.isnan(r) for r in realised):
            ax.plot(x, realised, "s--", color=_ORANGE, label="realised (labels)")
        gate = scored[-1]["performance"]["gate"]["value"]
        if metric == "recall" and gate is not None:
            ax.axhline(gate, color=_RED, linestyle=":", label=f"gate {gate:g}")
        ax.set_title(metric.capitalize())
        ax.set_xticks(x, months, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def score_figure(verdicts: list[dict]) -> str | None:
    """The score distribution of each month (10-25-50-75-90% quantiles) beside the
    reference's, and the share flagged at the operating threshold."""
    scored = [v for v in verdicts if v.get("prediction") is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})

    def box(summary: dict, label: str) -> dict:
        q = summary["quantiles"]
        return {
            "label": label,
            "whislo": q["0.1"],
            "q1": q["0.25"],
            "med": q["0.5"],
            "q3": q["0.75"],
            "whishi": q["0.9"],
            "mean": summary["mean"],
            "fliers": [],
        }

    stats = [box(scored[-1]["prediction"]["reference"], "reference")]
    stats += [box(v["prediction"]["month"], v["month"]) for v in scored]
    fig, (dist_ax, flag_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    dist_ax.bxp(stats, showmeans=True, patch_artist=True, boxprops={"facecolor": "#dbe7f3"})
    dist_ax.set_title("Scores (box 25-75%, whiskers 10-90%)")
    dist_ax.tick_params(axis="x", labelrotation=45)
    threshold = _value(scored[-1], "champion", "threshold")
    if threshold is not None:
        dist_ax.axhline(threshold, color=_RED, linestyle=":", label=f"threshold {threshold:.3f}")
        dist_ax.legend(loc="upper left", fontsize=8)
    x = list(range(len(scored)))
    flagged = [v["prediction"]["month"]["flagged_share"] * 100 for v in scored]
    reference = scored[-1]["prediction"]["reference"]["flagged_share"] * 100
    flag_ax.plot(x, flagged, "o-", color=_BLUE, label="month")
    flag_ax.axhline(reference, color=_GREY, linestyle="--", label="reference")
    flag_ax.set_title("Share flagged at the threshold (%)")
    flag_ax.set_xticks(x, [v["month"] for v in scored], rotation=45, ha="right")
    flag_ax.grid(axis="y", alpha=0.3)
    flag_ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --- the page -----------------------------------------------------------------------------


def page_context(verdicts: list[dict], title: str, verdict_folder: str) -> dict[str, Any]:
    """Everything the page shows, from the verdicts (month order)."""
    latest = verdicts[-1] if verdicts else None
    rows = month_rows(verdicts)
    return {
        "title": title,
        "verdict_folder": verdict_folder,
        "score_statistics": list(dict.fromkeys(n for r in rows for n in r["score_statistics"])),
        "months": rows,
        "heat_map": drift_heat_map(verdicts),
        "quality": quality_table(verdicts),
        "latest": latest,
        "figures": {
            "performance": performance_figure(verdicts),
            "scores": score_figure(verdicts),
        },
    }


def render_page(context: dict[str, Any]) -> str:
    """The monitoring page's HTML (the report pages' Jinja2 setup: autoescape, the CSP)."""
    from churnlab.report.pages import page_environment

    return page_environment().get_template(PAGE_NAME).render(**context)


# --- Prometheus ---------------------------------------------------------------------------


def _label_value(text: Any) -> str:
    """A label value escaped as the text exposition format asks (backslash, quote, newline)."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_value(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# name, help; every family is a gauge
PROMETHEUS_FAMILIES = {
    "churnlab_monitor_latest_month": "The latest month judged (1): join on month to alert on it.",
    "churnlab_alert": "1 when the month raised an alert of this kind (any is their or).",
    "churnlab_usable_for_training": "1 when the month passed data quality.",
    "churnlab_batch_customers": "Customers in the month's batch.",
    "churnlab_quality_violations": "Rows of the month breaking a data-quality rule.",
    "churnlab_feature_drift": "A column's drift statistic, month against the reference.",
    "churnlab_feature_drift_threshold": "The threshold of a column's drift statistic.",
    "churnlab_feature_drifted": "1 when any statistic of the column is above its threshold.",
    "churnlab_feature_importance": "The column's share of the champion's permutation importance.",
    "churnlab_drift_score": "Importance-weighted share of drifted columns (0 to 1).",
    "churnlab_prediction_drift": "A drift statistic of the champion's scores.",
    "churnlab_prediction_drift_threshold": "The threshold of a score drift statistic.",
    "churnlab_flagged_share": "Share of customers at or above the operating threshold.",
    "churnlab_estimated_recall": "Recall estimated from the scores alone (CBPE).",
    "churnlab_estimated_recall_lower": "Lower end of the estimated recall's interval.",
    "churnlab_estimated_recall_upper": "Upper end of the estimated recall's interval.",
    "churnlab_estimated_precision": "Precision estimated from the scores alone (CBPE).",
    "churnlab_estimated_precision_lower": "Lower end of the estimated precision's interval.",
    "churnlab_estimated_precision_upper": "Upper end of the estimated precision's interval.",
    "churnlab_realised_recall": "Recall on the month's labelled customers.",
    "churnlab_realised_precision": "Precision on the month's labelled customers.",
    "churnlab_realised_roc_auc": "ROC AUC on the month's labelled customers.",
    "churnlab_realised_brier": "Brier score on the month's labelled customers.",
    "churnlab_labelled_customers": "Customers of the month whose labels have arrived.",
    "churnlab_recall_gate": "The recall gate (evaluate.gates.min_recall).",
    "churnlab_performance_below_gate": "1 when recall (realised, else estimated) is under gate.",
    "churnlab_performance_below_estimate": "1 when realised recall is under its estimate.",
    "churnlab_champion_version": "Registry version of the champion that judged the month.",
}


def _samples(verdict: dict, latest: bool) -> list[tuple[str, dict[str, Any], Any]]:
    """``(family, labels, value)`` of one verdict; values that are null are left out."""
    month = verdict["month"]
    out: list[tuple[str, dict[str, Any], Any]] = []

    def add(family: str, value: Any, **labels: Any) -> None:
        if value is not None:
            out.append((family, {"month": month, **labels}, value))

    if latest:
        add("churnlab_monitor_latest_month", 1)
    for kind, value in verdict["alerts"].items():
        add("churnlab_alert", bool(value), kind=kind)
    add("churnlab_usable_for_training", bool(verdict.get("usable_for_training")))
    add("churnlab_batch_customers", _value(verdict, "batch", "rows"))
    for violation in verdict["quality"]["violations"]:
        add(
            "churnlab_quality_violations",
            violation["count"],
            column=violation["column"],
            rule=violation["rule"],
        )
    for entry in verdict.get("features") or []:
        for statistic in entry["statistics"]:
            labels = {"column": entry["column"], "statistic": statistic["name"]}
            add("churnlab_feature_drift", statistic["value"], **labels)
            add("churnlab_feature_drift_threshold", statistic["threshold"], **labels)
        add("churnlab_feature_drifted", bool(entry["drifted"]), column=entry["column"])
        add("churnlab_feature_importance", entry.get("importance"), column=entry["column"])
    add("churnlab_drift_score", _value(verdict, "drift", "score"))
    prediction = verdict.get("prediction") or {}
    for statistic in prediction.get("statistics") or []:
        add("churnlab_prediction_drift", statistic["value"], statistic=statistic["name"])
        add(
            "churnlab_prediction_drift_threshold",
            statistic["threshold"],
            statistic=statistic["name"],
        )
    for sample in ("month", "reference"):
        add("churnlab_flagged_share", _value(prediction, sample, "flagged_share"), sample=sample)
    estimated = _value(verdict, "performance", "estimated") or {}
    for metric in ("recall", "precision"):
        add(f"churnlab_estimated_{metric}", estimated.get(metric))
        interval = estimated.get(f"{metric}_interval") or (None, None)
        add(f"churnlab_estimated_{metric}_lower", interval[0])
        add(f"churnlab_estimated_{metric}_upper", interval[1])
    realised = _value(verdict, "performance", "realised") or {}
    for metric in ("recall", "precision", "roc_auc", "brier"):
        add(f"churnlab_realised_{metric}", realised.get(metric))
    add("churnlab_labelled_customers", realised.get("labelled"))
    add("churnlab_recall_gate", _value(verdict, "performance", "gate", "value"))
    for reason in ("below_gate", "below_estimate"):
        flag = _value(verdict, "performance", reason)
        add(f"churnlab_performance_{reason}", None if flag is None else bool(flag))
    add("churnlab_champion_version", _value(verdict, "champion", "version"))
    return out


def prometheus_text(verdicts: list[dict]) -> str:
    """The verdicts as Prometheus text exposition format: one gauge family per measure,
    every sample labelled by ``month`` (and column, statistic, kind as the measure has)."""
    by_family: dict[str, list[str]] = {name: [] for name in PROMETHEUS_FAMILIES}
    for index, verdict in enumerate(verdicts):
        for family, labels, value in _samples(verdict, latest=index == len(verdicts) - 1):
            shown = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            by_family[family].append(f"{family}{{{shown}}} {_sample_value(value)}")
    lines = []
    for family, samples in by_family.items():
        if samples:
            lines += [f"# HELP {family} {PROMETHEUS_FAMILIES[family]}", f"# TYPE {family} gauge"]
            lines += samples
    return "\n".join(lines) + "\n" if lines else ""


# --- files --------------------------------------------------------------------------------


def write_monitoring_outputs(root: Path) -> tuple[Path, Path]:
    """Read every verdict of the project; write the page and the Prometheus file.

    Both or neither are replaced (a full disk leaves the earlier pair). Secret values of the
    params and the environment are masked in both.

    Returns:
        The page's path and the Prometheus file's path.

    Raises:
        ChurnlabError: no verdict yet, or a verdict that cannot be read.
    """
    params = load_params(root)
    folder = get_key(params, "monitor.verdicts", "params/monitor.yaml")
    verdicts = read_verdicts(root / folder, folder)
    if not verdicts:
        raise ChurnlabError(
            f"{folder}: no verdict (YYYY-MM.json): run `churnlab monitor --all` (make monitor)"
        )
    title = str(get_key(params, "report.title", "params/report.yaml"))
    page = (root / get_key(params, "paths.report_index", "params/paths.yaml")).parent / PAGE_NAME
    prom = root / folder / PROM_NAME
    secrets = secret_values(params)
    html = render_page(page_context(verdicts, title, folder))
    write_atomic_all(
        {
            page: redact(html, secrets).encode(),
            prom: redact(prometheus_text(verdicts), secrets).encode(),
        }
    )
    return page, prom
