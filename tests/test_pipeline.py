"""End to end: the whole pipeline in a fresh copy of the project, run by DVC.

One ``dvc repro`` on the default data; its metrics must equal the committed ones bit for
bit and the copy's git tree must stay clean (so ``dvc.lock`` itself reproduces). The same
copy then serves the model-quality tests, the no-op and param-change behaviour, an
experiment, the DVC remote, and every bad input (each must fail with a clear message and
leave ``dvc.lock`` and the earlier outputs untouched).
"""

import hashlib
import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from demo_stage import unwritable
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from churnlab.config import flatten
from churnlab.data import TARGET_COLUMN
from churnlab.model import predict_scores
from churnlab.pipeline.stages import load_stage
from churnlab.secrets import masked_params
from churnlab.tracking.lineage import metric_values
from churnlab.tracking.settings import fluent_uri

from conftest import (
    ROOT,
    assert_champion_scores_like_the_model_file,
    committed_copy,
    free_port,
    pipeline_model,
    registered_model,
    run,
    set_param,
)

pytestmark = pytest.mark.pipeline
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "reports")


@pytest.fixture(scope="module")
def project(pipeline_project, tmp_path_factory):
    """The session's pipeline run, copied: these tests change it (and put it back)."""
    return committed_copy(pipeline_project, tmp_path_factory.mktemp("pipeline") / "project")


def snapshot(project: Path) -> dict[str, str]:
    """SHA-256 of dvc.lock and of every output file."""
    files = [project / "dvc.lock"]
    for folder in OUTPUT_FOLDERS:
        files += sorted(p for p in (project / folder).rglob("*") if p.is_file())
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def git_status(project: Path) -> str:
    return run(["git", "status", "--porcelain"], project).stdout


@pytest.fixture
def restore(project):
    """Put params and data back after a test that changes them."""
    before = snapshot(project)
    yield project
    run(["git", "checkout", "--", "."], project)
    run(["git", "clean", "-fdxq", "--", "data/own"], project)
    if snapshot(project) != before:  # only then: DVC takes a second or two to start
        run(["dvc", "checkout", "-q"], project)
    assert git_status(project) == ""


# --- reproducibility ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prepare.json", "cv.json", "test.json", "headline.json"])
def test_metrics_equal_the_committed_ones_bit_for_bit(user_project, name):
    assert (user_project / "metrics" / name).read_bytes() == (ROOT / "metrics" / name).read_bytes()


def test_the_run_leaves_git_clean_so_dvc_lock_reproduces(user_project):
    project = user_project
    changed = git_status(project)
    assert changed == "", run(["git", "diff", "--stat", "-p"], project).stdout[-3000:]


def test_a_run_with_nothing_changed_runs_nothing(project):
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


def test_saving_a_notebook_with_outputs_in_jupyterlab_leaves_the_stage_fresh(restore):
    project = restore
    notebook = project / "notebooks" / "03_train.ipynb"
    content = json.loads(notebook.read_text())
    for cell in content["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"] = 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
    notebook.write_text(json.dumps(content))
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


def test_the_executed_notebooks_and_reports_are_outputs(project):
    for stem in ("01_explore", "02_prepare", "03_train", "04_evaluate"):
        html = (project / "reports" / "notebooks" / f"{stem}.html").read_text()
        assert "<script" not in html.lower()
        assert not re.findall(
            r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//|url\(\s*[\"']?https?:", html
        )
        assert "injected-parameters" not in html
        executed = json.loads((project / "reports" / "notebooks" / f"{stem}.ipynb").read_text())
        assert "start_time" not in json.dumps(executed)


def test_the_report_shows_headline_numbers_computed_from_the_model(project):
    model, features, test = pipeline_model(project)
    labels = test[TARGET_COLUMN].to_numpy()
    scores = predict_scores(model, test, features)
    evaluate = yaml.safe_load((project / "params" / "evaluate.yaml").read_text())["evaluate"]
    top = np.argsort(-scores, kind="stable")[: round(evaluate["top_fraction"] * len(scores))]
    page = (project / "reports" / "index.html").read_text()
    assert f"{labels[top].mean():.0%}</div>" in page
    assert f"{labels[top].sum() / labels.sum():.0%}</div>" in page
    assert "This model is the baseline" in page
    sizes = [p.stat().st_size for p in (project / "reports").rglob("*.html")]
    assert len(sizes) == 6 and sum(sizes) < 5_000_000


# --- tracking: the copy's embedded MLflow store --------------------------------------------


def tracked_runs(project: Path):
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("churnlab")
    found = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000
    )
    return client, found


STAGES = ["fetch", "explore", "prepare", "train", "evaluate", "report"]


def test_the_pipeline_run_is_one_mlflow_run_with_a_run_per_stage(pipeline_project):
    project = pipeline_project  # read only: the run's own commit
    client, found = tracked_runs(project)
    parent = found[0]
    assert "mlflow.parentRunId" not in parent.data.tags
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [r.info.run_name for r in children] == STAGES
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}
    for name in STAGES:  # every param every stage read
        values = load_stage(project, name, notebook=name not in ("fetch", "report")).values
        for key, value in flatten(masked_params(values)).items():
            assert parent.data.params[key] == (
                value if isinstance(value, str) else json.dumps(value)
            )
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert parent.data.tags["git.commit"] == head and parent.data.tags["git.dirty"] == "false"
    evaluate = children[STAGES.index("evaluate")]
    artifacts = [a.path for a in client.list_artifacts(evaluate.info.run_id, "reports")]
    assert artifacts == ["reports/04_evaluate.html", "reports/04_evaluate.ipynb"]
    assert len(client.list_artifacts(evaluate.info.run_id, "figures")) == 2


def test_mlflow_shows_the_numbers_of_the_metrics_files_and_of_dvc_exp_show(project):
    _, found = tracked_runs(project)
    logged = found[0].data.metrics
    expected = {}
    for name in ("prepare", "cv", "test"):
        content = json.loads((project / "metrics" / f"{name}.json").read_text())
        expected.update(metric_values(name, content))
    assert {key: logged[key] for key in expected} == expected
    shown = json.loads(run(["dvc", "exp", "show", "--json", "--no-fetch"], project).stdout)
    workspace = next(entry for entry in shown if entry.get("rev") == "workspace")
    for path, content in workspace["data"]["metrics"].items():
        for key, value in metric_values(Path(path).stem, content["data"]).items():
            assert logged[key] == value, key


def test_the_data_lineage_matches_dvc(project):
    _, found = tracked_runs(project)
    tags = found[0].data.tags
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for out in lock["stages"]["prepare"]["outs"]:
        if out["path"].endswith(".parquet"):
            assert tags[f"lineage.{out['path']}.md5"] == out["md5"]
            rows = len(pd.read_parquet(project / out["path"]))
            assert tags[f"lineage.{out['path']}.rows"] == str(rows)
    data = lock["stages"]["fetch"]["params"]["params/data.yaml"]["data"]
    assert found[0].data.params["data.sha256"] == data["sha256"]
    assert tags["lineage.source.sha256"] == data["sha256"]
    assert tags["lineage.source.name"] == data["source"]


def test_the_champion_loads_by_alias_and_scores_like_the_pipeline_model(project):
    decision = json.loads((project / "reports" / "promotion.json").read_text())
    assert decision["promoted"] is True and decision["champion_before"] is None
    assert_champion_scores_like_the_model_file(project)
    features = json.loads((project / "models" / "features.json").read_text())
    with fluent_uri(f"sqlite:///{project / 'mlflow.db'}"):
        info = mlflow.models.get_model_info(f"models:/{registered_model(project)}@champion")
    assert info.signature.inputs.input_names() == features["numeric"] + features["categorical"]
    assert info.saved_input_example_info is not None


def test_dvc_checkout_restores_the_promotion_record(project):
    record = project / "reports" / "promotion.json"
    saved = record.read_bytes()
    record.unlink()
    run(["dvc", "checkout", "-q", "reports/promotion.json"], project)
    assert record.read_bytes() == saved


# --- model quality on the held-out customers ---------------------------------------------


def test_model_quality_meets_the_gates_in_params(user_project):
    """On the project's own configuration: its data, its gates."""
    project = user_project
    gates = yaml.safe_load((project / "params" / "evaluate.yaml").read_text())["evaluate"]
    gates = gates["gates"]
    model, features, test = pipeline_model(project)
    labels = test[TARGET_COLUMN].to_numpy()
    scores = predict_scores(model, test, features)
    threshold = json.loads((project / "metrics" / "test.json").read_text())["threshold"]
    predicted = (scores >= threshold).astype(int)
    assert roc_auc_score(labels, scores) >= gates["min_roc_auc"]
    assert accuracy_score(labels, predicted) >= gates["min_accuracy"]
    assert f1_score(labels, predicted) >= gates["min_f1"]
    assert recall_score(labels, predicted) >= gates["min_recall"]
    majority = np.full(len(labels), round(labels.mean()))
    assert f1_score(labels, predicted) > f1_score(labels, majority, zero_division=0)


def test_the_model_ranks_shorter_contracts_as_riskier(project):
    """A behaviour check: churn risk falls as the contract gets longer (Telco defaults)."""
    model, features, test = pipeline_model(project)
    if "Contract" not in features["categorical"]:
        pytest.skip("not the Telco data")
    means = [
        predict_scores(model, test.assign(Contract=value), features).mean()
        for value in ("Month-to-month", "One year", "Two year")
    ]
    assert means[0] > means[1] > means[2]


# --- params, experiments, remote ---------------------------------------------------------


def test_an_evaluation_param_reruns_evaluation_only_as_an_experiment(restore):
    """As the README shows it: ``.venv/bin/dvc`` from a shell with no environment activated."""
    project = restore
    if not (project / ".venv").exists():
        (project / ".venv").symlink_to(ROOT / ".venv")  # what `make setup` makes in a clone
    result = run(
        [
            str(ROOT / ".venv" / "bin" / "dvc"),
            "exp",
            "run",
            "-n",
            "cost-rule",
            "-S",
            "params/evaluate.yaml:evaluate.threshold_rule=cost",
            "-S",
            "params/evaluate.yaml:evaluate.importance_repeats=1",  # faster, evaluation-only
        ],
        project,
        path="/usr/local/bin:/usr/bin:/bin",
    )
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate':", "Running stage 'report':"]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert "cost-rule" in json.dumps(shown)
    # DVC reads the headline file by itself; the threshold is in the details, named as target
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    diff = diff.get("diff", diff)
    assert set(diff) == {"metrics/headline.json"} and "recall" in diff["metrics/headline.json"]
    diff = run(
        ["dvc", "metrics", "diff", "--json", "--targets", "metrics/test.json"], project
    ).stdout
    diff = json.loads(diff)
    diff = diff.get("diff", diff)
    assert (
        diff["metrics/test.json"]["threshold"]["new"]
        != diff["metrics/test.json"]["threshold"]["old"]
    )
    client, found = tracked_runs(project)
    parent = next(r for r in found if r.data.tags.get("dvc.experiment") == "cost-rule")
    assert parent.info.run_name == "cost-rule" and parent.info.status == "FINISHED"
    decision = json.loads((project / "reports" / "promotion.json").read_text())
    assert decision["promoted"] is False  # the same model: the champion is kept
    champion = client.get_model_version_by_alias(registered_model(project), "champion")
    assert int(champion.version) == decision["champion_before"]["version"]


def test_a_fresh_clone_pulls_from_the_local_remote(project, tmp_path):
    run(["dvc", "push", "-q"], project)
    clone = project.parent / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull", "-q"], clone)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    assert (clone / "models" / "model.skops").read_bytes() == (
        project / "models" / "model.skops"
    ).read_bytes()
    shutil.rmtree(clone)


# --- bad input: a clear error, nothing good lost -------------------------------------------


def own_data(project: Path, change) -> str:
    """A copy of the raw Telco data, changed, as the user's own file."""
    table = pd.read_csv(project / "data" / "raw" / "churn.csv", dtype=str, keep_default_na=False)
    path = project / "data" / "own" / "customers.csv"
    change(table).to_csv(path, index=False) if change else path.write_text("")
    run(["dvc", "add", "-q", "data/own/customers.csv"], project)  # own data is versioned
    return "data/own/customers.csv"


def set_cell(column, row, value):
    def change(table):
        table.loc[row, column] = value
        return table

    return change


BAD_DATA = {
    "missing column": (lambda t: t.drop(columns="Contract"), "missing column(s) ['Contract']"),
    "wrong type": (
        set_cell("tenure", 4, "twelve"),
        "column 'tenure', rule is a number: 1 rows, e.g. row 5: 'twelve'",
    ),
    "out of range": (
        set_cell("MonthlyCharges", 9, "-20"),
        "column 'MonthlyCharges', rule greater_than_or_equal_to(0)",
    ),
    "unknown category": (
        set_cell("PaymentMethod", 2, "Bitcoin"),
        "column 'PaymentMethod', rule isin(",
    ),
    "empty file": (None, "data/own/customers.csv: the file is empty"),
}


def assert_fails_cleanly(project: Path, expected: str, lines: int = 1):
    """``dvc repro`` fails with ``expected`` in ``lines`` churnlab error lines (0: DVC itself
    refuses first) and changes nothing."""
    before = snapshot(project)
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("churnlab: error:") == lines
    assert snapshot(project) == before


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_fails_with_a_clear_error_and_nothing_lost(restore, case):
    project = restore
    change, expected = BAD_DATA[case]
    set_param(project, "params/data.yaml", "data.source", own_data(project, change))
    set_param(project, "params/data.yaml", "data.sha256", None)
    assert_fails_cleanly(project, expected)


def test_a_checksum_mismatch_fails_cleanly(restore):
    set_param(restore, "params/data.yaml", "data.sha256", "0" * 64)
    assert_fails_cleanly(restore, "expected " + "0" * 64 + ", found 16320c9c")


def test_a_mistyped_param_key_fails_cleanly(restore):
    """A renamed key that stages declare: DVC refuses before any stage runs, naming both."""
    path = restore / "params" / "train.yaml"
    path.write_text(path.read_text().replace("  cv_folds:", "  cv_fold:"))
    assert_fails_cleanly(
        restore, "Parameters 'train.cv_folds' are missing from 'params/train.yaml'", lines=0
    )


def test_an_unknown_param_key_fails_cleanly(restore):
    set_param(restore, "params/train.yaml", "train.famliy", "logistic_regression")
    assert_fails_cleanly(restore, "params/train.yaml: train.famliy: unknown key (a typo?)")


def test_an_unknown_hyper_parameter_fails_cleanly(restore):
    set_param(restore, "params/train.yaml", "train.gradient_boosting.learnign_rate", 0.1)
    assert_fails_cleanly(
        restore, "train.gradient_boosting: unknown hyper-parameter(s) ['learnign_rate']"
    )


def test_a_missed_quality_gate_fails_the_notebook_cleanly(restore):
    client, _ = tracked_runs(restore)
    name = registered_model(restore)
    versions = len(client.search_model_versions(f"name = '{name}'"))
    set_param(restore, "params/evaluate.yaml", "evaluate.gates.min_roc_auc", 0.99)
    set_param(restore, "params/evaluate.yaml", "evaluate.importance_repeats", 1)  # faster
    assert_fails_cleanly(restore, "quality gate min_roc_auc missed: roc_auc = 0.")
    _, found = tracked_runs(restore)
    failed = found[-1]
    assert (failed.info.run_name, failed.info.status) == ("evaluate", "FAILED")
    parent = client.get_run(failed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    assert len(client.search_model_versions(f"name = '{name}'")) == versions


def test_an_unreachable_tracking_server_stops_before_any_output_changes(restore):
    uri = f"http://127.0.0.1:{free_port()}"
    set_param(restore, "params/tracking.yaml", "tracking.uri", uri)
    set_param(restore, "params/evaluate.yaml", "evaluate.threshold_rule", "cost")
    assert_fails_cleanly(restore, f"MLflow tracking store {uri} cannot be reached")


def test_an_unwritable_reports_folder_fails_the_report_stage_cleanly(restore):
    set_param(restore, "params/report.yaml", "report.title", "Churn, retitled")  # report re-runs
    with unwritable(restore / "reports"):
        assert_fails_cleanly(restore, "; make it writable (`chmod u+w`")
