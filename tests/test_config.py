import pytest
import yaml

from churnlab.config import get_key, interpolate, load_params, project_root, read_yaml
from churnlab.errors import ChurnlabError

from conftest import ROOT


def test_project_root_found_from_a_subfolder():
    assert project_root(ROOT / "src" / "churnlab") == ROOT


def test_project_root_outside_a_project_is_an_error(tmp_path):
    with pytest.raises(ChurnlabError, match="no churnlab project"):
        project_root(tmp_path)


def test_params_merge_every_file_into_sections():
    params = load_params(ROOT)
    assert {"data", "schema", "prepare", "train", "evaluate", "paths", "explore"} <= set(params)


def test_a_section_in_two_files_is_an_error(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a.yaml").write_text("train: {seed: 1}\n")
    (tmp_path / "params" / "b.yaml").write_text("train: {seed: 2}\n")
    with pytest.raises(ChurnlabError, match="params/b.yaml: section 'train'.*params/a.yaml"):
        load_params(tmp_path)


def test_invalid_yaml_names_the_file(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ChurnlabError, match="a.yaml: not valid YAML"):
        load_params(tmp_path)


def test_a_yaml_file_read_twice_gives_fresh_values_and_a_changed_file_is_read_again(tmp_path):
    # read_yaml parses each text once per process: what it returns must still be the file's
    path = tmp_path / "a.yaml"
    path.write_text("train: {seed: 1, folds: [1, 2]}\n")
    first = read_yaml(path)
    first["train"]["folds"].append(3)  # a caller changing what it got
    assert (
        read_yaml(path)
        == yaml.safe_load(path.read_text())
        == {"train": {"seed": 1, "folds": [1, 2]}}
    )
    path.write_text("train: {seed: 2, folds: [1, 2]}\n")  # same size, new content
    assert read_yaml(path) == {"train": {"seed": 2, "folds": [1, 2]}}


def test_every_yaml_file_of_the_project_reads_as_pyyaml_safe_load_reads_it():
    # libyaml's parser when present: the same values, types included, as the pure loader
    files = [*ROOT.glob("*.yaml"), *ROOT.glob("params/**/*.yaml"), *ROOT.glob("tests/**/*.yaml")]
    assert len(files) >= 10
    for path in files:
        assert repr(read_yaml(path)) == repr(yaml.safe_load(path.read_text())), path


def test_get_key_names_the_missing_part():
    tree = {"train": {"model": {"C": 1}}}
    assert get_key(tree, "train.model.C", "x.yaml") == 1
    with pytest.raises(
        ChurnlabError,
        match=r"x.yaml: key 'train.modle.C' not found \(no "
        r"'train.modle'\)",
    ):
        get_key(tree, "train.modle.C", "x.yaml")


def test_interpolate_replaces_dvc_style_references():
    assert interpolate("${paths.raw}/x", {"paths": {"raw": "data"}}, "w") == "data/x"
