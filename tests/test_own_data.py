"""One's own data, the way the README tells a person to switch to it: after the default
pipeline has run (registry champion, raw data, reports all from Telco), put a table of another
schema in ``data/own/``, ``dvc add`` it, edit params only, and ``dvc repro``.

The table is scikit-learn's breast-cancer set (569 rows, 30 numeric columns, names with
spaces), shipped with scikit-learn, recast as accounts with a yes/no target: no categorical
column at all, no Telco column name anywhere.
"""

import json
import re

import pandas as pd
import pytest
import yaml

from conftest import committed_copy, run, set_param, switch_to_own_data

pytestmark = pytest.mark.pipeline

TELCO_WORDS = re.compile(r"Telco|tenure|Contract|MonthlyCharges|SeniorCitizen|residential")


def own_table() -> tuple[pd.DataFrame, dict]:
    """The accounts table and its description for params/data.yaml."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    table = data.data.copy()
    table.insert(0, "account", [f"A{i:04d}" for i in range(len(table))])
    table["left"] = data.target.map({0: "yes", 1: "no"})  # 212 "leave"
    schema = {
        "id_column": "account",
        "target": "left",
        "positive_label": "yes",
        "negative_label": "no",
        "numeric": {
            str(name): {"min": 0, "max": float(table[name].max()) * 2}
            for name in data.feature_names
        },
        "categorical": {},
    }
    return table, schema


@pytest.fixture(scope="module")
def switched(pipeline_project, tmp_path_factory):
    """A project that ran the default pipeline (the session's run, copied: registry champion,
    raw data and pages all from Telco), then switched to its own table by params only."""
    project = committed_copy(pipeline_project, tmp_path_factory.mktemp("own") / "project")
    table, schema = own_table()
    table.to_csv(project / "data" / "own" / "accounts.csv", index=False)
    switch_to_own_data(project, "data/own/accounts.csv", schema)
    set_param(
        project,
        "params/report.yaml",
        "report.segments",
        [{"column": "mean radius", "label": "Mean radius", "bins": [12, 16]}],
    )
    # the texts the README's own-data table says to rewrite
    set_param(project, "params/report.yaml", "report.purpose", "Ranks accounts by risk.")
    set_param(
        project,
        "params/report.yaml",
        "report.model_card",
        {
            "intended_use": "Ranking accounts for a review by the account team.",
            "out_of_scope": ["Decisions without a person reviewing them."],
            "limitations": ["One snapshot of 569 accounts."],
            "ethical_considerations": ["Reports show aggregates only."],
        },
    )
    result = run(["dvc", "repro"], project, check=False)
    return project, result


def test_own_data_needs_params_only_after_the_default_run(switched):
    project, result = switched
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((project / "metrics" / "test.json").read_text())
    prepared = json.loads((project / "metrics" / "prepare.json").read_text())
    assert sum(prepared["rows"].values()) == 569
    assert metrics["roc_auc"] > 0.9
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


def test_the_pages_of_own_data_name_none_of_telco(switched):
    project, _ = switched
    pages = [project / "reports" / "index.html", project / "reports" / "model_card.html"]
    pages += sorted((project / "reports" / "notebooks").glob("*.html"))
    for page in pages:
        found = TELCO_WORDS.findall(page.read_text())
        assert not found, f"{page.name}: {sorted(set(found))}"


def test_a_changed_own_file_reruns_the_pipeline(switched):
    project, _ = switched
    path = project / "data" / "own" / "accounts.csv"
    before = path.read_bytes()
    try:
        table = pd.read_csv(path)
        table.loc[0, "mean radius"] = float(table.loc[0, "mean radius"]) + 1
        table.to_csv(path, index=False)
        status = run(["dvc", "status"], project).stdout
        assert "fetch" in status and "data/own" in status
    finally:
        path.write_bytes(before)


def test_own_data_outside_dvc_is_refused_before_anything_moves(switched, tmp_path):
    project, _ = switched
    lock = (project / "dvc.lock").read_bytes()
    raw = (project / "data" / "raw" / "churn.csv").read_bytes()
    unversioned = project / "data" / "own" / "other.csv"
    unversioned.write_bytes((project / "data" / "own" / "accounts.csv").read_bytes())
    data_params = project / "params" / "data.yaml"
    saved = data_params.read_text()
    try:
        set_param(project, "params/data.yaml", "data.source", "data/own/other.csv")
        result = run(["dvc", "repro"], project, check=False)
        assert result.returncode != 0
        assert "churnlab: error:" in result.stderr
        assert "'data/own/other.csv' is not versioned by DVC: run `dvc add" in result.stderr
        assert (project / "dvc.lock").read_bytes() == lock
        assert (project / "data" / "raw" / "churn.csv").read_bytes() == raw
    finally:
        data_params.write_text(saved)
        unversioned.unlink()
    assert yaml.safe_load(saved)["data"]["source"] == "data/own/accounts.csv"
