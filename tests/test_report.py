"""The stakeholder report's numbers and pages, on small tables."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from churnlab.errors import ChurnlabError
from churnlab.evaluation import plot_tables
from churnlab.pipeline.pages import CONTENT_SECURITY_POLICY
from churnlab.report import (
    bootstrap_intervals,
    business_summary,
    compare_with_champion,
    figures,
    render_pages,
    segment_gaps,
    segment_labels,
    segment_performance,
    sensitive_columns,
    sensitive_inputs,
)


@pytest.fixture
def scored():
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
    from churnlab.evaluation import classification_metrics

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


def test_segments_by_bands_and_by_named_values():
    bands = segment_labels(
        pd.Series([0, 12, 13, 48, 49, None]), {"column": "m", "bins": [12, 48]}, "where"
    )
    assert list(bands) == ["up to 12", "up to 12", "12 to 48", "12 to 48", "over 48", "missing"]
    named = segment_labels(
        pd.Series(["0", "1"]), {"column": "f", "names": {0: "no", 1: "yes"}}, "where"
    )
    assert list(named) == ["no", "yes"]
    with pytest.raises(ChurnlabError, match="where.bins"):
        segment_labels(pd.Series([1]), {"column": "m", "bins": [5, 2]}, "where")


def test_segment_performance_is_computed_per_group(scored):
    table, labels, scores = scored
    segments = [
        {"column": "plan", "label": "Plan"},
        {"column": "months", "label": "Months", "bins": [12, 24]},
    ]
    performance = segment_performance(table, labels, scores, 0.5, segments, min_size=50)
    monthly = performance[
        (performance["segment"] == "Plan") & (performance["group"] == "monthly")
    ].iloc[0]
    member = table["plan"].to_numpy() == "monthly"
    assert monthly["customers"] == member.sum()
    assert monthly["precision"] == pytest.approx(
        precision_score(labels[member], scores[member] >= 0.5)
    )
    assert monthly["roc_auc"] == pytest.approx(roc_auc_score(labels[member], scores[member]))
    months = performance[performance["segment"] == "Months"]
    assert list(months["group"]) == ["up to 12", "12 to 24", "over 24"]
    assert months["customers"].sum() == len(table)
    gaps = segment_gaps(performance)
    assert {g["segment"] for g in gaps} == {"Plan", "Months"}
    assert all(g["best"] >= g["worst"] for g in gaps)


def test_a_segment_naming_a_missing_column_is_an_error(scored):
    table, labels, scores = scored
    with pytest.raises(ChurnlabError, match=r"report.segments\[0\].column: 'Contract'"):
        segment_performance(table, labels, scores, 0.5, [{"column": "Contract"}], 50)


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


def test_the_business_summary_comes_from_the_metrics_and_costs():
    summary = business_summary(METRICS, EVALUATE)
    assert summary["flagged"] == 350 and summary["flagged_share"] == 0.35
    assert summary["leavers"] == 250 and summary["caught"] == 193
    assert summary["saving_per_1000"] == pytest.approx(42200.0)


def test_what_changed_against_the_champion():
    current = {"metrics": METRICS, "params": {"train": {"family": "gb"}}, "data": {"sha256": "a"}}
    assert compare_with_champion(current, None)["status"] == "none"
    assert compare_with_champion(current, current)["status"] == "identical"
    worse = {**METRICS, "roc_auc": 0.80, "brier": 0.150}
    champion = {
        "metrics": worse,
        "params": {"train": {"family": "lr"}},
        "data": {"sha256": "b"},
        "commit": "abc",
    }
    change = compare_with_champion(current, champion)
    rows = {r["metric"]: r for r in change["metrics"]}
    assert rows["roc_auc"]["delta"] == pytest.approx(0.04)
    assert rows["roc_auc"]["direction"] == "better"
    assert rows["brier"]["direction"] == "better"  # lower Brier is better
    assert change["params"] == [{"key": "train.family", "champion": "lr", "current": "gb"}]
    assert change["same_data"] is False and change["status"] == "different"


PAYLOAD = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">'


def page_context(scored, group_name=PAYLOAD, currency="$"):
    table, labels, scores = scored
    table = table.assign(plan=np.where(table["plan"] == "monthly", group_name, "yearly"))
    performance = segment_performance(
        table, labels, scores, 0.5, [{"column": "plan", "label": "Plan"}], 50
    )
    card = {
        "intended_use": "use",
        "out_of_scope": ["x"],
        "limitations": ["y"],
        "ethical_considerations": ["z"],
    }
    return {
        "report": {
            "title": "Churn",
            "purpose": "Purpose.",
            "currency": currency,
            "bootstrap_samples": 100,
            "confidence": 0.95,
            "seed": 1,
            "min_segment_size": 50,
            "model_card": card,
        },
        "business": business_summary(METRICS, EVALUATE),
        "metrics": METRICS,
        "cv": {"roc_auc_mean": 0.83, "roc_auc_std": 0.01, "folds": 5},
        "intervals": bootstrap_intervals(labels, scores, 0.5, 0.1, 100, seed=1),
        "metric_labels": {
            "roc_auc": "ROC AUC",
            "top_precision": "tp",
            "top_capture_rate": "tc",
            "precision": "p",
            "recall": "r",
            "f1": "f1",
            "accuracy": "a",
            "brier": "b",
        },
        "segments": performance.to_dict("records"),
        "gaps": segment_gaps(performance),
        "sensitive": sensitive_inputs(["plan"], ["months", "plan"], []),
        "calibration_gap": 0.05,
        "comparison": compare_with_champion({"metrics": METRICS, "params": {}, "data": {}}, None),
        "champion_file": "metrics/champion.json",
        "data": {
            "source": group_name,
            "sha256": None,
            "rows": 400,
            "train_rows": 300,
            "test_rows": 100,
            "churn_rate_train": 0.2,
            "churn_rate_test": 0.2,
            "numeric": ["months"],
            "categorical": ["plan"],
        },
        "model": {"family": "gradient_boosting", "cv_folds": 5},
        "notebooks": [{"stage": "explore", "title": "Explore", "href": "notebooks/x.html"}],
        "figures": figures(labels, scores, 0.5, 0.1, performance, plot_tables(labels, scores, 0.5)),
    }


def test_a_payload_in_the_data_is_escaped_in_every_page(scored):
    pages = render_pages(page_context(scored))
    for name, html in pages.items():
        assert "<script>document" not in html, name
        assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in html, name
        assert "<script" not in html.lower(), name
        policy = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        assert policy in html, name


SEGMENTS = [{"column": "age_band", "label": "Age band"}, {"column": "sex", "label": "Sex"}]


@pytest.mark.parametrize(
    ("sensitive", "inputs", "expected"),
    [
        (
            ["age_band", "sex"],
            ["age_band", "sex", "months"],
            [
                "Age band and Sex are inputs of the model; they are kept so that their effect "
                "can be measured here, and the segment table shows how the model treats each "
                "group. Dropping them does not by itself remove their effect, since other "
                "attributes correlate with them."
            ],
        ),
        (
            ["sex", "region"],
            ["region", "months"],
            [
                "Region is an input of the model. Dropping it does not by itself remove its "
                "effect, since other attributes correlate with it.",
                "Sex is not an input of the model, but other attributes may correlate with it; "
                "the segment table shows how the model treats each group.",
            ],
        ),
    ],
    ids=["used-and-shown", "one-used-one-not"],
)
def test_the_sentences_on_sensitive_columns_follow_what_the_model_uses(sensitive, inputs, expected):
    assert sensitive_inputs(sensitive, inputs, SEGMENTS) == expected


def test_no_sensitive_column_is_said_and_a_wrong_one_is_an_error():
    assert "report.sensitive_columns" in sensitive_inputs([], ["months"], SEGMENTS)[0]
    assert sensitive_columns({"sensitive_columns": []}, ["sex"]) == []
    with pytest.raises(ChurnlabError, match=r"\['Sex'\] are not columns of the data"):
        sensitive_columns({"sensitive_columns": ["Sex"]}, ["sex", "months"])
    with pytest.raises(ChurnlabError, match="expected a list of column names"):
        sensitive_columns({"sensitive_columns": "sex"}, ["sex"])


def test_the_pages_use_the_currency_and_sensitive_sentences_of_params(scored):
    pages = render_pages(page_context(scored, group_name="monthly", currency="EUR "))
    assert "EUR 42,200" in pages["index.html"] and "$" not in pages["index.html"]
    assert "Plan is an input of the model" in pages["model_card.html"]
