"""MLflow tracking on real stores: settings, stage runs, faults, the registry, and a
PostgreSQL server.

The embedded SQLite store is used by every test here; the team mode runs the same logging and
registry flow against a real PostgreSQL 15 and ``mlflow server`` that the fixture starts. The
registry tests run the real stages (``churnlab fetch``, ``churnlab run ...``) on the small-data
profile in a temporary copy of the project with its own store.
"""

import hashlib
import itertools
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
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from churnlab.data import ID_COLUMN, TARGET_COLUMN
from churnlab.errors import ChurnlabError
from churnlab.model import predict_scores
from churnlab.pipeline.stages import load_stage
from churnlab.tracking import (
    SETTINGS_FILE,
    Tracker,
    display_uri,
    load_champion,
    load_settings,
    mlflow_key_part,
    promotion_decision,
    record_stage,
)

from conftest import (
    ROOT,
    apt_install,
    assert_champion_scores_like_the_model_file,
    copy_project,
    free_port,
    pipeline_model,
    registered_model,
    run,
    set_param,
    tool_env,
    unwritable,
)


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
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    name = registered_model(root)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    with Tracker.open(root).stage_run("prepare", {}, set()):
        pass
    assert client.search_model_versions(f"name = '{name}'") == []  # no orphan version
    statuses = sorted((r.info.run_name.split()[0], r.info.status) for r in runs(root))
    assert statuses == [
        ("pipeline", "FINISHED"),
        ("pipeline", "KILLED"),
        ("prepare", "FINISHED"),
        ("prepare", "KILLED"),
    ]


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
    (project / "own").mkdir()
    table.to_csv(project / "own" / "accounts.csv", index=False)
    set_param(project, "params/data.yaml", "data.source", "own/accounts.csv")
    set_param(project, "params/data.yaml", "data.sha256", None)
    schema = {
        "id_column": "account",
        "target": "left",
        "positive_label": "yes",
        "negative_label": "no",
        "numeric": {"é": {"min": 0, "max": 100}, "€": {"min": 0, "max": 100}},
        "categorical": {"Contract (type)": ["monthly", "yearly"]},
    }
    set_param(project, "params/data.yaml", "schema", schema)
    return project


def outputs(project: Path, folders=("data", "models", "metrics", "plots", "reports")) -> dict:
    """SHA-256 of dvc.lock and every output file of a project."""
    files = [project / "dvc.lock"]
    for folder in folders:
        files += sorted(p for p in (project / folder).rglob("*") if p.is_file())
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_one_clean_error(result, *expected: str) -> None:
    assert result.returncode != 0
    assert result.stderr.count("churnlab: error:") == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]


def test_column_names_mlflow_refuses_are_logged_as_escaped_param_keys(odd_columns_project):
    project = odd_columns_project
    run(["churnlab", "fetch"], project)
    fetch = next(r for r in reversed(runs(project)) if r.info.run_name == "fetch")
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
    source = project / "own" / "accounts.csv"
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
    fetch = next(r for r in reversed(runs(project)) if r.info.run_name == "fetch")
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


# --- the registry: a small pipeline with its own store -----------------------------------------


@pytest.fixture(scope="module")
def registered_project(tmp_path_factory) -> Path:
    """A project copy after fetch, prepare, train and evaluate on the small-data profile
    (2,000 customers), logged to its own store: version 1 is the champion."""
    project = copy_project(tmp_path_factory.mktemp("registry") / "project")
    profile = yaml.safe_load((ROOT / "params" / "profiles" / "ci.yaml").read_text())
    profile["evaluate.importance_repeats"] = 1  # evaluation-only, and faster
    for key, value in profile.items():
        set_param(project, f"params/{key.split('.')[0]}.yaml", key, value)
    run(["churnlab", "fetch"], project)
    for stage in ("prepare", "train", "evaluate"):
        run(["churnlab", "run", stage], project)
    return project


def registry_state(project: Path) -> dict:
    """The versions of the registered model and where its aliases point."""
    client = mlflow.MlflowClient(load_settings(project, {}).uri)
    name = registered_model(project)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    aliases = client.get_registered_model(name).aliases
    return {"versions": versions, "aliases": {k: int(v) for k, v in aliases.items()}}


def promotion(project: Path) -> dict:
    return json.loads((project / "reports" / "promotion.json").read_text())


def test_the_first_model_is_registered_as_champion_and_loads_by_alias(registered_project):
    project = registered_project
    assert registry_state(project)["aliases"] == {"champion": 1, "challenger": 1}
    decision = promotion(project)
    assert decision["promoted"] is True and decision["reason"] == "there was no champion"
    assert_champion_scores_like_the_model_file(project)


def test_a_failure_after_registration_leaves_the_registry_as_it_was(registered_project):
    """The promotion record cannot be written (its folder is unwritable): the stage fails
    after the model was registered, and no alias may point at the failed run's model."""
    project = registered_project
    record = project / "reports" / "promotion.json"
    before = registry_state(project)
    outs = outputs(project, ("models", "metrics", "plots", "reports"))
    saved = record.read_bytes()
    record.unlink()  # only then does the write of the record fail, after registration
    try:
        with unwritable(project / "reports"):
            result = run(["churnlab", "run", "evaluate"], project, check=False)
    finally:
        record.write_bytes(saved)
    assert_one_clean_error(result, "reports/promotion.json: cannot write the promotion record")
    assert registry_state(project) == before
    assert outputs(project, ("models", "metrics", "plots", "reports")) == outs
    evaluate = next(r for r in reversed(runs(project)) if r.info.run_name == "evaluate")
    assert evaluate.info.status == "FAILED"


def test_a_read_only_store_fails_a_notebook_stage_before_it_runs(registered_project):
    project = registered_project
    before, outs = registry_state(project), outputs(project)
    with unwritable(project / "mlflow.db"):
        result = run(["churnlab", "run", "evaluate"], project, check=False)
    assert_one_clean_error(result, f"MLflow tracking store sqlite:///{project / 'mlflow.db'}")
    assert outputs(project) == outs
    assert registry_state(project) == before


def test_untracked_evaluation_still_writes_its_promotion_record(registered_project):
    project = registered_project
    before = registry_state(project)
    saved = (project / "reports" / "promotion.json").read_bytes()
    env = {**tool_env(), "CHURNLAB_TRACKING": "off"}
    try:
        subprocess.run(
            ["churnlab", "run", "evaluate"], cwd=project, env=env, check=True, capture_output=True
        )
        decision = promotion(project)
    finally:
        (project / "reports" / "promotion.json").write_bytes(saved)
    assert decision["outcome"] == "not registered" and decision["tracked"] is False
    assert registry_state(project) == before
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert {"${paths.promotion}": {"persist": True}} in stages["evaluate"]["outs"]


def test_models_are_compared_only_on_customers_neither_was_trained_on(registered_project):
    """New data cut from the same customers: the champion is scored only on test customers
    it did not train on; with too few of them the champion is kept, and says why."""
    project = registered_project
    champion_model, features, _ = pipeline_model(project)
    champion_trained = set(pd.read_parquet(project / "data/prepared/train.parquet")[ID_COLUMN])
    champion_version = registry_state(project)["aliases"]["champion"]
    seed = yaml.safe_load((project / "params/prepare.yaml").read_text())["prepare"]["seed"]
    set_param(project, "params/prepare.yaml", "prepare.seed", seed + 1)  # another cut and split
    set_param(project, SETTINGS_FILE, "tracking.promotion.min_customers", 100_000)
    for stage in ("prepare", "train", "evaluate"):
        run(["churnlab", "run", stage], project)
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    unseen = ~test[ID_COLUMN].isin(champion_trained).to_numpy()
    assert 0 < unseen.sum() < len(test)  # the new test split holds some of its customers
    decision = promotion(project)
    assert decision["outcome"] == "not compared" and decision["promoted"] is False
    assert decision["compared_customers"] == unseen.sum()
    assert "cannot be compared" in decision["reason"] and "min_customers" in decision["reason"]
    state = registry_state(project)
    assert state["aliases"]["champion"] == champion_version
    assert state["aliases"]["challenger"] == state["versions"][-1]

    set_param(project, SETTINGS_FILE, "tracking.promotion.min_customers", 50)
    run(["churnlab", "run", "evaluate"], project)
    decision = promotion(project)
    assert decision["compared_customers"] == unseen.sum()
    labels = test[TARGET_COLUMN].to_numpy()[unseen]
    challenger, _, _ = pipeline_model(project)
    assert decision["champion_before"]["score"] == roc_auc_score(
        labels, predict_scores(champion_model, test[unseen], features)
    )
    assert decision["challenger"]["score"] == roc_auc_score(
        labels, predict_scores(challenger, test[unseen], features)
    )


def other_schema_table(rows: int = 800, seed: int = 3) -> pd.DataFrame:
    """Accounts with other columns than Telco's and a yes/no target a model can learn."""
    rng = np.random.default_rng(seed)
    usage = rng.normal(size=rows)
    months = rng.integers(1, 60, rows)
    plan = rng.choice(["basic", "plus"], rows)
    logit = -0.6 - 2.5 * usage - 0.03 * (months - 30) + 0.8 * (plan == "basic")
    left = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "account_id": [f"acc-{i:05d}" for i in range(rows)],
            "months_active": months,
            "weekly_usage": usage.round(3),
            "plan": plan,
            "cancelled": np.where(left, "yes", "no"),
        }
    )


def test_a_champion_of_another_schema_starts_a_new_lineage(registered_project, tmp_path):
    """After the default data, the user's own table of other columns: a clear decision,
    no crash, one new version only."""
    project = tmp_path / "project"
    shutil.copytree(registered_project, project, symlinks=True)
    (project / "own").mkdir()
    other_schema_table().to_csv(project / "own" / "accounts.csv", index=False)
    set_param(project, "params/data.yaml", "data.source", "own/accounts.csv")
    set_param(project, "params/data.yaml", "data.sha256", None)
    schema = {
        "id_column": "account_id",
        "target": "cancelled",
        "positive_label": "yes",
        "negative_label": "no",
        "numeric": {
            "months_active": {"min": 0, "max": 600},
            "weekly_usage": {"min": -10, "max": 10},
        },
        "categorical": {"plan": ["basic", "plus"]},
    }
    set_param(project, "params/data.yaml", "schema", schema)
    set_param(project, "params/prepare.yaml", "prepare.fill_missing", {})
    set_param(project, "params/prepare.yaml", "prepare.sample_rows", None)
    before = registry_state(project)
    run(["churnlab", "fetch"], project)
    for stage in ("prepare", "train", "evaluate"):
        run(["churnlab", "run", stage], project)
    decision = promotion(project)
    assert decision["outcome"] == "new lineage" and decision["promoted"] is True
    assert "takes other inputs" in decision["reason"]
    assert "columns the data no longer has" in decision["reason"].replace("(s)", "s")
    added = "the data has 3 column(s) it does not take: months_active, plan, weekly_usage"
    assert added in decision["reason"]
    state = registry_state(project)
    assert state["versions"] == [*before["versions"], before["versions"][-1] + 1]
    assert state["aliases"]["champion"] == state["aliases"]["challenger"]
    assert state["aliases"]["champion"] == state["versions"][-1]
    assert_champion_scores_like_the_model_file(project)


def test_a_tampered_champion_file_is_a_churnlab_error_naming_version_and_file(
    registered_project,
):
    project = registered_project
    settings = load_settings(project, {})
    client = mlflow.MlflowClient(settings.uri)
    version = client.get_model_version_by_alias(settings.registered_model, "champion").version
    folder = client.get_model_version_download_uri(settings.registered_model, version)
    model_file = Path(folder.removeprefix("file://")) / "model.skops"
    saved = model_file.read_bytes()
    try:
        model_file.write_bytes(saved[: len(saved) // 2])  # cut short: not a zip any more
        with pytest.raises(
            ChurnlabError,
            match=rf"version {version}: the model file .*model\.skops cannot be loaded",
        ):
            load_champion(project)
    finally:
        model_file.write_bytes(saved)
    load_champion(project)


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


def test_the_registry_flow_on_postgresql(team_server, registered_project, monkeypatch):
    """Log the evaluate stage's results and model to the server, register, promote, load.

    (Keeping the champion when a challenger is not better is checked on the embedded store by
    the experiment in test_pipeline.py, and the decision rule in test_promotion_needs_the_margin.)
    """
    url, _ = team_server
    project = registered_project
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
    champion = client.get_model_version_by_alias(registered_model(project), "champion")
    challenger = client.get_model_version_by_alias(registered_model(project), "challenger")
    assert champion.version == challenger.version == "1"
    run = client.get_run(challenger.run_id)
    metrics = json.loads((project / "metrics" / "test.json").read_text())
    assert run.data.metrics["test.roc_auc"] == metrics["roc_auc"]
    assert run.data.tags["promotion.decision"] == "promoted"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test.roc_auc"] == metrics["roc_auc"]
    assert_champion_scores_like_the_model_file(project)  # from the server, by alias
