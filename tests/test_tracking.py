"""MLflow tracking on real stores: settings, stage runs, param keys and faults of the store.

The embedded SQLite store is used by every test here. Tests that need a stage to log run the
real stages (``churnlab fetch``) in a temporary copy of the project with its own store. The
registry and promotion are in test_registry.py.
"""

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from churnlab.errors import ChurnlabError
from churnlab.tracking import service
from churnlab.tracking.lineage import mlflow_key_part
from churnlab.tracking.runs import Tracker, tracked_stage
from churnlab.tracking.settings import SETTINGS_FILE, display_uri, load_settings

from conftest import (
    ROOT,
    assert_one_clean_error,
    copy_project,
    free_port,
    mlflow_runs,
    outputs,
    registered_model,
    run,
    set_param,
    switch_to_own_data,
    unwritable,
)


def tracking_project(root: Path, **changes) -> Path:
    content = yaml.safe_load((ROOT / SETTINGS_FILE).read_text())
    content["tracking"].update(changes)
    (root / "params").mkdir(parents=True, exist_ok=True)
    (root / SETTINGS_FILE).write_text(yaml.safe_dump(content))
    return root


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
        (
            {"promotion": {"metric": "accuracy", "margin": 0.0, "min_customers": 200}},
            "tracking.promotion.metric",
        ),
        (
            {"promotion": {"metric": "roc_auc", "margin": 0.0, "min_customers": 0}},
            "tracking.promotion.min_customers: expected an integer",
        ),
    ],
)
def test_bad_settings_name_the_file_and_the_key(tmp_path, change, message):
    root = tracking_project(tmp_path, **change)
    with pytest.raises(ChurnlabError, match=f"{SETTINGS_FILE}: {message}"):
        load_settings(root, {})


def test_a_password_in_the_uri_is_never_shown():
    shown = display_uri("http://alice:s3cret-pass@mlflow.example:5000/x")
    assert shown == "http://alice:***@mlflow.example:5000/x"


# --- stage runs and faults on the embedded store -------------------------------------------


def test_a_failing_stage_leaves_its_run_failed_and_secrets_out_of_params(tmp_path):
    root = tracking_project(tmp_path)
    tracker = Tracker.open(root)
    with tracker.stage_run("train", {"train": {"seed": 1, "api_token": "tok-0123456789"}}, set()):
        pass
    with pytest.raises(RuntimeError), tracker.stage_run("evaluate", {"evaluate.x": 1}, set()):
        raise RuntimeError("a cell failed")
    found = {r.info.run_name: r for r in mlflow_runs(root)}
    assert found["train"].info.status == "FINISHED"
    assert found["train"].data.params == {"train.seed": "1", "train.api_token": "***"}
    assert found["evaluate"].info.status == "FAILED"
    parents = [r for r in mlflow_runs(root) if "mlflow.parentRunId" not in r.data.tags]
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


def test_importing_the_runner_and_tracking_loads_no_heavy_library():
    """The runner imports the tracking modules at its start; MLflow, pandas, scikit-learn,
    pandera and skops load only where they are used (the register step, a stage's run)."""
    heavy = ("pandas", "sklearn", "pandera", "mlflow", "skops", "sqlalchemy")
    code = (
        "import sys, churnlab.pipeline.execute, churnlab.tracking.runs, "
        "churnlab.tracking.registry, churnlab.tracking.promotion; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def test_a_tracker_opened_in_the_background_fails_like_one_opened_at_once(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    root = tracking_project(tmp_path, uri=uri)
    with pytest.raises(ChurnlabError) as at_once:
        Tracker.open(root)
    pending = Tracker.open_in_background(root)  # returns before the store answers
    with pytest.raises(ChurnlabError) as in_background:
        pending.result()
    assert str(in_background.value) == str(at_once.value)
    root = tracking_project(tmp_path, uri=uri, on_unreachable="continue")
    assert Tracker.open_in_background(root).result() is None
    assert "going on without tracking" in capsys.readouterr().err


def test_a_stage_tracked_in_the_background_ends_finished_failed_or_killed(tmp_path):
    """The stage's run starts in a thread while the block (the notebook) runs: the same
    runs, parent and statuses as a stage tracked at once; the block's own error is raised."""
    root = tracking_project(tmp_path)
    stages = {
        name: SimpleNamespace(name=name, values={f"{name}.seed": 1}, outs=[])
        for name in ("train", "evaluate", "report")
    }
    with tracked_stage(root, stages["train"], Tracker.open_in_background(root)) as pending:
        pending.result().log_metrics({"train.score": 0.5})
    for name, error in (
        ("evaluate", RuntimeError("a cell failed")),
        ("report", KeyboardInterrupt()),
    ):
        with (
            pytest.raises(type(error)),
            tracked_stage(root, stages[name], Tracker.open_in_background(root)),
        ):
            raise error
    found = {r.info.run_name: r for r in mlflow_runs(root)}
    assert found["train"].info.status == "FINISHED"
    assert found["train"].data.params == {"train.seed": "1"}
    assert found["train"].data.metrics == {"train.score": 0.5}
    assert found["evaluate"].info.status == "FAILED"
    assert found["report"].info.status == "KILLED"
    parents = [r for r in found.values() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert {r.data.tags.get("mlflow.parentRunId") for r in found.values()} == {
        None,
        parents[0].info.run_id,
    }


def test_an_unreachable_store_found_in_the_background_fails_the_stage_after_its_block(tmp_path):
    """The block ran (the store was still being reached): the store's error is raised when
    the block ends well, and the block's own error when it failed."""
    root = tracking_project(tmp_path, uri=f"http://127.0.0.1:{free_port()}")
    stage = SimpleNamespace(name="train", values={}, outs=[])
    with (
        pytest.raises(ChurnlabError, match="cannot be reached"),
        tracked_stage(root, stage, Tracker.open_in_background(root)) as pending,
    ):
        pending.result()
    with (
        pytest.raises(RuntimeError, match="a cell failed"),
        tracked_stage(root, stage, Tracker.open_in_background(root)),
    ):
        raise RuntimeError("a cell failed")


LOGGER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from churnlab.tracking.runs import Tracker, tracked_stage

    root, start_at, mode = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    while time.time() < start_at:  # both processes start together
        time.sleep(0.005)
    tracker = Tracker.open(root)
    for stage in ("prepare", "train", "evaluate"):
        with tracker.stage_run(stage, {f"{stage}.seed": 1}, set()) as run:
            run.log_metrics({f"{stage}.score": 0.5})
            if mode == "hang":  # registered, but killed before the aliases move
                name = tracker.settings.registered_model
                tracker.client.create_registered_model(name)
                source = tracker.client.get_run(run.run_id).info.artifact_uri + "/model"
                tracker.client.create_model_version(name, source, run.run_id)
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
    found = mlflow_runs(root)
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
    assert {r.info.status for r in mlflow_runs(root)} == {"RUNNING"}
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    name = registered_model(root)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    with Tracker.open(root).stage_run("prepare", {}, set()):
        pass
    assert client.search_model_versions(f"name = '{name}'") == []  # no orphan version
    statuses = sorted((r.info.run_name.split()[0], r.info.status) for r in mlflow_runs(root))
    assert statuses == [
        ("pipeline", "FINISHED"),
        ("pipeline", "KILLED"),
        ("prepare", "FINISHED"),
        ("prepare", "KILLED"),
    ]


# A stage process as `dvc repro` runs it (the runner's tracking calls, no MLflow of its own),
# and a stand-in for `dvc` that runs stages one after the other: named `dvc`, so that
# churnlab.tracking.processes.pipeline_owner takes it for the pipeline run.
SERVICE_STAGE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from types import SimpleNamespace
    from churnlab.tracking.runs import Tracker, tracked_stage

    root, name, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    values = {f"{name}.seed": 1, "api_token": "not-a-real-token-123"}
    stage = SimpleNamespace(name=name, values=values, outs=[])
    with tracked_stage(root, stage, Tracker.open_in_background(root)) as pending:
        pending.result()
        if mode == "fail":
            raise RuntimeError("a cell failed")
        if mode == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
    print("mlflow imported" if "mlflow" in sys.modules else "no mlflow")
    """
)
FAKE_DVC = textwrap.dedent(
    """
    import subprocess, sys
    root, stage = sys.argv[1], sys.argv[2]
    plan = [a.split("=") for a in sys.argv[3:]]  # stage=mode ...
    for name, mode in plan or (("prepare", "ok"), ("train", "fail"), ("evaluate", "killed")):
        done = subprocess.run([sys.executable, stage, root, name, mode], capture_output=True)
        sys.stdout.write(done.stdout.decode())
        sys.stderr.write(done.stderr.decode())
    """
)


def test_stages_under_dvc_record_through_one_service_killed_at_once(tmp_path):
    """Under `dvc`, a stage's process sends its runs to the pipeline run's tracking service
    and never imports MLflow; the runs are those of a stage tracked in its own process: one
    parent, FINISHED, FAILED, and KILLED as soon as a stage's process is killed (not only at
    the next run); a secret param is masked."""
    root = tracking_project(tmp_path / "project")
    done = _fake_dvc_run(tmp_path, root, [])  # prepare ok, train fails, evaluate killed
    assert done.stdout == "no mlflow\n", done.stderr
    expected = {"prepare": "FINISHED", "train": "FAILED", "evaluate": "KILLED"}
    deadline = time.monotonic() + 30  # the service marks a dropped stage after it is gone
    while time.monotonic() < deadline:
        found = {r.info.run_name: r for r in mlflow_runs(root)}
        if found.get("evaluate") and found["evaluate"].info.status == expected["evaluate"]:
            break
        time.sleep(0.2)
    parents = [r for r in found.values() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(found) == 4
    assert {n: r.info.status for n, r in found.items() if r is not parents[0]} == expected
    assert {r.data.tags.get("mlflow.parentRunId") for r in found.values()} == {
        None,
        parents[0].info.run_id,
    }
    assert found["prepare"].data.params == {"prepare.seed": "1", "api_token": "***"}


# --- param keys: column names are data ---------------------------------------------------------


def test_a_key_part_mlflow_refuses_is_escaped_readably_and_one_to_one():
    assert mlflow_key_part("Contract (type)") == "Contract _x0028_type_x0029_"
    assert mlflow_key_part("€") == "_x20AC_"
    assert mlflow_key_part("a.b") == "a_x002E_b"  # '.' joins the parts of a key
    for kept in ("cv_folds", "tenure", "é", "feature_x", "max_x1"):
        assert mlflow_key_part(kept) == kept
    # every string of up to 8 characters over an alphabet that can imitate an escape
    alphabet = "_xA("
    parts = ["".join(p) for n in range(9) for p in itertools.product(alphabet, repeat=n)]
    assert len({mlflow_key_part(part) for part in parts}) == len(parts)
    assert len({mlflow_key_part(part) for part in ("_x0041_", "A", "_x0041(", "A(")}) == 4


ODD_COLUMNS = {"Contract (type)": "categorical", "é": "numeric", "€": "numeric"}


@pytest.fixture(scope="module")
def odd_columns_project(tmp_path_factory) -> Path:
    """A project copy whose own table has column names MLflow refuses in param keys."""
    project = copy_project(tmp_path_factory.mktemp("odd") / "project")
    rng = np.random.default_rng(5)
    rows = 200
    table = pd.DataFrame(
        {
            "account": [f"A{i:04d}" for i in range(rows)],
            "Contract (type)": rng.choice(["monthly", "yearly"], rows),
            "é": rng.integers(0, 50, rows),
            "€": rng.uniform(0, 90, rows).round(2),
            "left": np.where(rng.random(rows) < 0.3, "yes", "no"),
        }
    )
    table.to_csv(project / "data" / "own" / "accounts.csv", index=False)
    schema = {
        "id_column": "account",
        "target": "left",
        "positive_label": "yes",
        "negative_label": "no",
        "numeric": {"é": {"min": 0, "max": 100}, "€": {"min": 0, "max": 100}},
        "categorical": {"Contract (type)": ["monthly", "yearly"]},
    }
    switch_to_own_data(project, "data/own/accounts.csv", schema)
    return project


def test_column_names_mlflow_refuses_are_logged_as_escaped_param_keys(odd_columns_project):
    project = odd_columns_project
    run(["churnlab", "fetch"], project)
    fetch = next(r for r in reversed(mlflow_runs(project)) if r.info.run_name == "fetch")
    assert fetch.info.status == "FINISHED"
    parent = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(
        fetch.data.tags["mlflow.parentRunId"]
    )
    assert parent.info.status == "FINISHED"
    keys = "\n".join(sorted(fetch.data.params))
    for column, kind in ODD_COLUMNS.items():
        assert f"schema.{kind}.{mlflow_key_part(column)}" in keys, keys
    assert fetch.data.params["schema.numeric._x20AC_.max"] == "100"


def test_a_store_failing_mid_stage_fails_the_stage_cleanly(odd_columns_project):
    """The artifact store refuses writes after the run started: the stage fails with one
    line, its runs are FAILED, the raw data is the earlier one."""
    project = odd_columns_project
    if not (project / "mlruns").is_dir():
        run(["churnlab", "fetch"], project)
    source = project / "data" / "own" / "accounts.csv"
    saved = source.read_bytes()
    before = outputs(project, ("data",))
    source.write_bytes(saved.replace(b"monthly", b"yearly", 1))  # new data to fetch
    try:
        with unwritable(project / "mlruns"):
            result = run(["churnlab", "fetch"], project, check=False)
    finally:
        source.write_bytes(saved)
    assert_one_clean_error(result, "MLflow tracking store sqlite:///", "recording stage 'fetch'")
    assert outputs(project, ("data",)) == before
    fetch = next(r for r in reversed(mlflow_runs(project)) if r.info.run_name == "fetch")
    assert fetch.info.status == "FAILED"
    parent = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(
        fetch.data.tags["mlflow.parentRunId"]
    )
    assert parent.info.status == "FAILED"


def test_a_read_only_store_is_one_error_and_keeps_outputs_and_dvc_lock(odd_columns_project):
    project = odd_columns_project
    if not (project / "mlflow.db").is_file():
        run(["churnlab", "fetch"], project)
    before = outputs(project, ("data",))
    with unwritable(project / "mlflow.db"):
        result = run(["dvc", "repro", "fetch"], project, check=False)
    assert_one_clean_error(result, f"MLflow tracking store sqlite:///{project / 'mlflow.db'}")
    assert outputs(project, ("data",)) == before  # dvc.lock included


def test_a_full_disk_under_the_store_is_one_error(odd_columns_project, tmp_path):
    project = odd_columns_project
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    settings = project / SETTINGS_FILE
    saved = settings.read_bytes()
    try:
        set_param(project, SETTINGS_FILE, "tracking.uri", f"sqlite:///{disk / 'mlflow.db'}")
        run(["churnlab", "fetch"], project)  # the store on the small disk works
        with open(disk / "filler", "wb") as handle:  # then the disk fills up
            with pytest.raises(OSError):
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
        before = outputs(project, ("data",))
        result = run(["churnlab", "fetch"], project, check=False)
        assert_one_clean_error(result, f"MLflow tracking store sqlite:///{disk / 'mlflow.db'}")
        assert outputs(project, ("data",)) == before
    finally:
        settings.write_bytes(saved)
        subprocess.run(["umount", str(disk)], check=True)


def _fake_dvc_run(tmp_path, root, plan, environ=None):
    """A stand-in `dvc` process (FAKE_DVC) running stages (``stage=mode``) that record."""
    (tmp_path / "stage.py").write_text(SERVICE_STAGE)
    (tmp_path / "dvc").write_text(FAKE_DVC)
    return subprocess.run(
        [sys.executable, str(tmp_path / "dvc"), str(root), str(tmp_path / "stage.py"), *plan],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(environ or {})},
    )


def _service_pids(root: Path) -> set[int]:
    """The tracking services running for this project (by their command line)."""
    import psutil

    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        line = process.info["cmdline"] or []
        if "churnlab.tracking.service" in line and str(root) in line:
            found.add(process.info["pid"])
    return found


def test_the_next_pipeline_run_finds_the_service_waiting_with_its_own_parent(tmp_path):
    """A person's next `dvc exp run` finds MLflow imported and the store open: one service
    for both pipeline runs, each with its own parent run; it exits once idle long enough."""
    root = tracking_project(tmp_path / "project")
    environ = {service.IDLE_VARIABLE: "6"}
    for _ in range(2):
        done = _fake_dvc_run(tmp_path, root, ["prepare=ok", "train=ok"], environ)
        assert done.stdout == "no mlflow\n" * 2, done.stderr
        assert len(_service_pids(root)) == 1
    runs = mlflow_runs(root)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and len(runs) == 6
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == ["prepare", "train"]
        assert {r.info.status for r in children} == {"FINISHED"}
    deadline = time.monotonic() + 30
    while _service_pids(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _service_pids(root)  # idle for 6 s: gone
    assert not service.socket_path(root, load_settings(root).uri).exists()


def test_a_store_made_anew_gets_a_new_service_and_keeps_every_run(tmp_path):
    """`make clean` deletes the store between two runs: MLflow's connections in a waiting
    service would write into the deleted file. The service gives its name up and the stage
    starts a new one: the new store has the second run's runs."""
    root = tracking_project(tmp_path / "project")
    environ = {service.IDLE_VARIABLE: "30"}
    assert _fake_dvc_run(tmp_path, root, ["prepare=ok"], environ).returncode == 0
    (first,) = _service_pids(root)
    (root / "mlflow.db").unlink()
    done = _fake_dvc_run(tmp_path, root, ["prepare=ok", "train=ok"], environ)
    assert done.returncode == 0 and done.stdout == "no mlflow\n" * 2, done.stderr
    runs = mlflow_runs(root)
    assert sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags) == [
        "prepare",
        "train",
    ]
    deadline = time.monotonic() + 30  # the old service exits once it has nothing queued
    while first in _service_pids(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_service_pids(root) - {first}) == 1 and first not in _service_pids(root)


def test_edited_code_gets_a_new_service():
    """A waiting service runs the code it started with: an edited churnlab module (its
    time changes) names another socket, so the next stage starts a service on the new code."""
    root, uri = Path("/tmp/project"), "sqlite:////tmp/project/mlflow.db"
    before = service.socket_path(root, uri)
    source = Path(service.__file__)
    times = source.stat()
    try:
        os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000_000))
        assert service.socket_path(root, uri) != before
    finally:
        os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert service.socket_path(root, uri) == before


def test_a_bad_idle_time_is_one_clear_error():
    with pytest.raises(ChurnlabError, match="CHURNLAB_TRACKING_SERVICE_IDLE='soon'"):
        service.idle_seconds({service.IDLE_VARIABLE: "soon"})
    assert service.idle_seconds({}) == service.IDLE_S


def test_a_temporary_experiment_copy_does_not_keep_its_service_long(tmp_path):
    """`dvc exp run --temp` and queued experiments run in copies under .dvc/tmp/exps/ that
    no later run uses: their service waits 30 s, not the 10 minutes of the project's own."""
    copy = tracking_project(tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc")
    done = _fake_dvc_run(tmp_path, copy, ["prepare=ok"], {service.IDLE_VARIABLE: "600"})
    assert done.returncode == 0, done.stderr
    import psutil

    (pid,) = _service_pids(copy)
    assert psutil.Process(pid).cmdline()[-1] == str(service.TEMPORARY_IDLE_S)
