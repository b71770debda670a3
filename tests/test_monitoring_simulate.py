"""Simulated months: each scenario does what it says, on an in-code table of customers."""

import numpy as np
import pandas as pd
import pytest

from churnlab.data import TableSpec, validate_table
from churnlab.errors import ChurnlabError
from churnlab.monitoring.simulate import Scenario, scenarios_from_params, simulate_year

SCHEMA = {
    "id_column": "cust",
    "target": "left",
    "positive_label": "yes",
    "negative_label": "no",
    "numeric": {"spend": {"min": 0, "max": 500}},
    "categorical": {"plan": ["basic", "pro"], "region": None},
}
SPEC = TableSpec.from_params(SCHEMA)


def customers(rows: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    plan = rng.choice(["basic", "pro"], rows, p=[0.7, 0.3])
    raw = pd.DataFrame(
        {
            "cust": [f"c{i}" for i in range(rows)],
            "spend": [f"{v:.2f}" for v in rng.gamma(4, 20, rows)],
            "plan": plan,
            "region": rng.choice(["north", "south"], rows),
            "left": np.where(rng.random(rows) < np.where(plan == "pro", 0.1, 0.3), "yes", "no"),
        }
    )
    return raw, validate_table(raw, SPEC, "customers")


def year(scenarios, customers_per_month=20_000, months=2):
    raw, typed = customers()
    settings = {
        "seed": 5,
        "start": "2026-01",
        "months": months,
        "customers": customers_per_month,
        "scenarios": scenarios,
    }
    return simulate_year(raw, typed, SPEC, settings), raw, typed


def test_the_same_seed_gives_the_same_months():
    scenario = [{"kind": "numeric_shift", "start": "2026-02", "column": "spend", "size": 0.5}]
    (first, truth), _, _ = year(scenario, 500)
    (again, truth_again), _, _ = year(scenario, 500)
    for month in first:
        pd.testing.assert_frame_equal(first[month][0], again[month][0])
        pd.testing.assert_frame_equal(first[month][1], again[month][1])
    assert truth == truth_again
    assert truth["months"]["2026-01"] == {"scenarios": [], "stable": True, "expected": []}
    assert truth["months"]["2026-02"]["expected"] == ["feature_drift"]


def test_category_mix_moves_the_share_by_its_size():
    scenario = [
        {
            "kind": "category_mix",
            "start": "2026-02",
            "column": "plan",
            "category": "pro",
            "size": 0.2,
        }
    ]
    (months, _), raw, _ = year(scenario)
    before = (months["2026-01"][0]["plan"] == "pro").mean()
    after = (months["2026-02"][0]["plan"] == "pro").mean()
    base = (raw["plan"] == "pro").mean()
    assert before == pytest.approx(base, abs=0.015)
    assert after == pytest.approx(base + 0.2, abs=0.015)


def test_numeric_shift_moves_the_mean_by_standard_deviations():
    scenario = [{"kind": "numeric_shift", "start": "2026-02", "column": "spend", "size": 0.5}]
    (months, _), _, typed = year(scenario)
    sd = typed["spend"].std(ddof=0)
    shift = months["2026-02"][0]["spend"].astype(float).mean() - typed["spend"].mean()
    assert shift / sd == pytest.approx(0.5, abs=0.03)


def test_concept_drift_multiplies_the_churn_rate_of_a_category_only():
    scenario = [
        {
            "kind": "concept_drift",
            "start": "2026-02",
            "column": "plan",
            "category": "pro",
            "size": 2,
        }
    ]
    (months, _), _, _ = year(scenario)
    rates = {}
    for month, (batch, labels) in months.items():
        left = labels["left"] == "yes"
        rates[month] = {p: left[batch["plan"] == p].mean() for p in ("basic", "pro")}
    assert rates["2026-02"]["pro"] == pytest.approx(2 * rates["2026-01"]["pro"], rel=0.1)
    assert rates["2026-02"]["basic"] == pytest.approx(rates["2026-01"]["basic"], abs=0.015)


def test_concept_drift_by_a_column_turns_the_stayers_with_its_highest_values():
    """With ``by``, the stayers who turn are the highest spenders of the category (a change
    a model can learn), not a random draw; the rate still doubles; ``by`` must be numeric."""
    scenario = {
        "kind": "concept_drift",
        "start": "2026-02",
        "column": "plan",
        "category": "pro",
        "size": 2,
        "by": "spend",
    }
    (months, _), _, _ = year([scenario])
    batch, labels = months["2026-02"]
    pro = (batch["plan"] == "pro").to_numpy()
    left = (labels["left"] == "yes").to_numpy()
    spend = batch["spend"].astype(float).to_numpy()
    before = months["2026-01"]
    before_pro = (before[0]["plan"] == "pro").to_numpy()
    before_rate = (before[1]["left"] == "yes").to_numpy()[before_pro].mean()
    assert left[pro].mean() == pytest.approx(2 * before_rate, rel=0.1)
    # the pro leavers now include the highest spenders far more than before: the top spend
    # decile of pro customers is nearly all leavers after, about the base rate before
    top = pro & (spend >= np.quantile(spend[pro], 0.9))
    before_spend = before[0]["spend"].astype(float).to_numpy()
    before_top = before_pro & (before_spend >= np.quantile(before_spend[before_pro], 0.9))
    assert left[top].mean() > 0.9 > 0.3 > (before[1]["left"] == "yes").to_numpy()[before_top].mean()
    with pytest.raises(ChurnlabError, match=r"scenarios\[0\]\.by: expected a numeric column"):
        scenarios_from_params([{**scenario, "by": "region"}], SPEC)
    with pytest.raises(ChurnlabError, match=r"\.by: .*for kind category_mix"):
        scenarios_from_params([{**scenario, "kind": "category_mix", "size": 0.1}], SPEC)


def test_quality_breaks():
    scenarios = [
        {
            "kind": "new_category",
            "start": "2026-01",
            "column": "plan",
            "category": "gold",
            "size": 0.1,
        },
        {"kind": "blank_column", "start": "2026-01", "column": "region"},
        {"kind": "missing_column", "start": "2026-02", "column": "spend"},
    ]
    (months, truth), _, _ = year(scenarios, 5000)
    first = months["2026-01"][0]
    assert (first["plan"] == "gold").mean() == pytest.approx(0.1, abs=0.02)
    assert (first["region"] == "").all()
    assert "spend" not in months["2026-02"][0].columns and "left" not in first.columns
    assert truth["months"]["2026-02"]["expected"] == ["quality"]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (
            {"kind": "numeric_shift", "start": "2026-01", "column": "plan", "size": 1},
            "scenarios[0].column: expected a numeric column of params/data.yaml schema, "
            "found 'plan'",
        ),
        (
            {
                "kind": "concept_drift",
                "start": "2026-01",
                "column": "plan",
                "category": "gold",
                "size": 2,
            },
            "scenarios[0].category: expected one of ['basic', 'pro']",
        ),
        (
            {"kind": "category_mix", "start": "2026-01", "column": "plan", "category": "pro"},
            "scenarios[0].size: expected a number for kind category_mix",
        ),
        (
            {"kind": "blank_column", "start": "2026-1", "column": "plan"},
            "scenarios[0].start: expected a month as YYYY-MM",
        ),
    ],
)
def test_a_scenario_that_does_not_fit_the_schema_names_its_key(scenario, message):
    with pytest.raises(ChurnlabError, match="params/monitor.yaml") as caught:
        scenarios_from_params([scenario], SPEC)
    assert message in str(caught.value)


def test_a_scenario_lasts_its_months():
    scenario = Scenario("blank_column", "2026-03", 2, "region")
    assert [scenario.active(m) for m in ("2026-02", "2026-03", "2026-04", "2026-05")] == [
        False,
        True,
        True,
        False,
    ]
    assert Scenario("blank_column", "2026-11", None, "region").active("2031-01")
