"""Binding a stage's params to its notebook's parameters cell, both ways checked."""

from pathlib import Path

import pytest
from demo_stage import make_project

from churnlab.errors import ChurnlabError
from churnlab.pipeline.binding import bind_parameters
from churnlab.pipeline.execute import run_stage
from churnlab.pipeline.stages import load_stage, parameter_name

from conftest import ROOT


def test_a_stage_gets_exactly_its_param_keys(tmp_path):
    stage = load_stage(make_project(tmp_path, "ok.py"), "demo")
    assert stage.values == {"paths.result": "out/result.txt", "demo.n": 2}
    assert bind_parameters(stage, {"paths_result", "demo_n"}) == {
        "paths_result": "out/result.txt",
        "demo_n": 2,
    }
    assert stage.notebook == Path("notebooks/demo.py")


def test_a_whole_section_is_passed_per_key_unless_declared_by_name():
    stage = load_stage(ROOT, "train")
    assert stage.values["train"]["cv_folds"] == 5
    paths = {parameter_name(k) for k in stage.values if k != "train"}
    per_key = bind_parameters(stage, paths | {f"train_{k}" for k in stage.values["train"]})
    assert per_key["train_cv_folds"] == 5
    with pytest.raises(ChurnlabError, match=r"\[.*'train_cv_folds', .*not declared"):
        bind_parameters(stage, paths | {"train_seed"})
    assert bind_parameters(stage, paths | {"train"})["train"] == stage.values["train"]


def test_a_notebook_without_a_parameters_cell_is_an_error(tmp_path):
    root = make_project(tmp_path, "no_parameters.py")
    with pytest.raises(
        ChurnlabError, match="expected exactly one cell tagged 'parameters', found 0"
    ):
        run_stage("demo", root=root, progress=False)


def test_a_parameter_the_notebook_does_not_declare_is_an_error(tmp_path):
    root = make_project(tmp_path, "undeclared.py")
    with pytest.raises(ChurnlabError) as error:
        run_stage("demo", root=root, progress=False)
    assert (
        "['params/demo.yaml:demo.n'] passed by stage 'demo' as ['demo_n'] are not "
        "declared" in str(error.value)
    )


def test_a_declared_parameter_the_stage_does_not_pass_is_an_error(tmp_path):
    root = make_project(tmp_path, "extra_parameter.py")
    with pytest.raises(
        ChurnlabError,
        match=r"\['demo_colour'\] of the parameters cell are "
        r"not passed by stage 'demo'",
    ):
        run_stage("demo", root=root, progress=False)
