"""Monitoring statistics on small tables with known answers, each computed independently."""

import math

import numpy as np
import pandas as pd
import pytest
from small_schema import SCHEMA

from churnlab.data import TableSpec
from churnlab.monitoring import drift
from churnlab.monitoring.performance import estimated_performance, realised_performance
from churnlab.monitoring.quality import check_quality


def test_psi_by_hand():
    # (0.4 - 0.5) ln(0.4 / 0.5) + (0.6 - 0.5) ln(0.6 / 0.5)
    expected = -0.1 * math.log(0.8) + 0.1 * math.log(1.2)
    assert drift.psi(np.array([0.5, 0.5]), np.array([0.4, 0.6])) == pytest.approx(expected)
    assert drift.psi(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0


def test_psi_on_reference_deciles():
    reference = np.arange(1, 101, dtype=float)  # deciles at 10.9, 20.8, ...: 10 values a bin
    month = np.concatenate([np.full(50, 5.0), np.full(50, 95.0)])  # half in the first bin
    found = drift.numeric_statistics(drift.NumericReference.of(reference), month)
    r = 0.1
    # bins 1 and 10 hold half each, the 8 others are floored at 1e-4
    expected = 2 * (0.5 - r) * math.log(0.5 / r) + 8 * (1e-4 - r) * math.log(1e-4 / r)
    assert found["psi"] == pytest.approx(expected, rel=1e-9)


def _entropy(p):
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return -np.sum(p * np.log2(p))


@pytest.mark.parametrize(
    "reference,month",
    [({"a": 1, "b": 1}, {"a": 1}), ({"a": 30, "b": 10}, {"a": 10, "b": 30}), ({"a": 5}, {"b": 5})],
)
def test_jensen_shannon_from_entropies(reference, month):
    found = drift.categorical_statistics(pd.Series(reference), pd.Series(month))
    categories = sorted(set(reference) | set(month))
    p = np.array([reference.get(c, 0) for c in categories], float)
    q = np.array([month.get(c, 0) for c in categories], float)
    p, q = p / p.sum(), q / q.sum()
    divergence = _entropy((p + q) / 2) - (_entropy(p) + _entropy(q)) / 2
    assert found["jensen_shannon"] == pytest.approx(math.sqrt(divergence))


def test_chi_square_by_hand():
    found = drift.categorical_statistics(
        pd.Series({"a": 20, "b": 10}), pd.Series({"a": 10, "b": 20})
    )
    # every expected count is 15: 4 cells of (5 ** 2) / 15
    assert found["chi2"] == pytest.approx(4 * 25 / 15)
    # chi2 with 1 df: P(Z^2 > x) = erfc(sqrt(x / 2))
    assert found["p_value"] == pytest.approx(math.erfc(math.sqrt(found["chi2"] / 2)))


def test_wasserstein_by_sorting():
    rng = np.random.default_rng(0)
    reference = rng.normal(10, 2, 400).round(1)
    month = rng.normal(11, 2, 400).round(1)
    found = drift.numeric_statistics(drift.NumericReference.of(reference), month)
    by_sorting = np.mean(np.abs(np.sort(reference) - np.sort(month)))  # equal sizes
    assert found["wasserstein"] == pytest.approx(by_sorting / np.std(reference))


def test_blank_values_are_a_bin_of_their_own():
    reference = drift.NumericReference.of(np.arange(100, dtype=float))
    blank = drift.numeric_statistics(reference, np.full(50, np.nan))
    assert blank["wasserstein"] is None
    assert blank["psi"] > 5  # every customer in a bin the reference does not have


def _null_rate(statistic, draw, threshold, trials, rng):
    return np.mean([statistic(draw(rng)) > threshold for _ in range(trials)])


@pytest.mark.parametrize("n", [500, 20_000])
def test_thresholds_hold_their_false_alarm_rate_for_any_month_size(n):
    """Months drawn from the reference's population exceed the threshold about as often as
    the quantile says, for small and large months (not a single fixed constant)."""
    rng = np.random.default_rng(1)
    population = rng.gamma(2.0, 30.0, 200_000).round(2)
    reference_values = rng.choice(population, 3000)
    reference = drift.NumericReference.of(reference_values)
    limits = drift.calibrate_numeric(reference, n, 400, 0.9, np.random.default_rng(2))
    wasserstein = _null_rate(
        lambda m: drift.numeric_statistics(reference, m)["wasserstein"],
        lambda r: r.choice(population, n),
        limits["wasserstein"],
        200,
        rng,
    )
    assert wasserstein <= 0.18  # 0.10 expected; 200 trials
    counts = pd.Series({"a": 1500, "b": 1000, "c": 500})
    shares = np.array([0.5, 1 / 3, 1 / 6])
    limits = drift.calibrate_categorical(counts, n, 400, 0.9, np.random.default_rng(3))
    js = _null_rate(
        lambda m: drift.categorical_statistics(counts, m)["jensen_shannon"],
        lambda r: pd.Series(r.multinomial(n, shares), index=["a", "b", "c"]),
        limits["jensen_shannon"],
        200,
        rng,
    )
    assert js <= 0.18


def test_thresholds_shrink_with_the_month_size():
    reference = drift.NumericReference.of(np.random.default_rng(4).normal(0, 1, 5000))
    small = drift.calibrate_numeric(reference, 500, 300, 0.99, np.random.default_rng(5))
    large = drift.calibrate_numeric(reference, 50_000, 300, 0.99, np.random.default_rng(5))
    assert large["wasserstein"] < small["wasserstein"] / 1.5
    assert large["psi"] < small["psi"] / 2


def test_estimated_performance_is_the_expected_confusion_matrix():
    scores = np.array([0.9, 0.6, 0.3, 0.1])
    found = estimated_performance(scores, 0.5, 0.95)
    assert found["confusion"] == pytest.approx({"tp": 1.5, "fp": 0.5, "fn": 0.4, "tn": 1.6})
    assert found["precision"] == pytest.approx(1.5 / 2)
    assert found["recall"] == pytest.approx(1.5 / 1.9)
    low, high = found["recall_interval"]
    assert low < found["recall"] < high


def test_estimated_performance_matches_labels_drawn_from_calibrated_scores():
    rng = np.random.default_rng(6)
    scores = rng.beta(1, 3, 50_000)
    labels = (rng.random(len(scores)) < scores).astype(int)
    estimated = estimated_performance(scores, 0.3, 0.95)
    realised = realised_performance(labels, scores, 0.3)
    assert estimated["recall"] == pytest.approx(realised["recall"], abs=0.01)
    assert estimated["precision"] == pytest.approx(realised["precision"], abs=0.01)
    assert estimated["recall_interval"][0] <= realised["recall"] <= estimated["recall_interval"][1]


def test_realised_performance_by_hand():
    found = realised_performance(
        np.array([1, 1, 0, 0, 1]), np.array([0.9, 0.2, 0.7, 0.1, 0.6]), 0.5
    )
    assert found["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert found["recall"] == pytest.approx(2 / 3)
    assert found["precision"] == pytest.approx(2 / 3)
    # pairs (leaver, stayer) ranked right: 0.9 > both, 0.6 and 0.2 > 0.1 only: 4 of 6
    assert found["roc_auc"] == pytest.approx(4 / 6)
    assert found["calibration"]["difference"] == pytest.approx(2.5 / 5 - 3 / 5)


def test_quality_counts_violations_by_column_and_rule_without_raising():
    spec = TableSpec.from_params(SCHEMA)
    raw = pd.DataFrame(
        {
            "cust": ["a", "b", "b", "c"],
            "months": ["1", "x", "200", "y"],
            "spend": ["", "3", "-1", "2"],
            "plan": ["basic", "gold", "", "pro"],
        },
        dtype=str,
    )
    found = check_quality(raw, spec)
    counts = {(v["column"], v["rule"]): v["count"] for v in found["violations"]}
    assert counts == {
        ("cust", "field_uniqueness"): 2,
        ("months", "is a number"): 2,
        ("months", "less_than_or_equal_to(100)"): 1,
        ("plan", "isin(['basic', 'pro'])"): 1,
        ("plan", "not_nullable"): 1,
        ("region", "column present"): 1,
        ("spend", "greater_than_or_equal_to(0)"): 1,
    }
    assert found["missing_columns"] == ["region"]
    assert not found["passed"]
    clean = raw.assign(months="5", plan="pro", cust=["a", "b", "c", "d"], region="north")
    clean["spend"] = "1"
    assert check_quality(clean, spec) == {"passed": True, "violations": [], "missing_columns": []}


def test_the_batched_calibration_statistics_equal_scipys():
    """Calibration computes hundreds of draws at once; each equals scipy's own value."""
    from scipy.stats import chi2_contingency, wasserstein_distance

    rng = np.random.default_rng(7)
    support = np.sort(rng.choice(np.arange(1000) / 7, 30, replace=False))
    a, b = rng.integers(0, 20, (5, 30)), rng.integers(0, 20, (5, 30))
    b[:, 3] = a[:, 3] = 0  # a category (or value) empty on both sides
    batched = drift.wasserstein_on_support(support, a, b)
    chi2 = drift.chi2_statistics(a, b)
    for i in range(5):
        assert batched[i] == pytest.approx(wasserstein_distance(support, support, a[i], b[i]))
        seen = (a[i] + b[i]) > 0
        table = np.vstack([a[i][seen], b[i][seen]])
        assert chi2[i] == pytest.approx(chi2_contingency(table, correction=False).statistic)
