"""The baseline: the committed record the report compares the current model with."""

import json
import shutil

import pytest
from report_tables import METRICS

from churnlab.cli import main
from churnlab.config import load_params
from churnlab.errors import ChurnlabError
from churnlab.report.baseline import (
    compare_with_baseline,
    load_baseline,
    model_record,
    write_baseline,
)

from conftest import DEFAULTS, set_param

CV = {"folds": 5, "roc_auc_mean": 0.83, "roc_auc_std": 0.01}


def test_what_changed_against_the_baseline():
    current = {"metrics": METRICS, "params": {"train": {"family": "gb"}}, "data": {"sha256": "a"}}
    assert compare_with_baseline(current, None)["status"] == "none"
    assert compare_with_baseline(current, current)["status"] == "identical"
    worse = {**METRICS, "roc_auc": 0.80, "brier": 0.150}
    baseline = {
        "metrics": worse,
        "params": {"train": {"family": "lr"}},
        "data": {"sha256": "b"},
        "commit": "abc",
    }
    change = compare_with_baseline(current, baseline)
    rows = {r["metric"]: r for r in change["metrics"]}
    assert rows["roc_auc"]["delta"] == pytest.approx(0.04)
    assert rows["roc_auc"]["direction"] == "better"
    assert rows["brier"]["direction"] == "better"  # lower Brier is better
    assert change["params"] == [{"key": "train.family", "baseline": "lr", "current": "gb"}]
    assert change["same_data"] is False and change["status"] == "different"


@pytest.fixture
def evaluated(tmp_path):
    """A project with the default params and the test and cv metrics of an evaluated model."""
    shutil.copytree(DEFAULTS / "params", tmp_path / "params")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "test.json").write_text(json.dumps(METRICS))
    (tmp_path / "metrics" / "cv.json").write_text(json.dumps(CV))
    return tmp_path


def test_churnlab_baseline_writes_the_record_the_report_then_finds_identical(
    evaluated, monkeypatch
):
    params = load_params(evaluated)
    paths = params["paths"]
    assert load_baseline(evaluated, params) is None  # before: nothing to compare with
    monkeypatch.chdir(evaluated)
    assert main(["baseline"]) == 0
    written = json.loads((evaluated / paths["baseline"]).read_text())
    assert list(written) == ["baseline"] and written["baseline"]["metrics"] == METRICS
    current = model_record(params, METRICS, CV)
    assert compare_with_baseline(current, load_baseline(evaluated, params))["status"] == "identical"
    set_param(evaluated, "params/train.yaml", "train.cv_folds", 3)
    changed = model_record(load_params(evaluated), METRICS, CV)
    comparison = compare_with_baseline(changed, load_baseline(evaluated, params))
    assert comparison["status"] == "different"
    assert comparison["params"] == [
        {"key": "train.cv_folds", "baseline": params["train"]["cv_folds"], "current": 3}
    ]


def test_a_secret_param_is_masked_in_the_baseline_file(evaluated):
    set_param(evaluated, "params/train.yaml", "train.api_token", "canary-0c41d2-token")
    target = write_baseline(evaluated)
    assert "canary-0c41d2" not in target.read_text()
    assert json.loads(target.read_text())["baseline"]["params"]["train"]["api_token"] == "***"


def test_without_test_metrics_no_baseline_is_written_and_the_error_says_what_to_run(
    evaluated, monkeypatch, capsys
):
    (evaluated / "metrics" / "test.json").unlink()
    monkeypatch.chdir(evaluated)
    assert main(["baseline"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("churnlab: error: ") and "metrics/test.json: not found" in error
    assert "run `dvc repro` first" in error
    assert not (evaluated / "metrics" / "baseline.json").exists()


def test_a_file_without_the_baseline_key_is_an_error_not_no_baseline(evaluated):
    """A record from before the rename (key 'champion') must not read as "no baseline yet"."""
    params = load_params(evaluated)
    (evaluated / "metrics" / "baseline.json").write_text(json.dumps({"champion": {"cv": CV}}))
    with pytest.raises(ChurnlabError, match=r"metrics/baseline.json: expected the key 'baseline'"):
        load_baseline(evaluated, params)
    (evaluated / "metrics" / "baseline.json").write_text("[]")
    with pytest.raises(ChurnlabError, match="found list"):
        load_baseline(evaluated, params)
