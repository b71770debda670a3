"""The report's figures, drawn with matplotlib and embedded in the pages as PNG ``data:`` URIs.

Gains and lift, precision-recall, calibration, and churn by segment; the PNG bytes carry no
date or software stamp, so the pages keep their bytes from one run to the next.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np
import pandas as pd

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

    from churnlab.evaluation import precision_recall_points

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
    precision, recall = precision_recall_points(labels, scores)
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
