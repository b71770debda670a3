"""The replay's arithmetic and page: the changes of a simulated year, the acceptance figures
from a decision log, the block of bench/RESULTS.md, and a self-contained, escaped page. (The
replay itself, twelve months of real cycles, is `make replay`: minutes, not a test.)"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnlab.cycle.replay import (
    END,
    ORIGIN,
    START,
    ReplayParams,
    acceptance,
    change_months,
    clock_for,
    draw_months,
    isolated_environment,
    pipeline_rows,
    pool_rows,
    replace_block,
    results_markdown,
    reuse_outputs,
    seen_origins,
    unseen_roc_auc,
    user_cache,
)
from churnlab.cycle.replay_page import active_scenarios, page_context, render_page
from churnlab.data import TableSpec, validate_table
from churnlab.errors import ChurnlabError
from churnlab.monitoring.simulate import simulate_year
from churnlab.param_rules import check_section

MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]


@pytest.fixture
def settings(params) -> ReplayParams:
    return ReplayParams.from_params(params)


def decision(month, rule="none", outcome="no retrain", before=1, after=None, reason="why"):
    action = "retrain" if outcome in ("promoted", "kept champion") else "keep"
    return {
        "month": month,
        "rule": rule,
        "fired": [] if rule == "none" else [rule],
        "action": action,
        "outcome": outcome,
        "champion_before": {"version": before},
        "champion_after": {"version": after or before},
        "reason": reason,
    }


# a year: a false alarm in 02 (stable), the covariate shift of 04 answered in 04 (promoted,
# though trained on months before it: labels come a month late), again in 06 (kept: the
# champion in use still has not seen the shift), concept drift from 08 answered in 09
# (promoted, trained up to 08), an age-limit retrain in 11, and a retrain in 12 that no
# change called for (the champion of 09 has learnt both changes)
YEAR = [
    decision("2026-01"),
    decision("2026-02", "feature_drift", "kept champion"),
    decision("2026-03"),
    decision("2026-04", "feature_drift", "promoted", 1, 2),
    decision("2026-05", before=2),
    decision("2026-06", "feature_drift", "kept champion", 2),
    decision("2026-07", before=2),
    decision("2026-08", before=2),
    decision("2026-09", "realised_drop", "promoted", 2, 3),
    decision("2026-10", before=3),
    decision("2026-11", "max_age", "kept champion", 3),
    decision("2026-12", "feature_drift", "kept champion", 3),
]
SCENARIOS = [
    {"kind": "category_mix", "start": "2026-04", "months": None, "column": "plan"},
    {"kind": "concept_drift", "start": "2026-08", "months": None, "column": "plan"},
]
AUC = {m: {"in_use": 0.80, "never_retrained": 0.80} for m in MONTHS}
AUC.update(
    {
        "2026-01": {"in_use": 0.84, "never_retrained": 0.84},
        "2026-02": {"in_use": 0.86, "never_retrained": 0.86},
        "2026-03": {"in_use": 0.85, "never_retrained": 0.85},
        "2026-05": {"in_use": 0.84, "never_retrained": 0.79},
        "2026-10": {"in_use": 0.82, "never_retrained": 0.70},
    }
)


def test_the_world_changes_when_a_scenario_starts_or_ends_inside_the_year():
    scenarios = [
        {"kind": "category_mix", "start": "2026-04", "months": None, "column": "plan"},
        {"kind": "concept_drift", "start": "2026-08", "months": 2, "column": "plan"},
        {"kind": "numeric_shift", "start": "2026-01", "months": None, "column": "spend"},
        {"kind": "numeric_shift", "start": "2026-12", "months": 3, "column": "spend"},
    ]
    assert change_months(scenarios, MONTHS) == ["2026-04", "2026-08", "2026-10", "2026-12"]
    assert change_months([], MONTHS) == []


def test_a_months_cycle_runs_on_the_first_day_of_the_next():
    assert clock_for("2026-12") == datetime(2027, 1, 1, tzinfo=UTC)
    assert clock_for("2026-02") == datetime(2026, 3, 1, tzinfo=UTC)


def test_acceptance_of_a_year_from_its_decisions(settings):
    figures = acceptance(YEAR, SCENARIOS, MONTHS, AUC, 600.0, settings)
    assert [
        (c["change"], c["retrain_month"], c["rule"], c["passed"]) for c in figures["changes"]
    ] == [
        ("2026-04", "2026-04", "feature_drift", True),
        ("2026-08", "2026-09", "realised_drop", True),
    ]
    assert figures["unneeded"] == {
        "months": ["2026-02", "2026-12"],
        "count": 2,
        "limit": 1,
        "passed": False,
    }
    assert figures["age_retrains"] == ["2026-11"]
    assert figures["pre_drift_roc_auc"] == pytest.approx((0.84 + 0.86 + 0.85) / 3)
    first, second = figures["recovery"]
    assert (first["retrain_month"], first["month"], first["passed"]) == ("2026-04", "2026-05", True)
    assert first["difference"] == pytest.approx(0.84 - 0.85)
    assert (second["retrain_month"], second["month"], second["passed"]) == (
        "2026-09",
        "2026-10",
        False,
    )  # 0.03 below
    assert second["difference"] == pytest.approx(0.82 - 0.85)
    assert figures["time_passed"] and figures["minutes"] == 10
    assert figures["passed"] is False


def test_the_level_and_the_recovery_are_judged_on_customers_the_model_never_saw(settings):
    # after the retrain of 04 the new champion has seen copies of most customers of 05: on
    # the whole month it looks better (0.93) than on those it never saw (0.80)
    auc = {m: {**v, "in_use_unseen": v["in_use"], "unseen_customers": 2000} for m, v in AUC.items()}
    auc["2026-05"] = {
        "in_use": 0.93,
        "never_retrained": 0.79,
        "in_use_unseen": 0.80,
        "unseen_customers": 310,
    }
    auc["2026-02"] = {**auc["2026-02"], "in_use_unseen": None}  # one class: left out
    figures = acceptance(YEAR, SCENARIOS, MONTHS, auc, 600.0, settings)
    assert figures["pre_drift_roc_auc"] == pytest.approx((0.84 + 0.85) / 2)
    first = figures["recovery"][0]
    assert (first["roc_auc"], first["whole_month"], first["customers"]) == (0.80, 0.93, 310)
    assert first["difference"] == pytest.approx(0.80 - 0.845) and not first["passed"]
    context = {
        "months": 12,
        "customers": 2000,
        "when": "2026-11-27",
        "machine": "x86_64",
        "label_lag": 1,
        "within_months": 1,
    }
    block = results_markdown(figures, context)
    assert "0.800 in 2026-05 (-0.045; new champion of 2026-04 on the 310 customers" in block
    assert "0.930 on the whole month" in block


def test_a_change_answered_late_fails_and_a_retrain_the_champion_needed_counts_once(settings):
    late = [d for d in YEAR if d["month"] not in ("2026-09", "2026-10", "2026-12")]
    late.append(decision("2026-10", "realised_drop", "promoted", 2, 3))
    late.sort(key=lambda d: d["month"])
    figures = acceptance(late, SCENARIOS, MONTHS, AUC, 60.0, settings)
    assert figures["changes"][1] == {
        "change": "2026-08",
        "retrain_month": None,
        "rule": None,
        "outcome": None,
        "passed": False,
    }
    # 10 answers the concept drift the champion of 04 never saw: needed, if late; and it
    # is the first new champion since 08, measured in 11 (no labels: not passed)
    assert figures["unneeded"]["months"] == ["2026-02"] and figures["unneeded"]["passed"]
    assert figures["recovery"][1]["retrain_month"] == "2026-10"
    assert figures["recovery"][1]["roc_auc"] == 0.80 and not figures["recovery"][1]["passed"]
    # an age-limit retrain is never unneeded, even when another rule fired first
    aged = [dict(d) for d in YEAR]
    aged[11] = {**aged[11], "fired": ["feature_drift", "max_age"]}
    assert acceptance(aged, SCENARIOS, MONTHS, AUC, 60.0, settings)["unneeded"]["months"] == [
        "2026-02"
    ]
    slow = acceptance(YEAR, SCENARIOS, MONTHS, AUC, 16 * 60.0, settings)
    assert not slow["time_passed"]


def test_the_results_block_replaces_only_its_own_markers(settings):
    figures = acceptance(YEAR, SCENARIOS, MONTHS, AUC, 600.0, settings)
    context = {
        "months": 12,
        "customers": 2000,
        "when": "2026-11-27",
        "machine": "x86_64, 2 cores",
        "label_lag": 1,
        "within_months": 1,
    }
    text = results_markdown(figures, context)
    assert "| retrain after the change of 2026-08 | within 1 month(s) | retrain in 2026-09" in text
    assert "| replay time | at most 15 min | 10.0 min | pass |" in text
    assert text.rstrip().endswith("All: FAIL. Page: `reports/replay.html`.")
    body = f"# Results\n\nbefore\n\n{START}\nold figures\n{END}\n\nafter\n"
    replaced = replace_block(body, text)
    assert replaced.startswith("# Results\n\nbefore\n\n") and replaced.endswith("\n\nafter\n")
    assert "old figures" not in replaced and replaced.count(START) == 1
    assert replace_block("# Results\n", "x") == f"# Results\n\n{START}\nx\n{END}\n"


def test_the_page_is_self_contained_and_escapes_what_it_shows(settings):
    hostile = "<script>alert(1)</script> & <img src=http://evil.example/x>"
    decisions = [dict(d) for d in YEAR]
    decisions[3]["reason"] = hostile
    result = {
        "settings": settings,
        "months": MONTHS,
        "changes": ["2026-04", "2026-08"],
        "scenarios": settings.simulate["scenarios"],
        "decisions": decisions,
        "in_use": {d["month"]: d["champion_before"]["version"] for d in decisions},
        "first_version": 1,
        "roc_auc": AUC,
        "events": [{"event": "drift_alert", "month": "2026-04", "cycle": "2026-04"}],
        "figures": acceptance(decisions, SCENARIOS, MONTHS, AUC, 600.0, settings),
        "seconds": 600.0,
    }
    html = render_page(page_context(result, "Churn <b>model</b>"))
    assert "<script" not in html and "evil.example/x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img" in html
    assert "Churn &lt;b&gt;model&lt;/b&gt;" in html
    assert 'http-equiv="Content-Security-Policy"' in html
    assert not re.search(r"""<[^>]*\s(src|href)=["']?(https?:)?//""", html)  # nothing remote
    assert re.search(r'<img src="data:image/png;base64,', html)
    # one row per month, the world and the model in use as they were
    for month in MONTHS:
        assert f"<td>{month}</td>" in html
    assert "category mix: Contract = Month-to-month (0.15)" in html
    assert html.count("drift_alert") == 1


def test_scenarios_at_work_in_a_month():
    scenarios = [
        {
            "kind": "concept_drift",
            "start": "2026-08",
            "months": 2,
            "column": "plan",
            "category": "x",
            "size": 3.0,
        },
    ]
    assert active_scenarios(scenarios, "2026-07") == []
    assert active_scenarios(scenarios, "2026-09") == ["concept drift: plan = x (3)"]
    assert active_scenarios(scenarios, "2026-10") == []


def test_replay_params_are_checked_like_monitor_simulate(params):
    replay = params["replay"]
    check_section("params/replay.yaml", "replay", replay)
    wrong = {**replay, "label_lag": -1}
    with pytest.raises(
        ChurnlabError,
        match=r"params/replay.yaml: replay.label_lag: expected an integer from 0 to 12",
    ):
        check_section("params/replay.yaml", "replay", wrong)
    typo = {**replay, "simulate": {**replay["simulate"], "customer": 10}}
    with pytest.raises(ChurnlabError, match=r"replay.simulate.customer: unknown key"):
        check_section("params/replay.yaml", "replay", typo)


def test_the_replay_never_reaches_the_users_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server.example:5000")
    monkeypatch.setenv("CHURNLAB_TRACKING", "off")
    with isolated_environment(tmp_path):
        assert "MLFLOW_TRACKING_URI" not in os.environ and "CHURNLAB_TRACKING" not in os.environ
        assert os.environ["PATH"].split(os.pathsep)[0] == str(tmp_path)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://team-server.example:5000"
    assert Path(os.environ["PATH"].split(os.pathsep)[0]) != tmp_path


SPEC = TableSpec.from_params(
    {
        "id_column": "cust",
        "target": "left",
        "positive_label": "yes",
        "negative_label": "no",
        "numeric": {"spend": {"min": 0, "max": 500}},
        "categorical": {"plan": ["basic", "pro"]},
    }
)


def _customers(rows=400):
    rng = np.random.default_rng(3)
    raw = pd.DataFrame(
        {
            "cust": [f"c{i}" for i in range(rows)],
            "spend": [f"{v:.2f}" for v in rng.gamma(4, 20, rows)],
            "plan": rng.choice(["basic", "pro"], rows),
            "left": rng.choice(["yes", "no"], rows),
        }
    )
    return raw, validate_table(raw, SPEC, "customers")


SIMULATE = {
    "seed": 9,
    "start": "2026-01",
    "months": 3,
    "customers": 500,
    "format": "parquet",
    "scenarios": [
        {
            "kind": "category_mix",
            "start": "2026-02",
            "column": "plan",
            "category": "pro",
            "size": 0.2,
        }
    ],
}


def test_the_months_are_drawn_from_customers_the_pipeline_left_out():
    raw, typed = _customers()
    # the copy's pipeline keeps half the customers (its splits); the months copy the others
    assert pipeline_rows(400, 0.5, None) == 200 and pipeline_rows(400, 0.5, 150) == 150
    trained = [f"c{i}" for i in range(0, 400, 4)] + [f"c{i}" for i in range(1, 400, 4)]
    rows = pool_rows(typed["cust"], trained)
    assert sorted(raw["cust"].iloc[rows]) == sorted(set(raw["cust"]) - set(trained))
    months, truth, origins = draw_months(raw, typed, SPEC, SIMULATE, rows)
    assert truth["customers_drawn_from"] == 200
    by_id = raw.set_index("cust")
    for batch, labels in months.values():
        assert ORIGIN not in batch.columns and len(batch) == 500
        drawn = [origins[i] for i in batch["cust"]]
        assert not set(drawn) & set(trained)  # none of them a training or test customer
        # each simulated customer is its origin's row, with its origin's label
        assert batch["spend"].tolist() == by_id.loc[drawn, "spend"].tolist()
        assert labels["left"].tolist() == by_id.loc[drawn, "left"].tolist()
    # the scenario acts on the pool: pro's share rises by about 0.2 from 02
    share = [(b["plan"] == "pro").mean() for b, _ in months.values()]
    pool_share = (raw["plan"].iloc[rows] == "pro").mean()
    assert abs(share[0] - pool_share) < 0.07 and share[1] - pool_share > 0.12
    # every customer (`all`): the months of `churnlab simulate`, byte for byte
    everyone, _, _ = draw_months(raw, typed, SPEC, SIMULATE, np.arange(len(raw)))
    plain, _ = simulate_year(raw, typed, SPEC, SIMULATE)
    for month in plain:
        pd.testing.assert_frame_equal(everyone[month][0], plain[month][0])
        pd.testing.assert_frame_equal(everyone[month][1], plain[month][1])


def test_a_retrained_model_is_judged_again_on_the_customers_it_never_saw():
    origins = {"m1-1": "c1", "m1-2": "c2", "m2-1": "c1", "m2-2": "c3", "m2-3": "c4"}
    seen = seen_origins(["c0", "m1-1", "m1-2"], origins)  # the split's c0, month 1's copies
    assert seen == {"c0", "c1", "c2"}
    ids = ["m2-1", "m2-2", "m2-3", "c0"]
    scores = {"m2-1": 0.9, "m2-2": 0.2, "m2-3": 0.7, "c0": 0.1}
    value, count = unseen_roc_auc(scores, ids, [True, False, True, False], origins, seen)
    assert count == 2  # m2-2 (c3) and m2-3 (c4): m2-1 is a copy of c1, c0 was trained on
    assert value == 1.0  # c4 (churned, 0.7) above c3 (stayed, 0.2)


@pytest.mark.pipeline
def test_the_copy_reuses_the_projects_run_from_its_cache(pipeline_project, tmp_path):
    import subprocess
    import sys

    from churnlab.pipeline.workspace import commit_all, copy_project

    tools = Path(sys.executable).parent
    cache = pipeline_project / ".dvc" / "cache"
    before = sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file())
    scratch = copy_project(pipeline_project, tmp_path / "copy")
    commit_all(scratch, author="replay", message="the project, for a replay")
    assert not (scratch / "models" / "model.skops").exists()  # DVC output: not copied
    assert user_cache(pipeline_project, tools) == cache.resolve()
    assert reuse_outputs(user_cache(pipeline_project, tools), scratch, tools, tmp_path / "log")
    # every stage current in the copy: its `dvc repro` runs nothing it need not
    status = subprocess.run(
        [str(tools / "dvc"), "status", "-q"],
        cwd=scratch,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert status.returncode == 0, (tmp_path / "log").read_text()
    model = "models/model.skops"
    assert (scratch / model).read_bytes() == (pipeline_project / model).read_bytes()
    after = sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file())
    assert after == before  # the project's cache was only read
    assert not reuse_outputs(None, scratch, tools, tmp_path / "log")  # no cache: run it all
