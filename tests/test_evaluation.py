import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import f1_score, precision_recall_curve, roc_curve

from churnlab.errors import ChurnlabError
from churnlab.evaluation import (
    calibration_points,
    check_gates,
    choose_threshold,
    evaluate_scores,
    plot_tables,
    precision_recall_points,
    roc_points,
    top_fraction_stats,
)

RNG = np.random.default_rng(5)
LABELS = (RNG.random(400) < 0.3).astype(int)
SCORES = np.clip(LABELS * 0.3 + RNG.random(400) * 0.7, 0, 1).round(3)
COSTS = {"cost_missed_churner": 10.0, "cost_wasted_offer": 1.0}


def brute_force(objective):
    candidates = np.unique(SCORES)
    values = [objective((SCORES >= t).astype(int)) for t in candidates]
    best = max(values)
    return max(t for t, v in zip(candidates, values, strict=True) if v == best)


def test_max_f1_threshold_matches_brute_force():
    expected = brute_force(lambda predicted: f1_score(LABELS, predicted))
    assert choose_threshold(LABELS, SCORES, "max_f1") == expected


def test_cost_threshold_matches_brute_force():
    def negative_cost(predicted):
        missed = ((predicted == 0) & (LABELS == 1)).sum()
        wasted = ((predicted == 1) & (LABELS == 0)).sum()
        return -(10.0 * missed + 1.0 * wasted)

    assert choose_threshold(LABELS, SCORES, "cost", **COSTS) == brute_force(negative_cost)


def test_an_unknown_rule_or_a_bad_cost_is_named():
    with pytest.raises(ChurnlabError, match="evaluate.threshold_rule: 'max_auc'"):
        choose_threshold(LABELS, SCORES, "max_auc")
    with pytest.raises(ChurnlabError, match="evaluate.cost_wasted_offer"):
        choose_threshold(LABELS, SCORES, "cost", cost_missed_churner=1, cost_wasted_offer="cheap")


def test_top_decile_lift_and_capture():
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    scores = np.where(labels == 1, 0.9, 0.1) + np.arange(100) * 1e-4
    stats = top_fraction_stats(labels, scores, 0.1)
    assert stats["precision"] == 1.0
    assert stats["lift"] == pytest.approx(5.0)
    assert stats["capture_rate"] == pytest.approx(0.5)


def test_metrics_against_baseline_and_gates():
    metrics = evaluate_scores(LABELS, SCORES, LABELS, 0.5, 0.1, **COSTS)
    assert metrics["baseline"]["roc_auc"] == 0.5 and metrics["baseline"]["recall"] == 0.0
    assert metrics["roc_auc"] > 0.7 and metrics["brier_skill"] > 0
    confusion = metrics["confusion"]
    assert sum(confusion.values()) == len(LABELS)
    assert metrics["cost"]["model"] == 10 * confusion["fn"] + confusion["fp"]
    assert check_gates(metrics, {"min_roc_auc": 0.5}) == []
    missed = check_gates(metrics, {"min_roc_auc": 0.99})
    assert len(missed) == 1
    assert missed[0].startswith(
        f"quality gate min_roc_auc missed: roc_auc = {metrics['roc_auc']:.4f} is below 0.99"
    )
    with pytest.raises(ChurnlabError, match=r"unknown gate\(s\) \['min_auc'\]"):
        check_gates(metrics, {"min_auc": 0.5})


def test_plot_tables_have_the_columns_dvc_plots_reads():
    tables = plot_tables(LABELS, SCORES, 0.5)
    assert list(tables["roc"].columns) == ["fpr", "tpr"]
    assert list(tables["gains"].columns) == ["customers_contacted", "churners_captured", "random"]
    assert tables["gains"]["churners_captured"].iloc[-1] == 1.0
    assert len(tables["confusion"]) == len(LABELS)


def _score_sets():
    """Scores with many ties, without ties, few rows, a constant score, one class only."""
    rng = np.random.default_rng(11)
    for rows, rounding, rate in [(400, 3, 0.3), (400, 1, 0.3), (1409, 12, 0.27), (7, 2, 0.5)]:
        labels = (rng.random(rows) < rate).astype(int)
        labels[:2] = [0, 1]
        scores = np.clip(labels * 0.25 + rng.random(rows) * 0.75, 0, 1).round(rounding)
        yield labels, scores
    yield np.array([0, 1, 0, 1, 1]), np.full(5, 0.4)
    yield np.zeros(6, dtype=int), np.linspace(0, 1, 6)
    yield np.ones(6, dtype=int), np.linspace(0, 1, 6)


@pytest.mark.filterwarnings("ignore")  # scikit-learn warns about a class absent
def test_the_curves_are_exactly_those_of_scikit_learn():
    # the report draws them without importing scikit-learn: same floats, bit for bit, so
    # the evaluate stage's plot files and the report's pages keep their bytes
    for labels, scores in _score_sets():
        for ours, theirs in [
            (roc_points(labels, scores), roc_curve(labels, scores, drop_intermediate=True)[:2]),
            (
                precision_recall_points(labels, scores, drop_intermediate=True),
                precision_recall_curve(labels, scores, drop_intermediate=True)[:2],
            ),
            (
                precision_recall_points(labels, scores),
                precision_recall_curve(labels, scores)[:2],
            ),
            (
                calibration_points(labels, scores, 10),
                calibration_curve(labels, scores, n_bins=10, strategy="quantile"),
            ),
        ]:
            for mine, reference in zip(ours, theirs, strict=True):
                np.testing.assert_array_equal(mine, reference)
