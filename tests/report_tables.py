"""Small tables shared by the report's tests: scored customers and a model's test metrics."""

import numpy as np
import pandas as pd


def scored_customers() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """400 customers with segment columns, their labels, and scores a little higher for leavers."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(0.15 * labels + rng.uniform(0, 0.85, 400), 0, 1)
    table = pd.DataFrame(
        {
            "plan": np.where(np.arange(400) % 3 == 0, "monthly", "yearly"),
            "months": np.arange(400) % 60,
            "flag": np.where(np.arange(400) % 2 == 0, "0", "1"),
        }
    )
    return table, labels, scores


METRICS = {
    "threshold": 0.3,
    "rows": 1000,
    "churn_rate": 0.25,
    "roc_auc": 0.84,
    "pr_auc": 0.65,
    "top_precision": 0.7,
    "top_capture_rate": 0.28,
    "top_lift": 2.8,
    "precision": 0.55,
    "recall": 0.77,
    "f1": 0.64,
    "accuracy": 0.77,
    "brier": 0.136,
    "confusion": {"tp": 193, "fp": 157, "fn": 57, "tn": 593},
    "cost": {"model": 32800.0, "no_action": 75000.0, "saving": 42200.0},
    "baseline": {"roc_auc": 0.5, "accuracy": 0.75},
}
EVALUATE = {
    "top_fraction": 0.1,
    "threshold_rule": "max_f1",
    "cost_missed_churner": 300.0,
    "cost_wasted_offer": 100.0,
}
