"""The model of dvc.yaml: a stage's param keys, overrides, unread keys, unknown stages."""

import pytest
import yaml
from demo_stage import make_project

from churnlab.errors import ChurnlabError
from churnlab.pipeline.execute import run_stage
from churnlab.pipeline.stages import check_unread_params, load_stage, parameter_name

from conftest import ROOT


def test_parameter_names_flatten_param_keys():
    assert parameter_name("train.cv_folds") == "train_cv_folds"


def test_overrides_reach_into_mappings_and_typos_are_errors():
    stage = load_stage(ROOT, "train", {"train.gradient_boosting.max_iter": 7})
    assert stage.values["train"]["gradient_boosting"]["max_iter"] == 7
    with pytest.raises(ChurnlabError, match="no such key in params"):
        load_stage(ROOT, "train", {"train.gradient_boosting.max_iterations": 7})
    with pytest.raises(
        ChurnlabError,
        match=r"stage 'train' does not read param\(s\) "
        r"\['evaluate.seed'\]",
    ):
        load_stage(ROOT, "train", {"evaluate.seed": 1})


def test_a_param_key_no_stage_reads_is_an_error(tmp_path):
    root = make_project(tmp_path, "ok.py")
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 2\n  m: 3\n")
    with pytest.raises(ChurnlabError, match="params/demo.yaml: key 'demo.m' is read by no stage"):
        run_stage("demo", root=root, progress=False)


def test_a_command_section_is_read_by_its_command_and_a_typo_in_it_is_still_refused():
    """params/monitor.yaml is read by churnlab monitor, not by a stage: the unread-key check
    passes over it without a listing in dvc.yaml, and its own rule refuses an unknown key."""
    from churnlab.param_rules import COMMAND_SECTIONS, param_problems

    assert "params/monitor.yaml" not in (yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"])
    check_unread_params(ROOT)
    for section in COMMAND_SECTIONS:
        file_name = f"params/{section}.yaml"
        content = yaml.safe_load((ROOT / file_name).read_text())
        content[section]["thresold"] = 1
        errors, _ = param_problems({file_name: content}, [])
        assert any(f"{file_name}: {section}.thresold: unknown key" in line for line in errors)


def test_an_unknown_stage_is_named(tmp_path):
    with pytest.raises(ChurnlabError, match="dvc.yaml: no stage 'trian'"):
        load_stage(ROOT, "trian")


def test_mlflow_records_dvcs_metrics_file_and_the_numbers_files_dvc_does_not_read():
    """DVC reads only the headline file (`dvc exp show` stays narrow); MLflow still records
    every JSON file a stage keeps in git, taken from dvc.yaml itself."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    paths = yaml.safe_load((ROOT / "params" / "paths.yaml").read_text())["paths"]
    declared = [next(iter(m)) for s in pipeline.values() for m in s.get("metrics") or []]
    assert declared == ["${paths.headline_metrics}"]
    recorded = {
        name: load_stage(ROOT, name, notebook=name not in ("fetch", "report")).metrics
        for name in pipeline
    }
    assert recorded["prepare"] == [paths["prepare_summary"]]
    assert recorded["train"] == [paths["cv_metrics"]]
    assert recorded["evaluate"] == [paths["headline_metrics"], paths["test_metrics"]]
    assert recorded["fetch"] == recorded["explore"] == recorded["report"] == []
