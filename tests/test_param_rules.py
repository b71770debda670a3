"""The one declaration of what every param may be, and its check before any stage runs."""

import copy
import shutil
import subprocess
from pathlib import Path

import pytest

from churnlab.config import load_param_files, read_yaml
from churnlab.errors import ChurnlabError
from churnlab.param_rules import check_params, check_section, param_problems

from conftest import DEFAULTS, ROOT, copy_project, set_param, tool_env

STAGES = list(read_yaml(ROOT / "dvc.yaml")["stages"])


def shipped() -> dict:
    return copy.deepcopy(load_param_files(DEFAULTS))


def changed(file_name: str, dotted: str, value) -> dict:
    files = shipped()
    node = files[file_name]
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return files


def test_the_shipped_params_pass_without_a_warning():
    assert param_problems(shipped(), STAGES) == ([], [])


def test_the_projects_own_params_pass():
    check_params(ROOT)


@pytest.mark.parametrize(
    ("file_name", "key", "value", "message"),
    [
        (
            "params/train.yaml",
            "train.cv_folds",
            "five",
            "params/train.yaml: train.cv_folds: expected an integer from 2 to 20, found 'five' "
            "(each fold fits the model once more",
        ),
        (
            "params/train.yaml",
            "train.cv_folds",
            2000,
            "params/train.yaml: train.cv_folds: expected an integer from 2 to 20, found 2000",
        ),
        (
            "params/prepare.yaml",
            "prepare.sample_rows",
            "abc",
            "params/prepare.yaml: prepare.sample_rows: expected an integer of at least 20, or "
            "null, found 'abc'",
        ),
        (
            "params/evaluate.yaml",
            "evaluate.top_fraction",
            1.5,
            "params/evaluate.yaml: evaluate.top_fraction: expected a number above 0 and at most "
            "1, found 1.5",
        ),
        (
            "params/explore.yaml",
            "explore.bands",
            0,
            "params/explore.yaml: explore.bands: expected an integer from 2 to 50, found 0",
        ),
        (
            "params/tracking.yaml",
            "tracking.register_stage",
            "evaluat",
            "params/tracking.yaml: tracking.register_stage: expected a stage of dvc.yaml "
            "(fetch, explore, prepare, train, evaluate, report), found 'evaluat' (no model "
            "would ever be logged or registered)",
        ),
        (
            "params/explore.yaml",
            "explore.segments",
            ["Contract", "tenure"],
            "params/explore.yaml: explore.segments[1]: expected a column of params/data.yaml "
            "schema.categorical (gender, SeniorCitizen, ",
        ),
        (
            "params/tracking.yaml",
            "tracking.enabled",
            "yes",
            "params/tracking.yaml: tracking.enabled: expected true or false, found 'yes'",
        ),
        (
            "params/data.yaml",
            "schema.target",
            True,
            "params/data.yaml: schema.target: expected a non-empty text, found true (YAML reads "
            "unquoted yes/no/on/off as true/false",
        ),
        (
            "params/evaluate.yaml",
            "evaluate.gates.min_rocauc",
            0.8,
            "params/evaluate.yaml: evaluate.gates.min_rocauc: unknown key (a typo?); known: ",
        ),
        (
            "params/prepare.yaml",
            "prepare.fill_missing",
            {"Contract": 0},
            "params/prepare.yaml: prepare.fill_missing.Contract: expected a numeric column",
        ),
        (
            "params/monitor.yaml",
            "monitor.threshold_quantile",
            1.5,
            "params/monitor.yaml: monitor.threshold_quantile: expected a number of at least 0.5 "
            "and below 1, found 1.5",
        ),
        (
            "params/monitor.yaml",
            "monitor.reference_month",
            "2025-13",
            "params/monitor.yaml: monitor.reference_month: expected a month as YYYY-MM, found "
            "'2025-13'",
        ),
        (
            "params/monitor.yaml",
            "monitor.simulate.format",
            "xlsx",
            "params/monitor.yaml: monitor.simulate.format: expected one of 'parquet', 'csv', "
            "found 'xlsx'",
        ),
        (
            "params/score.yaml",
            "score.max_reject_fraction",
            5,
            "params/score.yaml: score.max_reject_fraction: expected a number from 0 to 1, "
            "found 5",
        ),
        (
            "params/score.yaml",
            "score.reject",
            "{stem}.bad{suffix}",
            "params/score.yaml: score.reject: unknown key (a typo?); known: ",
        ),
    ],
)
def test_a_wrong_param_names_file_key_expected_and_found(file_name, key, value, message):
    errors, _ = param_problems(changed(file_name, key, value), STAGES)
    assert len(errors) == 1, errors
    assert errors[0].startswith(message), errors[0]


def test_a_simulated_scenario_kind_is_checked_but_not_its_column():
    """The scenario's columns are Telco defaults: a user's own schema must not stop the
    pipeline over them (churnlab simulate checks them: tests/test_monitoring_simulate.py)."""
    files = shipped()
    scenarios = files["params/monitor.yaml"]["monitor"]["simulate"]["scenarios"]
    scenarios[1]["column"] = "no-such-column"
    scenarios[0]["kind"] = "price_war"
    errors, _ = param_problems(files, STAGES)
    assert errors == [
        "params/monitor.yaml: monitor.simulate.scenarios[0].kind: expected one of "
        "'category_mix', 'numeric_shift', 'concept_drift', 'missing_column', 'blank_column', "
        "'new_category', found 'price_war'",
    ]


def test_a_numeric_segment_is_named_as_numeric():
    errors, _ = param_problems(changed("params/explore.yaml", "explore.segments", ["tenure"]), [])
    assert errors[0].endswith(
        "found 'tenure' (a numeric column: numeric columns are shown in bands (explore.bands))"
    )


def test_a_missing_key_is_named():
    files = shipped()
    del files["params/train.yaml"]["train"]["seed"]
    errors, _ = param_problems(files, STAGES)
    assert errors == [
        "params/train.yaml: train.seed: expected an integer from 0 to 4,294,967,295, found "
        "nothing (the key is missing)"
    ]


def test_tracking_settings_are_checked_by_the_same_declaration():
    with pytest.raises(ChurnlabError, match=r"params/tracking.yaml: tracking.promotion.margin: "):
        check_section(
            "params/tracking.yaml",
            "tracking",
            changed("params/tracking.yaml", "tracking.promotion.margin", -1)[
                "params/tracking.yaml"
            ]["tracking"],
        )


def small_project(tmp_path: Path) -> Path:
    """dvc.yaml and params/ of the project: all that check_params reads."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(DEFAULTS / "params", tmp_path / "params")
    return tmp_path


def test_a_deleted_tracking_file_is_a_warning_at_each_check(tmp_path, capsys):
    root = small_project(tmp_path)
    check_params(root)
    assert capsys.readouterr().err == ""
    (root / "params" / "tracking.yaml").unlink()
    check_params(root)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "churnlab: warning: params/tracking.yaml: not found: this run is not recorded in MLflow "
        "and no model is registered or promoted; restore it (git checkout params/tracking.yaml),"
        " or keep it with `enabled: false` to switch tracking off without this warning"
    ]


def test_overrides_are_checked_too(tmp_path):
    root = small_project(tmp_path)
    with pytest.raises(ChurnlabError, match="train.cv_folds: expected an integer from 2 to 20"):
        check_params(root, {"train.cv_folds": "five"})
    with pytest.raises(ChurnlabError, match="evaluate.top_fraction"):
        check_params(root, {"params/evaluate.yaml:evaluate.top_fraction": 1.5})


def test_several_problems_are_one_line_naming_the_first(tmp_path):
    root = small_project(tmp_path)
    set_param(root, "params/train.yaml", "train.cv_folds", "five")
    set_param(root, "params/explore.yaml", "explore.bands", 0)
    with pytest.raises(ChurnlabError) as error:
        check_params(root)
    assert "\n" not in str(error.value)
    assert str(error.value).endswith("[and 1 more problem(s) after this one]")


@pytest.fixture(scope="module")
def cli_project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("params") / "project")


@pytest.mark.parametrize("command", [["run", "train"], ["fetch"], ["report"]])
def test_every_command_refuses_a_wrong_param_before_it_starts(cli_project, command):
    original = (cli_project / "params" / "train.yaml").read_bytes()
    set_param(cli_project, "params/train.yaml", "train.cv_folds", "five")
    try:
        env = {**tool_env(), "CHURNLAB_TRACKING": "off"}
        proc = subprocess.run(
            ["churnlab", *command], cwd=cli_project, env=env, capture_output=True, text=True
        )
    finally:
        (cli_project / "params" / "train.yaml").write_bytes(original)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "churnlab: error: params/train.yaml: train.cv_folds: expected an integer from 2 to 20, "
        "found 'five' (each fold fits the model once more: more than 20 barely changes the "
        "estimate and multiplies the run time)"
    ]
    for nothing_written in ("data/raw/churn.csv", "reports/index.html", ".churnlab", "mlflow.db"):
        assert not (cli_project / nothing_written).exists()
