"""Evaluation on held-out data: metrics, the decision threshold, plot data and quality gates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlab.errors import ChurnlabError

# scikit-learn is imported inside the functions that score (a second of start-up): the report
# stage only draws curves, computed here with numpy exactly as scikit-learn computes them
# (tests/test_evaluation.py compares the two).

# imported by a stage's kernel while its runner prepares (churnlab.model.WARM_UP)
WARM_UP = ("sklearn.metrics",)

THRESHOLD_RULES = ("max_f1", "cost")
# The numbers a person compares experiments on, the only ones DVC reads (``dvc exp show``,
# ``dvc metrics diff``): ranking, recall and precision at the chosen threshold, the expected
# cost, and the Brier score because tracking may promote on it. Every other number stays in
# the test metrics file, which DVC does not read, so the table fits a terminal.
HEADLINE_METRICS = ("roc_auc", "pr_auc", "recall", "precision", "brier", "cost.model")


def choose_threshold(
    labels: np.ndarray,
    scores: np.ndarray,
    rule: str,
    cost_missed_churner: float | None = None,
    cost_wasted_offer: float | None = None,
) -> float:
    """The decision threshold by the rule in params, chosen on out-of-fold training scores.

    ``max_f1`` maximises F1; ``cost`` minimises
    ``cost_missed_churner * FN + cost_wasted_offer * FP``. Ties go to the highest threshold.
    """
    costs = {"cost_missed_churner": cost_missed_churner, "cost_wasted_offer": cost_wasted_offer}
    if rule not in THRESHOLD_RULES:
        raise ChurnlabError(
            f"params/evaluate.yaml evaluate.threshold_rule: '{rule}' is not one of "
            f"{list(THRESHOLD_RULES)}"
        )
    labels = np.asarray(labels)
    candidates = np.unique(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # for each candidate t, predicted positive = score >= t
    flagged = np.searchsorted(-sorted_scores, -candidates, side="right")
    true_pos = np.concatenate([[0], np.cumsum(sorted_labels)])[flagged]
    false_pos = flagged - true_pos
    false_neg = labels.sum() - true_pos
    if rule == "max_f1":
        objective = 2 * true_pos / np.maximum(2 * true_pos + false_pos + false_neg, 1)
    else:
        for key, value in costs.items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ChurnlabError(
                    f"params/evaluate.yaml evaluate.{key}: expected a number >= 0, found {value!r}"
                )
        objective = -(cost_missed_churner * false_neg + cost_wasted_offer * false_pos)
    best = np.flatnonzero(objective == objective.max())
    return float(candidates[best[-1]])


def top_fraction_stats(labels: np.ndarray, scores: np.ndarray, fraction: float) -> dict:
    """Lift and capture rate among the ``fraction`` of customers with the highest scores."""
    count = max(1, int(round(fraction * len(scores))))
    top = np.argsort(-scores, kind="stable")[:count]
    rate_top = labels[top].mean()
    rate_all = labels.mean()
    return {
        "lift": float(rate_top / rate_all),
        "capture_rate": float(labels[top].sum() / labels.sum()),
        "precision": float(rate_top),
    }


def classification_metrics(labels, scores, threshold: float, top_fraction: float) -> dict:
    """Every headline metric of one set of scores at one threshold."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = np.asarray(labels)
    predicted = (scores >= threshold).astype(int)
    top = top_fraction_stats(labels, scores, top_fraction)
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "brier": float(brier_score_loss(labels, scores)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "top_lift": top["lift"],
        "top_capture_rate": top["capture_rate"],
        "top_precision": top["precision"],
    }


def baseline_metrics(train_labels, labels, top_fraction: float) -> dict:
    """The majority-class baseline: every customer gets the training churn rate as score."""
    rate = float(np.mean(train_labels))
    scores = np.full(len(labels), rate)
    predicted_positive = rate >= 0.5
    metrics = classification_metrics(
        labels, scores, 0.5 if predicted_positive else 1.0, top_fraction
    )
    # a constant score ranks nobody: its top decile is a random decile
    metrics["top_lift"], metrics["top_capture_rate"] = 1.0, top_fraction
    metrics["top_precision"] = float(np.mean(labels))
    return metrics


def evaluate_scores(
    labels,
    scores,
    train_labels,
    threshold: float,
    top_fraction: float,
    cost_missed_churner: float,
    cost_wasted_offer: float,
) -> dict:
    """Model and baseline metrics, the confusion matrix and expected costs, as one dict."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels)
    model = classification_metrics(labels, scores, threshold, top_fraction)
    baseline = baseline_metrics(train_labels, labels, top_fraction)
    tn, fp, fn, tp = confusion_matrix(
        labels, (scores >= threshold).astype(int), labels=[0, 1]
    ).ravel()
    cost_model = cost_missed_churner * fn + cost_wasted_offer * fp
    cost_nobody = cost_missed_churner * labels.sum()
    return {
        "threshold": threshold,
        "rows": int(len(labels)),
        "churn_rate": float(labels.mean()),
        **model,
        "brier_skill": float(1 - model["brier"] / baseline["brier"]),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "cost": {
            "model": float(cost_model),
            "no_action": float(cost_nobody),
            "saving": float(cost_nobody - cost_model),
        },
        "baseline": baseline,
    }


def headline_metrics(metrics: dict) -> dict:
    """The ``HEADLINE_METRICS`` of ``evaluate_scores``' result, nested as they are there."""
    headline: dict = {}
    for dotted in HEADLINE_METRICS:
        *parents, last = dotted.split(".")
        source, target = metrics, headline
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        target[last] = source[last]
    return headline


GATES = {
    "min_roc_auc": "roc_auc",
    "min_pr_auc": "pr_auc",
    "min_recall": "recall",
    "min_precision": "precision",
    "min_f1": "f1",
    "min_accuracy": "accuracy",
    "min_brier_skill": "brier_skill",
    "min_top_lift": "top_lift",
}


def check_gates(metrics: dict, gates: dict) -> list[str]:
    """Return one message per missed gate (empty when all pass).

    Raises:
        ChurnlabError: a gate name that is not known.
    """
    unknown = sorted(set(gates) - set(GATES))
    if unknown:
        raise ChurnlabError(
            f"params/evaluate.yaml evaluate.gates: unknown gate(s) {unknown}; "
            f"known: {sorted(GATES)}"
        )
    missed = []
    for gate, threshold in sorted(gates.items()):
        value = metrics[GATES[gate]]
        if not value >= threshold:
            missed.append(
                f"quality gate {gate} missed: {GATES[gate]} = {value:.4f} is below "
                f"{threshold} (params/evaluate.yaml evaluate.gates.{gate})"
            )
    return missed


def _round(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(6)


def _counts_at_thresholds(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives when flagging scores >= each distinct score, highest first
    (scikit-learn's ``confusion_matrix_at_thresholds``, without sample weights)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")  # order within ties changes no count below
    ordered = scores[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    true_pos = np.cumsum((labels[order] == 1).astype(np.float64))[last_of_each]
    false_pos = 1 + last_of_each.astype(np.float64) - true_pos
    return false_pos, true_pos


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates, as ``sklearn.metrics.roc_curve`` (drop_intermediate)."""
    false_pos, true_pos = _counts_at_thresholds(labels, scores)
    if len(false_pos) > 2:  # keep the corners: where either count changes its slope
        kept = np.flatnonzero(
            np.r_[True, np.logical_or(np.diff(false_pos, 2), np.diff(true_pos, 2)), True]
        )
        false_pos, true_pos = false_pos[kept], true_pos[kept]
    false_pos, true_pos = np.r_[0.0, false_pos], np.r_[0.0, true_pos]
    return _rate(false_pos), _rate(true_pos)


def _rate(counts: np.ndarray) -> np.ndarray:
    """Counts as a share of the last; all NaN without one (a class absent, as scikit-learn)."""
    return counts / counts[-1] if counts[-1] > 0 else np.full(counts.shape, np.nan)


def precision_recall_points(
    labels, scores, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall, as ``sklearn.metrics.precision_recall_curve`` gives them."""
    false_pos, true_pos = _counts_at_thresholds(labels, scores)
    if drop_intermediate and len(false_pos) > 2:  # first and last point of each recall
        kept = np.flatnonzero(
            np.r_[True, np.logical_or(np.diff(true_pos[:-1]), np.diff(true_pos[1:])), True]
        )
        false_pos, true_pos = false_pos[kept], true_pos[kept]
    flagged = true_pos + false_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(flagged != 0, np.divide(true_pos, flagged), 0.0)
    recall = true_pos / true_pos[-1] if true_pos[-1] != 0 else np.ones(true_pos.shape)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _calibration_bins(labels, scores, bins: int) -> tuple[np.ndarray, ...]:
    """Per non-empty quantile bin of the scores: observed rate, mean score, customers."""
    labels, scores = np.asarray(labels) == 1, np.asarray(scores, dtype=float)
    edges = np.percentile(scores, np.linspace(0, 1, bins + 1) * 100)
    bin_of = np.searchsorted(edges[1:-1], scores)
    score_sums = np.bincount(bin_of, weights=scores, minlength=bins)
    leavers = np.bincount(bin_of, weights=labels, minlength=bins)
    customers = np.bincount(bin_of, minlength=bins)
    used = customers != 0
    customers = customers[used]
    return leavers[used] / customers, score_sums[used] / customers, customers


def calibration_points(labels, scores, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed rate and mean score per quantile bin, as ``sklearn.calibration.
    calibration_curve(strategy="quantile")``."""
    observed, predicted, _ = _calibration_bins(labels, scores, bins)
    return observed, predicted


def expected_calibration_error(labels, scores, bins: int = 10) -> float:
    """Mean |churn rate - mean score| over the quantile bins of ``calibration_points``,
    weighted by the bins' customers."""
    observed, predicted, customers = _calibration_bins(labels, scores, bins)
    return float(np.sum(customers * np.abs(observed - predicted)) / customers.sum())


def plot_tables(labels, scores, threshold: float, bins: int = 10) -> dict[str, pd.DataFrame]:
    """Data for the plots ``dvc plots`` draws: ROC, PR, calibration, gains, confusion."""
    labels = np.asarray(labels)
    fpr, tpr = roc_points(labels, scores)
    precision, recall = precision_recall_points(labels, scores, drop_intermediate=True)
    observed, predicted = calibration_points(labels, scores, bins)
    order = np.argsort(-scores, kind="stable")
    steps = np.linspace(0, 1, 101)
    counts = np.round(steps * len(labels)).astype(int)
    captured = np.concatenate([[0], np.cumsum(labels[order])])[counts] / labels.sum()
    predicted_labels = (scores >= threshold).astype(int)
    confusion = pd.DataFrame(
        {
            "actual": np.where(labels == 1, "churn", "stay"),
            "predicted": np.where(predicted_labels == 1, "churn", "stay"),
        }
    )
    return {
        "roc": _round(pd.DataFrame({"fpr": fpr, "tpr": tpr})),
        "precision_recall": _round(pd.DataFrame({"recall": recall, "precision": precision})),
        "calibration": _round(pd.DataFrame({"predicted": predicted, "observed": observed})),
        "gains": _round(
            pd.DataFrame(
                {"customers_contacted": steps, "churners_captured": captured, "random": steps}
            )
        ),
        "confusion": confusion,
    }


def permutation_importance(
    model, features: pd.DataFrame, labels, repeats: int, seed: int, batch_rows: int = 500_000
) -> tuple[np.ndarray, np.ndarray]:
    """Each column's drop in ROC AUC when shuffled: (mean, sd over ``repeats``).

    The numbers of scikit-learn's ``permutation_importance(scoring="roc_auc")`` with
    ``random_state=seed``, bit for bit (tests/test_model.py compares them): the same
    seed per column, the same shuffles, each repeat shuffling the column shuffled before.
    But the model scores each row on its own, so a shuffled copy's row that is the
    original row (its new value is the one it had: a third of the rows on the default
    data, most of them in two-valued columns) has the original row's score, and a row
    met again in a later repeat of the same column has the score it had there. Only the
    other rows are scored (on the default data about 51,000 of the 133,855 in 95 copies),
    in one call to the model (up to ``batch_rows`` rows at a time), not one per copy.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.utils._response import _get_response_values  # what the roc_auc scorer calls

    def respond(frame: pd.DataFrame) -> np.ndarray:
        scores, _ = _get_response_values(
            model, frame, response_method=("decision_function", "predict_proba")
        )
        return np.asarray(scores)

    labels = np.asarray(labels)
    count = len(features)
    column_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    baseline_scores = respond(features)
    baseline = roc_auc_score(labels, baseline_scores)
    # per column and repeat: the rows whose value changed, and where each one's new input
    # is among the rows to score (a row and a value met before are scored once)
    copies: list[tuple[np.ndarray, np.ndarray]] = []
    rows, sources, columns = [], [], []  # the rows to score: row, where its value is from
    for position in range(features.shape[1]):
        classes = _identical_values(features.iloc[:, position])
        random_state = np.random.RandomState(column_seed)
        order = np.arange(count)
        source = np.arange(count)  # the shuffled column's value i is the original's source[i]
        changed, taken_from = [], []
        for _ in range(repeats):
            random_state.shuffle(order)
            source = source[order]
            changed.append(np.flatnonzero(classes[source] != classes))
            taken_from.append(source[changed[-1]])
        every_row, every_source = np.concatenate(changed), np.concatenate(taken_from)
        keys = every_row * (classes.max() + 1) + classes[every_source]
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        offset = sum(len(r) for r in rows)
        rows.append(every_row[first])
        sources.append(every_source[first])
        columns.append(np.full(len(first), position))
        repeat_ends = np.cumsum([len(c) for c in changed])[:-1]
        copies += zip(changed, np.split(offset + inverse, repeat_ends), strict=True)
    rows_, sources_, columns_ = (np.concatenate(a) for a in (rows, sources, columns))
    scored = np.empty(len(rows_), dtype=baseline_scores.dtype)
    step = max(batch_rows, 1)
    for start in range(0, len(rows_), step):
        part = slice(start, start + step)
        frame = features.iloc[rows_[part]].reset_index(drop=True)
        for position in np.unique(columns_[part]):
            # the column's values taken from the original column: its dtype kept
            positions = rows_[part].copy()
            taken = columns_[part] == position
            positions[taken] = sources_[part][taken]
            frame[frame.columns[position]] = features.iloc[positions, position].reset_index(
                drop=True
            )
        scored[part] = respond(frame)
    drops = []
    for changed, where in copies:
        scores = baseline_scores.copy()
        scores[changed] = scored[where]
        drops.append(baseline - roc_auc_score(labels, scores))
    drops = np.array(drops).reshape(features.shape[1], repeats)
    return drops.mean(axis=1), drops.std(axis=1)


def _identical_values(column: pd.Series) -> np.ndarray:
    """A class per row: two rows share one only when their values are the same value,
    which the model cannot tell apart (floats by their bits, other values by type and
    equality); a value that cannot be compared is a class of its own."""
    values = column.to_numpy()
    if values.dtype.kind == "f":
        return np.unique(values.view(f"i{values.dtype.itemsize}"), return_inverse=True)[1]
    if values.dtype.kind in "iub":
        return np.unique(values, return_inverse=True)[1]
    classes = np.empty(len(values), dtype=np.int64)
    known: dict = {}
    for i, value in enumerate(column.astype(object).to_numpy()):
        try:
            classes[i] = known.setdefault((type(value), value), len(known))
        except TypeError:  # unhashable, or pd.NA met by an equal hash
            classes[i] = len(known)
            known[("row", i)] = classes[i]
    return classes


def feature_importance(
    model, features: pd.DataFrame, labels, repeats: int, max_rows: int, seed: int
) -> pd.DataFrame:
    """Permutation importance (drop in ROC AUC) on at most ``max_rows`` seeded rows."""
    if len(features) > max_rows:
        rows = np.random.default_rng(seed).choice(len(features), max_rows, replace=False)
        rows.sort()
        features, labels = features.iloc[rows], np.asarray(labels)[rows]
    mean, std = permutation_importance(model, features, labels, repeats, seed)
    table = pd.DataFrame(
        {
            "feature": features.columns,
            "importance": mean,
            "std": std,
        }
    )
    return _round(
        table.sort_values(["importance", "feature"], ascending=[False, True]).reset_index(drop=True)
    )
