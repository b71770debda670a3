"""MLflow tracking on real stores: settings, stage runs, faults, and a PostgreSQL server.

The embedded SQLite store is used by every test here; the team mode runs the same logging and
registry flow against a real PostgreSQL 15 and ``mlflow server`` that the fixture starts.
"""

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from churnlab.errors import ChurnlabError
from churnlab.runner import load_stage
from churnlab.tracking import (
    SETTINGS_FILE,
    Tracker,
    display_uri,
    load_settings,
    promotion_decision,
    record_stage,
)

from conftest import ROOT, apt_install, assert_champion_scores_like_the_model_file, free_port


def tracking_project(root: Path, **changes) -> Path:
    content = yaml.safe_load((ROOT / SETTINGS_FILE).read_text())
    content["tracking"].update(changes)
    (root / "params").mkdir(parents=True, exist_ok=True)
    (root / SETTINGS_FILE).write_text(yaml.safe_dump(content))
    return root


def runs(root: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("churnlab")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


# --- settings ------------------------------------------------------------------------------


def test_the_default_store_is_sqlite_in_the_project_and_the_environment_wins(tmp_path):
    root = tracking_project(tmp_path)
    assert load_settings(root, {}).uri == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    assert load_settings(root, {"MLFLOW_TRACKING_URI": "http://x:1"}).uri == "http://x:1"
    assert load_settings(root, {"CHURNLAB_TRACKING": "off"}).enabled is False


@pytest.mark.parametrize(
    "change, message",
    [
        ({"enabeld": True}, "tracking.enabeld: unknown key"),
        ({"on_unreachable": "ignore"}, "tracking.on_unreachable: expected one of 'stop', 'cont"),
        ({"enabled": "yes"}, "tracking.enabled: expected true or false, found 'yes'"),
        ({"promotion": {"metric": "accuracy", "margin": 0.0}}, "tracking.promotion.metric"),
    ],
)
def test_bad_settings_name_the_file_and_the_key(tmp_path, change, message):
    root = tracking_project(tmp_path, **change)
    with pytest.raises(ChurnlabError, match=f"{SETTINGS_FILE}: {message}"):
        load_settings(root, {})


def test_a_password_in_the_uri_is_never_shown():
    shown = display_uri("http://alice:s3cret-pass@mlflow.example:5000/x")
    assert shown == "http://alice:***@mlflow.example:5000/x"


@pytest.mark.parametrize(
    "challenger, champion, metric, promoted",
    [
        (0.85, None, "roc_auc", True),
        (0.85, 0.84, "roc_auc", True),
        (0.8415, 0.84, "roc_auc", False),  # better, but by less than the margin
        (0.83, 0.84, "roc_auc", False),
        (0.12, 0.13, "brier", True),  # lower Brier is better
        (0.14, 0.13, "brier", False),
    ],
)
def test_promotion_needs_the_margin(challenger, champion, metric, promoted):
    assert promotion_decision(challenger, champion, metric, 0.002)[0] is promoted


# --- stage runs and faults on the embedded store -------------------------------------------


def test_a_failing_stage_leaves_its_run_failed_and_secrets_out_of_params(tmp_path):
    root = tracking_project(tmp_path)
    tracker = Tracker.open(root)
    with tracker.stage_run("train", {"train": {"seed": 1, "api_token": "tok-0123456789"}}, set()):
        pass
    with pytest.raises(RuntimeError), tracker.stage_run("evaluate", {"evaluate.x": 1}, set()):
        raise RuntimeError("a cell failed")
    found = {r.info.run_name: r for r in runs(root)}
    assert found["train"].info.status == "FINISHED"
    assert found["train"].data.params == {"train.seed": "1", "train.api_token": "***"}
    assert found["evaluate"].info.status == "FAILED"
    parents = [r for r in runs(root) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, "the stages of one pipeline run share one parent"
    assert parents[0].info.status == "FAILED"


def test_tracking_can_be_switched_off(tmp_path, monkeypatch):
    root = tracking_project(tmp_path)
    monkeypatch.setenv("CHURNLAB_TRACKING", "off")
    assert Tracker.open(root) is None
    assert not (root / "mlflow.db").exists()


def test_an_unreachable_server_is_one_clear_error_or_a_warning(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    root = tracking_project(tmp_path, uri=uri)
    with pytest.raises(ChurnlabError, match=f"MLflow tracking store {uri} cannot be reached"):
        Tracker.open(root)
    root = tracking_project(tmp_path, uri=uri, on_unreachable="continue")
    assert Tracker.open(root) is None
    assert "going on without tracking" in capsys.readouterr().err


LOGGER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from churnlab.tracking import Tracker

    root, start_at, mode = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    while time.time() < start_at:  # both processes start together
        time.sleep(0.005)
    tracker = Tracker.open(root)
    for stage in ("prepare", "train", "evaluate"):
        with tracker.stage_run(stage, {f"{stage}.seed": 1}, set()) as run:
            run.log_metrics({f"{stage}.score": 0.5})
            if mode == "hang":
                print("running", flush=True)
                time.sleep(600)
    print("done", flush=True)
    """
)


def test_two_pipeline_runs_logging_at_once_both_succeed(tmp_path):
    root = tracking_project(tmp_path)
    start_at = str(time.time() + 2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOGGER, str(root), start_at, "ok"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0 and "done" in out, err[-2000:]
        assert "database is locked" not in err
    found = runs(root)
    assert len(found) == 8 and {r.info.status for r in found} == {"FINISHED"}
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2


def test_a_killed_process_leaves_no_run_running_after_the_next_run(tmp_path):
    root = tracking_project(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", LOGGER, str(root), "0", "hang"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {r.info.status for r in runs(root)} == {"RUNNING"}
    with Tracker.open(root).stage_run("prepare", {}, set()):
        pass
    statuses = sorted((r.info.run_name.split()[0], r.info.status) for r in runs(root))
    assert statuses == [
        ("pipeline", "FINISHED"),
        ("pipeline", "KILLED"),
        ("prepare", "FINISHED"),
        ("prepare", "KILLED"),
    ]


# --- team mode: a real PostgreSQL 15 and mlflow server --------------------------------------


@pytest.fixture(scope="module")
def team_server():
    from churnlab import server

    if shutil.which("runuser") is None or not list(Path("/usr/lib/postgresql").glob("*/bin")):
        apt_install("postgresql")
    folder = Path(tempfile.mkdtemp(prefix="churnlab-server-", dir="/tmp"))
    try:
        backend = server.start_postgres(folder, free_port())
        port = free_port()
        server.start_tracking_server(folder, backend, port)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        server.stop_tracking_server(folder, grace=1)
        server.stop_postgres(folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_team_server_keeps_no_password_in_a_uri_or_command_line(team_server):
    url, folder = team_server
    assert (folder / "pgpass").stat().st_mode & 0o077 == 0
    password = (folder / "pgpass").read_text().strip().split(":")[-1]
    pid = int((folder / "mlflow.pid").read_text())
    assert password not in Path(f"/proc/{pid}/cmdline").read_text()
    assert password not in (folder / "mlflow.log").read_text()


def test_the_registry_flow_on_postgresql(team_server, pipeline_project, monkeypatch, tmp_path):
    """Log the evaluate stage's results and model to the server, register, promote, load.

    (Keeping the champion when a challenger is not better is checked on the embedded store by
    the experiment in test_pipeline.py, and the decision rule in test_promotion_needs_the_margin.)
    """
    url, _ = team_server
    project = pipeline_project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.chdir(project)
    stage = load_stage(project, "evaluate")
    promotion = project / "reports" / "promotion.json"
    saved = promotion.read_bytes()
    try:
        tracker = Tracker.open(project)
        with tracker.stage_run("evaluate", stage.values, set(stage.outs)) as run:
            record_stage(run, project, stage)
        decision = json.loads(promotion.read_text())
    finally:
        promotion.write_bytes(saved)
    assert decision["challenger"]["version"] == 1 and decision["promoted"] is True
    client = mlflow.MlflowClient(url)
    champion = client.get_model_version_by_alias("churnlab-churn", "champion")
    challenger = client.get_model_version_by_alias("churnlab-churn", "challenger")
    assert champion.version == challenger.version == "1"
    run = client.get_run(challenger.run_id)
    metrics = json.loads((project / "metrics" / "test.json").read_text())
    assert run.data.metrics["test.roc_auc"] == metrics["roc_auc"]
    assert run.data.tags["promotion.decision"] == "promoted"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test.roc_auc"] == metrics["roc_auc"]
    assert_champion_scores_like_the_model_file(project)  # from the server, by alias
