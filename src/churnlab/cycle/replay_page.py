"""The replay's page, ``reports/replay.html``: the model in use month by month with and
without retraining, each decision and why, the messages the cycle sent, and the acceptance
figures. Self-contained like the report's pages (the same Jinja2 setup: every value escaped,
no script, the figure a PNG ``data:`` URI), secrets masked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from churnlab.monitoring.months import add_months

_BLUE, _GREY, _ORANGE, _RED = "#1f5f99", "#8c8c8c", "#d9822b", "#b3261e"


def active_scenarios(scenarios: list[Mapping[str, Any]], month: str) -> list[str]:
    """The scenarios at work in a month, each in a few words."""
    words = []
    for item in scenarios:
        start = str(item["start"])
        end = add_months(start, int(item["months"])) if item.get("months") else "9999-12"
        if start <= month < end:
            what = f"{item['kind'].replace('_', ' ')}: {item['column']}"
            if item.get("category") is not None:
                what += f" = {item['category']}"
            if item.get("size") is not None:
                what += f" ({item['size']:g})"
            words.append(what)
    return words


def roc_auc_figure(result: Mapping[str, Any]) -> str | None:
    """Realised ROC AUC by month: the model in use and the first champion, never retrained;
    the changes and the retrains marked."""
    months = result["months"]
    auc = result["roc_auc"]
    if not any(v is not None for m in months for v in auc[m].values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from churnlab.monitoring.page import _png

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    x = list(range(len(months)))

    def line(key: str) -> list[float]:
        return [math.nan if auc[m][key] is None else auc[m][key] for m in months]

    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.plot(x, line("in_use"), "o-", color=_BLUE, label="model in use (with retraining)")
    ax.plot(
        x, line("never_retrained"), "s--", color=_ORANGE, label="first champion, never retrained"
    )
    for change in result["changes"]:
        if change in months:
            ax.axvline(months.index(change) - 0.5, color=_GREY, linestyle=":")
    for decision in result["decisions"]:
        if decision["outcome"] == "promoted":
            ax.axvline(months.index(decision["month"]) + 0.5, color=_RED, alpha=0.35, lw=3)
    ax.set_xticks(x, months, rotation=45, ha="right")
    ax.set_ylabel("realised ROC AUC")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("dotted: the world changes; red band: a new champion from the next month")
    fig.tight_layout()
    return _png(fig)


def page_context(result: Mapping[str, Any], title: str) -> dict[str, Any]:
    """Everything the page shows, from a replay's result."""
    by_month = {d["month"]: d for d in result["decisions"]}
    events: dict[str, list[str]] = {}
    for event in result["events"]:
        events.setdefault(event["cycle"], []).append(str(event.get("event") or event.get("kind")))
    rows = []
    for month in result["months"]:
        decision = by_month.get(month, {})
        rows.append(
            {
                "month": month,
                "world": active_scenarios(result["scenarios"], month) or ["stable"],
                "version": result["in_use"][month],
                "roc_auc": result["roc_auc"][month]["in_use"],
                "never_retrained": result["roc_auc"][month]["never_retrained"],
                # a retrained model has seen copies of most customers (the months resample)
                "unseen_roc_auc": result["roc_auc"][month].get("in_use_unseen"),
                "unseen_customers": result["roc_auc"][month].get("unseen_customers"),
                "rule": decision.get("rule"),
                "fired": decision.get("fired") or [],
                "action": decision.get("action"),
                "outcome": decision.get("outcome"),
                "after": (decision.get("champion_after") or {}).get("version"),
                "reason": decision.get("reason", ""),
                "events": events.get(month, []),
            }
        )
    settings = result["settings"]
    return {
        "title": title,
        "rows": rows,
        "figures": result["figures"],
        "figure": roc_auc_figure(result),
        "first_version": result["first_version"],
        "customers": settings.simulate["customers"],
        "label_lag": settings.label_lag,
        "within_months": settings.within_months,
        "minutes": result["seconds"] / 60,
    }


def render_page(context: Mapping[str, Any]) -> str:
    from churnlab.report.pages import page_environment

    return page_environment().get_template("replay.html").render(**context)


def write_replay_outputs(root: Path, result: Mapping[str, Any]) -> list[Path]:
    """``reports/replay.html`` and the replay's decision log beside it, both or neither,
    secrets masked."""
    from churnlab.config import get_key, load_params
    from churnlab.cycle.replay import DECISIONS_NAME, PAGE_NAME
    from churnlab.files import write_atomic_all
    from churnlab.secrets import redact, secret_values

    params = load_params(root)
    folder = (root / get_key(params, "paths.report_index", "params/paths.yaml")).parent
    title = str(get_key(params, "report.title", "params/report.yaml"))
    secrets = secret_values(params)
    html = render_page(page_context(result, title))
    files = {
        folder / PAGE_NAME: redact(html, secrets).encode(),
        folder / DECISIONS_NAME: redact(result["log_bytes"].decode(), secrets).encode(),
    }
    write_atomic_all(files)
    return list(files)
