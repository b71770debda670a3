"""Bootstrap intervals of the report's headline metrics, against scikit-learn's metrics."""

import numpy as np
import pytest
from report_tables import scored_customers
from sklearn.metrics import f1_score, recall_score, roc_auc_score

from churnlab.errors import ChurnlabError
from churnlab.evaluation import classification_metrics
from churnlab.report.bootstrap import bootstrap_intervals


@pytest.fixture
def scored():
    return scored_customers()


def test_bootstrap_intervals_hold_the_metric_and_are_seeded(scored):
    _, labels, scores = scored
    first = bootstrap_intervals(labels, scores, 0.5, 0.1, 200, seed=1)
    assert first["roc_auc"]["value"] == pytest.approx(roc_auc_score(labels, scores))
    assert first["f1"]["value"] == pytest.approx(f1_score(labels, scores >= 0.5))
    assert first["recall"]["value"] == pytest.approx(recall_score(labels, scores >= 0.5))
    for interval in first.values():
        assert interval["low"] <= interval["value"] <= interval["high"]
        assert interval["low"] < interval["high"]
    assert bootstrap_intervals(labels, scores, 0.5, 0.1, 200, seed=1) == first
    assert bootstrap_intervals(labels, scores, 0.5, 0.1, 200, seed=2) != first


def test_the_intervals_agree_with_a_plain_bootstrap_of_sklearn_metrics(scored):
    _, labels, scores = scored
    ours = bootstrap_intervals(labels, scores, 0.5, 0.1, 1500, seed=5)
    rng = np.random.default_rng(6)
    plain = {"roc_auc": [], "recall": [], "accuracy": []}
    for _ in range(1500):
        rows = rng.integers(0, len(labels), len(labels))
        flagged = scores[rows] >= 0.5
        plain["roc_auc"].append(roc_auc_score(labels[rows], scores[rows]))
        plain["recall"].append(flagged[labels[rows] == 1].mean())
        plain["accuracy"].append(np.mean(labels[rows] == flagged))
    for name, values in plain.items():
        low, high = np.quantile(values, [0.025, 0.975])
        assert ours[name]["low"] == pytest.approx(low, abs=0.01), name
        assert ours[name]["high"] == pytest.approx(high, abs=0.01), name


def test_ties_and_the_top_fraction_count_like_the_evaluation():
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0] * 30)
    scores = np.round(np.linspace(0.9, 0.1, 300), 1)  # many ties
    ours = bootstrap_intervals(labels, scores, 0.5, 0.1, 50, seed=1)
    expected = classification_metrics(labels, scores, 0.5, 0.1)
    for name in ("roc_auc", "top_precision", "top_capture_rate", "precision", "recall", "f1"):
        assert ours[name]["value"] == pytest.approx(expected[name]), name


def test_more_customers_give_narrower_intervals(scored):
    _, labels, scores = scored
    small = bootstrap_intervals(labels[:80], scores[:80], 0.5, 0.1, 300, seed=1)["roc_auc"]
    large = bootstrap_intervals(labels, scores, 0.5, 0.1, 300, seed=1)["roc_auc"]
    assert large["high"] - large["low"] < small["high"] - small["low"]


@pytest.mark.parametrize(
    "samples, confidence, message",
    [(5, 0.95, "bootstrap_samples"), (100, 1.5, "report.confidence")],
)
def test_bad_bootstrap_params_are_named(scored, samples, confidence, message):
    _, labels, scores = scored
    with pytest.raises(ChurnlabError, match=message):
        bootstrap_intervals(labels, scores, 0.5, 0.1, samples, seed=1, confidence=confidence)
