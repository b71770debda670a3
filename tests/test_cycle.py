"""churnlab cycle on a real pipeline run: the refusals (no batch, a bad or earlier month,
labels of a month never scored, a second cycle at once), a calm month recorded once (the age
limit on an injected clock), and one real retrain-and-promote cycle killed during the
retraining and during the promotion, with the tracking store unreachable in between: the
next runs finish the month with one champion and one decision line."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from churnlab.cycle.rule import RULE_VERSION

from conftest import (
    assert_one_clean_error,
    committed_copy,
    free_port,
    registered_model,
    run,
    set_param,
    tool_env,
)

pytestmark = pytest.mark.pipeline

CUSTOMERS = 1000  # per simulated month: the comparison holds out 30% of one month
LOG = "monitoring/decisions.jsonl"
JOURNAL = ".churnlab/cycle/journal.json"


@pytest.fixture(scope="module")
def project(tmp_path_factory, pipeline_project) -> Path:
    """A copy of the default run with a simulated year of months; no labels have arrived."""
    target = committed_copy(pipeline_project, tmp_path_factory.mktemp("cycle") / "project")
    for folder in ("monitoring", "data/batches", "data/labels"):
        shutil.rmtree(target / folder, ignore_errors=True)
    set_param(target, "params/monitor.yaml", "monitor.simulate.customers", CUSTOMERS)
    # quicker thresholds and importance: the monitor's own tests judge their quality
    set_param(target, "params/monitor.yaml", "monitor.chunks", 50)
    set_param(target, "params/monitor.yaml", "monitor.importance_repeats", 1)
    set_param(target, "params/monitor.yaml", "monitor.importance_max_rows", 1000)
    # the engineered month below moves the test split too; the rule's margins are the point
    set_param(target, "params/cycle.yaml", "cycle.promote.test_margin", 0.05)
    run(["churnlab", "simulate"], target)
    shutil.move(target / "data/labels", target / "arrived-later")
    (target / "data/labels").mkdir()
    return target


def cycle(project: Path, month: str, check: bool = True, **env: str):
    result = subprocess.run(
        ["churnlab", "cycle", month],
        cwd=project,
        env={**tool_env(), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def decisions(project: Path) -> list[dict]:
    path = project / LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def champion_version(project: Path) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    return int(client.get_model_version_by_alias(registered_model(project), "champion").version)


def test_refusals_before_any_work(project):
    assert_one_clean_error(cycle(project, "2027-05", check=False), "2027-05", "file not found")
    assert_one_clean_error(cycle(project, "2026-13", check=False), "YYYY-MM", "2026-13")
    early = project / "data/labels/2026-02.parquet"
    shutil.copy(project / "arrived-later/2026-02.parquet", early)
    try:  # labels of February reach a cycle for March, but February was never scored
        result = cycle(project, "2026-03", check=False)
        assert_one_clean_error(result, "data/labels/2026-02.parquet", "never scored")
    finally:
        early.unlink()
    lock = project / ".churnlab/cycle/lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:  # another cycle holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert_one_clean_error(cycle(project, "2026-01", check=False), "another cycle is running")
    assert not (project / LOG).exists() and not (project / JOURNAL).exists()


def test_a_calm_month_is_recorded_once_and_the_age_limit_follows_the_clock(project):
    from churnlab.cycle.run import run_cycle

    events: list[dict] = []
    later = datetime.now(UTC) + timedelta(days=40)  # the champion is 40 days old by then
    decision = run_cycle(project, "2026-02", clock=lambda: later, notify=events.append)
    assert decision.rule == "max_age" and decision.outcome == "no retrain"
    assert "no labelled month" in decision.record["reason"]  # nothing new to learn from
    assert decision.record["champion_before"]["age_days"] == 40
    assert decision.record["date"] == later.date().isoformat()
    assert [e["event"] for e in events] == ["kept_champion"]
    before = (project / LOG).read_bytes()
    assert before.count(b"\n") == 1
    again = run_cycle(project, "2026-02", clock=lambda: later, notify=events.append)
    assert again.already_done and again.record == decision.record
    assert (project / LOG).read_bytes() == before and len(events) == 1
    result = cycle(project, "2026-01", check=False)  # before the last month done
    assert_one_clean_error(result, "2026-01", "comes before 2026-02")
    table = run(["churnlab", "history"], project).stdout.splitlines()
    assert table[2].split()[:6] == ["2026-02", "max_age", "keep", "no", "retrain", "v1"]


def _new_churn_pattern(project: Path, month: str) -> None:
    """The month's labels arrive with a pattern the champion never saw: exactly the
    customers paying by one method leave (a concept drift its realised ROC AUC shows)."""
    batch = pd.read_parquet(project / f"data/batches/{month}.parquet")
    churned = batch["PaymentMethod"].eq("Mailed check").map({True: "Yes", False: "No"})
    labels = pd.DataFrame({"customerID": batch["customerID"], "Churn": churned})
    labels.to_parquet(project / f"data/labels/{month}.parquet", index=False)


def _wait_for(condition, what: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _modified(path: Path) -> int | None:
    """A file's modification time; None while a running stage has it moved aside."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _journal_step(project: Path) -> str | None:
    path = project / JOURNAL
    try:
        return json.loads(path.read_text())["step"] if path.exists() else None
    except json.JSONDecodeError:  # never half-written (atomic), but be safe while polling
        return None


def test_a_killed_retrain_and_promotion_are_finished_by_the_next_cycles(project):
    month = "2026-03"
    _new_churn_pattern(project, month)
    first = champion_version(project)
    prepared = project / "data/prepared/train.parquet"
    stamp = _modified(prepared)
    # 1. killed (SIGKILL, its whole process group: dvc and the notebooks too) while the
    # pipeline retrains, once the prepare stage has written the new training split
    proc = subprocess.Popen(
        ["churnlab", "cycle", month],
        cwd=project,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: (
                _journal_step(project) == "retraining" and _modified(prepared) not in (None, stamp)
            ),
            "the retraining to start",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _journal_step(project) == "retraining"
    assert champion_version(project) == first and not [
        d for d in decisions(project) if d["month"] == month
    ]
    # 2. the next cycle retrains, compares, promotes, and is killed right after the alias moved
    killed = cycle(project, month, check=False, CHURNLAB_CYCLE_KILL_AT="promoted")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    journal = json.loads((project / JOURNAL).read_text())
    assert journal["step"] == "promoting" and journal["record"]["outcome"] == "promoted"
    promoted = journal["record"]["challenger"]["version"]
    assert promoted > first and champion_version(project) == promoted
    assert not [d for d in decisions(project) if d["month"] == month]
    # 3. the tracking store is unreachable: one clear error, the journal kept
    unreachable = cycle(
        project,
        month,
        check=False,
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    assert_one_clean_error(unreachable, "cannot be reached", "promote")
    assert _journal_step(project) == "promoting"
    # 4. the next cycle finishes the month: one decision line, one champion
    done = cycle(project, month)
    assert "promoted" in done.stderr
    lines = [d for d in decisions(project) if d["month"] == month]
    assert len(lines) == 1 and not (project / JOURNAL).exists()
    line = lines[0]
    assert line["rule"] in ("realised_drop", "realised_gate") and line["action"] == "retrain"
    assert line["outcome"] == "promoted" and line["rule_version"] == RULE_VERSION
    assert line["champion_before"]["version"] == first
    assert line["champion_after"]["version"] == promoted == champion_version(project)
    assert line["training"]["months"] == [month]
    held = line["training"]["holdout"]["customers"]
    assert held == pytest.approx(0.3 * CUSTOMERS, abs=1)
    assert line["training"]["rows"] == CUSTOMERS - held
    comparison = line["promotion"]
    assert comparison["held_out_month"]["customers"] == held
    assert comparison["held_out_month"]["low"] > 0  # better: the interval's lower bound
    assert comparison["test_split"]["low"] > -0.05
    train = pd.read_parquet(prepared)
    assert train["customer_id"].str.startswith(f"{month}-").sum() == CUSTOMERS - held
    assert (project / "data/cycle/training.parquet.dvc").exists()  # versioned by DVC
    # 5. again: nothing changes
    log = (project / LOG).read_bytes()
    again = cycle(project, month)
    assert "already done" in again.stderr and (project / LOG).read_bytes() == log
    assert champion_version(project) == promoted
