"""The champion's performance on a month: realised from labels, estimated without them.

The estimate is confidence-based (as NannyML's CBPE): if the churn probabilities are
calibrated, a customer with score ``p`` leaves with probability ``p``, so the expected
confusion matrix at the operating threshold is a sum of probabilities. Its interval comes
from the Bernoulli variance of those sums (a normal approximation, with the delta method
for recall). It assumes no concept drift: the same score still means the same risk.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def _interval(value: float | None, sd: float, z: float) -> list[float] | None:
    if value is None:
        return None
    return [float(max(0.0, value - z * sd)), float(min(1.0, value + z * sd))]


def estimated_performance(scores: np.ndarray, threshold: float, confidence: float) -> dict:
    """Expected recall and precision at ``threshold``, with intervals at ``confidence``."""
    scores = np.asarray(scores, dtype=float)
    flagged = scores >= threshold
    tp, fp = scores[flagged].sum(), (1 - scores[flagged]).sum()
    fn, tn = scores[~flagged].sum(), (1 - scores[~flagged]).sum()
    var_tp = (scores[flagged] * (1 - scores[flagged])).sum()
    var_fn = (scores[~flagged] * (1 - scores[~flagged])).sum()
    z = float(norm.ppf(0.5 + confidence / 2))
    precision = _ratio(tp, flagged.sum())
    precision_sd = np.sqrt(var_tp) / flagged.sum() if flagged.any() else 0.0
    recall = _ratio(tp, tp + fn)
    recall_sd = np.sqrt(fn**2 * var_tp + tp**2 * var_fn) / (tp + fn) ** 2 if tp + fn > 0 else 0
    return {
        "recall": recall,
        "precision": precision,
        "recall_interval": _interval(recall, float(recall_sd), z),
        "precision_interval": _interval(precision, float(precision_sd), z),
        "confusion": {"tp": float(tp), "fp": float(fp), "fn": float(fn), "tn": float(tn)},
    }


def realised_performance(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """ROC AUC, recall, precision, Brier score and calibration on labelled customers."""
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    predicted = (scores >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    return {
        "labelled": int(len(labels)),
        "churn_rate": float(labels.mean()),
        "roc_auc": float(roc_auc_score(labels, scores)) if both else None,
        "recall": float(recall_score(labels, predicted, zero_division=0)) if tp + fn else None,
        "precision": float(precision_score(labels, predicted, zero_division=0))
        if tp + fp
        else None,
        "brier": float(brier_score_loss(labels, scores)),
        "calibration": {
            "mean_score": float(scores.mean()),
            "churn_rate": float(labels.mean()),
            "difference": float(scores.mean() - labels.mean()),
        },
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": int(len(labels) - tp - fp - fn)},
    }
