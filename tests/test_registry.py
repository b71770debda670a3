"""The model registry and promotion on real stores, and a PostgreSQL server.

The registry tests run the real stages (``churnlab fetch``, ``churnlab run ...``) on the
small-data profile in a temporary copy of the project with its own SQLite store; the team mode
runs the same logging and registry flow against a real PostgreSQL 15 and ``mlflow server`` that
the fixture starts.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from churnlab.data import ID_COLUMN, TARGET_COLUMN
from churnlab.errors import ChurnlabError
from churnlab.model import build_model, fit_model, predict_scores, save_model
from churnlab.pipeline.stages import load_stage
from churnlab.tracking import server
from churnlab.tracking.promotion import promotion_decision
from churnlab.tracking.registry import load_champion, log_and_promote
from churnlab.tracking.runs import Tracker, record_stage, tracked_stage
from churnlab.tracking.settings import SETTINGS_FILE, fluent_uri, load_settings

from conftest import (
    ROOT,
    apt_install,
    assert_champion_scores_like_the_model_file,
    assert_one_clean_error,
    copy_project,
    free_port,
    mlflow_runs,
    outputs,
    pipeline_model,
    registered_model,
    run,
    set_param,
    switch_to_own_data,
    tool_env,
    unwritable,
)

# the registry tests run a small-data pipeline of their own
pytestmark = pytest.mark.pipeline

# --- the promotion rule ------------------------------------------------------------------


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


# --- the registry scores what its caller hands over -------------------------------------------


def customers(rows: int, seed: int, first: int = 0) -> pd.DataFrame:
    """Customers of a prepared split: an id, one numeric and one categorical feature, and a
    churn flag that depends on the numeric one."""
    rng = np.random.default_rng(seed)
    usage = rng.normal(size=rows)
    return pd.DataFrame(
        {
            ID_COLUMN: [f"c{i:05d}" for i in range(first, first + rows)],
            "usage": usage,
            "plan": rng.choice(["basic", "plus"], rows),
            TARGET_COLUMN: (rng.random(rows) < 1 / (1 + np.exp(2 * usage))).astype(int),
        }
    )


def test_the_registry_scores_the_model_and_data_its_caller_hands_over(tmp_path):
    """A model and splits that exist only in memory: the first model becomes champion; the
    second is compared with it on the handed-over test customers, none of them trained on."""
    (tmp_path / "params").mkdir()
    shutil.copy(ROOT / SETTINGS_FILE, tmp_path / SETTINGS_FILE)
    features = {"numeric": ["usage"], "categorical": ["plan"]}
    train, test = customers(600, seed=1), customers(400, seed=2, first=600)
    record = tmp_path / "promotion.json"
    tracker = Tracker.open(tmp_path)
    models, decisions = [], []
    for strength in (1.0, 0.001):  # two challengers that score differently
        blank = build_model(
            ["usage"], ["plan"], "logistic_regression", 0, logistic_regression={"C": strength}
        )
        models.append(fit_model(blank, train, ["usage"], ["plan"], TARGET_COLUMN))
        with tracker.stage_run("evaluate", {}, set()) as stage_run:
            decisions.append(
                log_and_promote(stage_run, models[-1], features, test, train[[ID_COLUMN]], record)
            )
    first, second = decisions
    assert first["outcome"] == "promoted" and first["reason"] == "there was no champion"
    assert second["compared_customers"] == second["test_customers"] == len(test)
    labels = test[TARGET_COLUMN]
    assert second["champion_before"] == {
        "version": 1,
        "score": roc_auc_score(labels, predict_scores(models[0], test, features)),
    }
    assert second["challenger"] == {
        "version": 2,
        "score": roc_auc_score(labels, predict_scores(models[1], test, features)),
    }
    assert json.loads(record.read_text()) == second
    aliases = tracker.client.get_registered_model(registered_model(tmp_path)).aliases
    assert {alias: int(version) for alias, version in aliases.items()} == {
        "challenger": 2,
        "champion": 2 if second["promoted"] else 1,
    }


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


def test_a_failure_after_registration_leaves_the_registry_as_it_was(registered_project, tmp_path):
    """The promotion record cannot be written (its folder is unwritable): the stage fails
    after the model was registered, and no alias may point at the failed run's model.

    The stage's own outputs cannot be made unwritable for this: the runner refuses them
    before the notebook runs. So the register step runs here on the stage's model and data
    with the record in a folder nobody may write.
    """
    project = registered_project
    before = registry_state(project)
    model, features, test = pipeline_model(project)
    training = pd.read_parquet(project / "data/prepared/train.parquet", columns=[ID_COLUMN])
    stage = load_stage(project, "evaluate")
    tracker = Tracker.open(project)
    locked = tmp_path / "locked"
    locked.mkdir()
    with (
        unwritable(locked),
        pytest.raises(ChurnlabError, match="promotion.json: cannot write the promotion record"),
        tracker.stage_run("evaluate", stage.values, set(stage.outs)) as stage_run,
    ):
        log_and_promote(stage_run, model, features, test, training, locked / "promotion.json")
    assert registry_state(project) == before
    evaluate = next(r for r in reversed(mlflow_runs(project)) if r.info.run_name == "evaluate")
    assert evaluate.info.status == "FAILED"
    logged = {a.path for a in tracker.client.list_artifacts(evaluate.info.run_id)}
    assert "training" in logged  # logged just before the registration, so it got that far


def test_a_read_only_store_fails_a_notebook_stage_and_changes_nothing(registered_project):
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


def test_a_model_file_changed_while_the_stage_ran_is_read_again(registered_project, tmp_path):
    """The register step reads the stage's input model ahead, while the notebook runs; a
    model file that changed meanwhile is the one scored and registered."""
    project = tmp_path / "project"
    shutil.copytree(registered_project, project, symlinks=True)
    stage = load_stage(project, "evaluate")
    first, features, test = pipeline_model(project)
    train = pd.read_parquet(project / "data/prepared/train.parquet")
    numeric, categorical = features["numeric"], features["categorical"]
    blank = build_model(
        numeric, categorical, "logistic_regression", 0, logistic_regression={"C": 1}
    )
    other = fit_model(blank, train, numeric, categorical, TARGET_COLUMN)
    with tracked_stage(project, stage, Tracker.open_in_background(project)) as pending:
        run = pending.result()
        assert run.challenger is not None, "the model was not read ahead"
        save_model(
            other, features, project / "models/model.skops", project / "models/features.json"
        )
        record_stage(run, project, stage)
    decision = promotion(project)
    labels = test[TARGET_COLUMN]
    expected = roc_auc_score(labels, predict_scores(other, test, features))
    assert expected != roc_auc_score(labels, predict_scores(first, test, features))
    assert decision["compared_customers"] == len(test)  # the champion never saw them
    assert decision["challenger"]["score"] == expected
    version = decision["challenger"]["version"]
    assert registry_state(project)["aliases"]["challenger"] == version
    with fluent_uri(load_settings(project, {}).uri):
        logged = mlflow.pyfunc.load_model(f"models:/{registered_model(project)}/{version}")
    served = np.asarray(logged.predict(test[numeric + categorical]))[:, 1]
    assert np.array_equal(served, predict_scores(other, test, features))


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
    other_schema_table().to_csv(project / "data" / "own" / "accounts.csv", index=False)
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
    switch_to_own_data(project, "data/own/accounts.csv", schema)
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
    # one new version only (its number may skip one a failed run registered and deleted)
    assert state["versions"][:-1] == before["versions"]
    assert state["versions"][-1] > before["versions"][-1]
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
