"""The cycle's decision rule and promotion test on small pure cases, and the decision log's
bytes (churnlab.cycle.rule, churnlab.cycle.decisions)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churnlab.cycle.decisions import append_decision, decision_line, history_table, read_log
from churnlab.cycle.rule import (
    Evidence,
    RuleParams,
    decide,
    learnt_drift,
    paired_difference,
    promotion_verdict,
)
from churnlab.errors import ChurnlabError

PARAMS = RuleParams(
    realised_margin=0.05, estimated_margin=0.10, drifted_features=2, max_age_days=30
)
CALM = Evidence(
    month="2026-03",
    quality_passed=True,
    drifted_important=(),
    estimated_recall_high=0.80,
    realised_month="2026-02",
    realised_roc_auc=0.84,
    realised_recall=0.78,
    reference_roc_auc=0.85,
    reference_recall=0.80,
    gate_recall=0.65,
    age_days=10,
    trainable_months=("2026-02",),
)


def with_(**changes) -> Evidence:
    return dataclasses.replace(CALM, **changes)


def test_no_rule_fires_on_a_calm_month():
    outcome = decide(CALM, PARAMS)
    assert not outcome.retrain and outcome.rule == "none" and outcome.fired == []
    assert [c["rule"] for c in outcome.checks] == [
        "realised_gate",
        "realised_drop",
        "estimated_drop",
        "feature_drift",
        "max_age",
    ]


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"realised_recall": 0.60}, "realised_gate"),  # below the gate 0.65
        ({"realised_roc_auc": 0.79}, "realised_drop"),  # 0.85 - 0.05 = 0.80
        ({"estimated_recall_high": 0.69}, "estimated_drop"),  # 0.80 - 0.10 = 0.70
        ({"drifted_important": ("Contract", "tenure")}, "feature_drift"),
        ({"age_days": 31}, "max_age"),
    ],
)
def test_each_rule_fires_and_is_named(changes, rule):
    outcome = decide(with_(**changes), PARAMS)
    assert outcome.retrain and outcome.rule == rule and outcome.fired == [rule]
    assert rule in outcome.reason and "2026-02" in outcome.reason


@pytest.mark.parametrize(
    ("changes", "fires"),
    [
        ({"realised_roc_auc": 0.8001}, False),  # just inside the margin
        ({"realised_roc_auc": 0.7999}, True),
        ({"estimated_recall_high": 0.7001}, False),  # the interval's upper end counts
        ({"estimated_recall_high": 0.6999}, True),
        ({"drifted_important": ("Contract",)}, False),  # one column, two needed
        ({"age_days": 30}, False),  # older than 30 days, not 30 itself
    ],
)
def test_margins_are_limits_not_points(changes, fires):
    assert decide(with_(**changes), PARAMS).retrain is fires


def test_the_first_rule_is_named_when_several_fire():
    outcome = decide(with_(realised_recall=0.5, age_days=90), PARAMS)
    assert outcome.rule == "realised_gate" and outcome.fired == ["realised_gate", "max_age"]


def test_a_month_that_failed_quality_never_triggers_training_on_itself():
    broken = with_(
        quality_passed=False,
        drifted_important=("Contract", "tenure", "MonthlyCharges"),
        estimated_recall_high=0.1,
        trainable_months=(),
    )
    outcome = decide(broken, PARAMS)
    assert not outcome.retrain and outcome.fired == []
    assert "failed data quality" in outcome.checks[2]["note"]
    assert outcome.reason.startswith("2026-03 failed data quality")
    # the age limit still counts, on the months that passed
    aged = decide(dataclasses.replace(broken, age_days=40, trainable_months=("2026-02",)), PARAMS)
    assert aged.retrain and aged.rule == "max_age"
    assert "2026-03" not in aged.reason  # trained on the earlier month only


def test_a_fired_rule_without_labelled_months_keeps_the_champion():
    outcome = decide(with_(age_days=45, trainable_months=(), realised_month=None), PARAMS)
    assert not outcome.retrain and outcome.rule == "max_age"
    assert "no labelled month" in outcome.reason


def test_the_age_limit_follows_the_injected_clock(tmp_path):
    from datetime import date

    from churnlab.cycle.run import _champion_age

    log = [{"outcome": "promoted", "champion_after": {"version": 3}, "date": "2026-01-05"}]
    assert _champion_age(3, log, date(2026, 2, 4), date(2025, 1, 1)) == 30
    assert _champion_age(3, log, date(2026, 2, 5), date(2025, 1, 1)) == 31
    assert _champion_age(2, log, date(2026, 2, 5), date(2026, 1, 1)) == 35  # the registry's
    # a champion that beat a challenger trained on the newest data starts its age again there
    kept = {"outcome": "kept champion", "champion_after": {"version": 3}, "date": "2026-03-02"}
    assert _champion_age(3, [*log, kept], date(2026, 3, 9), date(2025, 1, 1)) == 7
    # a cycle that did not retrain does not reset it
    quiet = {"outcome": "no retrain", "champion_after": {"version": 3}, "date": "2026-03-02"}
    assert _champion_age(3, [*log, quiet], date(2026, 3, 9), date(2025, 1, 1)) == 63


def _line(month, drifted=(), action="keep", outcome="no retrain", version=1, training=None):
    return {
        "month": month,
        "action": action,
        "outcome": outcome,
        "champion_before": {"version": version},
        "statistics": {"drifted_important": list(drifted)},
        "training": None if training is None else {"months": list(training)},
    }


DRIFT = ("Contract", "tenure")


def test_a_drift_a_lost_challenger_learnt_does_not_fire_again():
    # 04 drifts, its retrain learns only the calm months 01-03 and loses: 05 fires again;
    # 05's challenger learnt 04's drift and lost: 06, the same drift, does not fire
    log = [
        _line("2026-03"),
        _line("2026-04", DRIFT, "retrain", "kept champion", training=("2026-02", "2026-03")),
    ]
    assert learnt_drift(log, 1) == ((), "2026-04")
    drifting = with_(drifted_important=DRIFT, trainable_months=("2026-04",))
    assert decide(drifting, PARAMS).rule == "feature_drift"
    log.append(_line("2026-05", DRIFT, "retrain", "kept champion", training=("2026-04",)))
    learnt, month = learnt_drift(log, 1)
    assert (learnt, month) == (DRIFT, "2026-05")
    same = dataclasses.replace(drifting, drift_learnt=learnt, drift_learnt_month=month)
    outcome = decide(same, PARAMS)
    assert not outcome.retrain and outcome.fired == []
    assert "challenger of 2026-05, which lost" in outcome.checks[3]["note"]
    # something new fires it again: another column drifts, or the age limit
    wider = dataclasses.replace(same, drifted_important=(*DRIFT, "MonthlyCharges"))
    assert decide(wider, PARAMS).rule == "feature_drift"
    assert decide(dataclasses.replace(same, age_days=31), PARAMS).rule == "max_age"
    # the memory is the champion's: a new champion (version 2) starts with none
    assert learnt_drift(log, 2) == ((), None)
    # and a promoted challenger is no lost one
    won = [*log[:2], _line("2026-05", DRIFT, "retrain", "promoted", training=("2026-04",))]
    assert learnt_drift(won, 1) == ((), "2026-04")


def _scores(rng, labels, strength):
    return labels * strength + rng.normal(size=len(labels))


def test_paired_difference_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    a, b = _scores(rng, labels, 0.5), _scores(rng, labels, 2.0)
    found = paired_difference(labels, a, b, 300, 0.9, 5)
    assert found["champion"] == pytest.approx(roc_auc_score(labels, a))
    assert found["difference"] == pytest.approx(roc_auc_score(labels, b) - roc_auc_score(labels, a))
    tied = np.round(a)  # ties: averaged ranks, as scikit-learn counts them
    assert paired_difference(labels, tied, b, 50, 0.9, 5)["champion"] == pytest.approx(
        roc_auc_score(labels, tied)
    )
    assert found["low"] < found["difference"] < found["high"]
    assert found["low"] > 0  # a much better model: the whole interval above 0
    again = paired_difference(labels, a, b, 300, 0.9, 5)
    assert again == found  # seeded


def test_promotion_needs_the_lower_bound_not_the_point():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    base = _scores(rng, labels, 1.0)
    # another model as good: on these customers its point is above the champion's, its
    # interval is not
    other = labels + rng.normal(size=200) * 0.3 + rng.normal(size=200) * 0.95
    month = paired_difference(labels, base, other, 300, 0.95, 3)
    test = paired_difference(labels, base, base, 300, 0.95, 4)
    assert month["difference"] > 0.01 and month["low"] < 0
    promoted, reason = promotion_verdict(month, test, better_by=0.0, test_margin=0.01)
    assert not promoted and "not better on the latest labelled month" in reason
    clearly = paired_difference(labels, base, _scores(rng, labels, 3.0), 300, 0.95, 3)
    assert promotion_verdict(clearly, test, 0.0, 0.01)[0]
    worse = paired_difference(labels, base, base - 2 * labels, 300, 0.95, 4)
    promoted, reason = promotion_verdict(clearly, worse, 0.0, 0.01)
    assert not promoted and "worse on the test split" in reason


def test_one_class_cannot_be_compared():
    labels = np.zeros(50, dtype=int)
    found = paired_difference(labels, np.arange(50.0), np.arange(50.0), 100, 0.95, 1)
    assert found["low"] is None
    assert not promotion_verdict(found, found, 0.0, 0.01)[0]


def test_the_log_is_append_only_and_byte_stable(tmp_path):
    log = tmp_path / "decisions.jsonl"
    first = {"month": "2026-01", "b": 0.123456789, "a": [1, np.float64(0.5)], "n": np.int64(3)}
    append_decision(log, first)
    before = log.read_bytes()
    assert before == decision_line(first)
    assert before == b'{"a":[1,0.5],"b":0.123457,"month":"2026-01","n":3}\n'
    append_decision(log, {"month": "2026-02"})
    assert log.read_bytes().startswith(before)
    assert [d["month"] for d in read_log(log)] == ["2026-01", "2026-02"]
    log.write_bytes(log.read_bytes() + b"{half")
    with pytest.raises(ChurnlabError, match="line 3"):
        read_log(log)


def test_history_is_a_table_of_the_log():
    line = {
        "month": "2026-04",
        "rule": "feature_drift",
        "action": "retrain",
        "outcome": "promoted",
        "champion_before": {"version": 1},
        "champion_after": {"version": 2},
        "reason": "x" * 100,
    }
    table = history_table([line], width=20).splitlines()
    assert table[0].split() == ["month", "rule", "action", "outcome", "before", "after", "reason"]
    assert table[2].split()[:6] == ["2026-04", "feature_drift", "retrain", "promoted", "v1", "v2"]
    assert table[2].endswith("x" * 17 + "...")
    assert json.loads(json.dumps(line)) == line
