"""`churnlab export-model`: the model for the container image, in the project's layout."""

import json
import shutil

import pytest

from churnlab.errors import ChurnlabError
from churnlab.serving.export import champion_metrics, export_workspace

from conftest import ROOT


@pytest.fixture
def project(tmp_path):
    """A project with a model of its own (bytes that only need copying, not loading)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "params", root / "params")
    (root / "models").mkdir()
    (root / "metrics").mkdir()
    (root / "models" / "model.skops").write_bytes(b"model bytes")
    (root / "models" / "features.json").write_text('{"numeric": [], "categorical": []}')
    (root / "metrics" / "test.json").write_text(json.dumps({"threshold": 0.3, "roc_auc": 0.8}))
    return root


def test_champion_metrics_are_the_test_metrics_named_as_in_test_json():
    run = {"test.threshold": 0.3, "test.cost.model": 5.0, "cv.roc_auc": 0.8, "rows": 7.0}
    assert champion_metrics(run) == {"threshold": 0.3, "cost.model": 5.0}


def test_workspace_export_copies_model_features_and_metrics(project, tmp_path):
    target = tmp_path / "image" / "model"
    export_workspace(project, target)
    for relative in ("models/model.skops", "models/features.json", "metrics/test.json"):
        assert (target / relative).read_bytes() == (project / relative).read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no staging left


@pytest.mark.parametrize("broken", ["no model", "no threshold"])
def test_a_failed_export_names_the_file_and_keeps_the_previous_one(project, tmp_path, broken):
    target = tmp_path / "image" / "model"
    export_workspace(project, target)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    if broken == "no model":
        (project / "models" / "model.skops").unlink()
        named = "models/model.skops: file not found"
    else:
        (project / "metrics" / "test.json").write_text('{"roc_auc": 0.8}')
        named = "metrics/test.json: threshold"
    with pytest.raises(ChurnlabError, match=named):
        export_workspace(project, target)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
