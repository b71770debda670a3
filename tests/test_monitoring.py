"""churnlab simulate and churnlab monitor on a real pipeline run: verdicts on simulated
months (a stable month does not alert, shifted ones do), idempotence, and every bad input
(one error line naming the file and field, a non-zero exit, earlier verdicts intact)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import committed_copy, run, set_param

pytestmark = pytest.mark.pipeline

CUSTOMERS = 2000  # small months: the tests stay quick; thresholds follow the size


def _digests(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, pipeline_project) -> Path:
    """A copy of the default run with a simulated year of small months."""
    target = committed_copy(pipeline_project, tmp_path_factory.mktemp("monitor") / "project")
    for folder in ("monitoring", "data/batches", "data/labels"):  # none from the work tree
        shutil.rmtree(target / folder, ignore_errors=True)
    set_param(target, "params/monitor.yaml", "monitor.simulate.customers", CUSTOMERS)
    run(["churnlab", "simulate"], target)
    return target


def monitor(project: Path, *months: str, check: bool = True):
    return run(["churnlab", "monitor", *months], project, check=check)


def verdict(project: Path, month: str) -> dict:
    return json.loads((project / "monitoring" / f"{month}.json").read_text())


def test_simulate_writes_the_same_bytes_from_the_same_seed(project):
    before = {f: _digests(project / f) for f in ("data/batches", "data/labels")}
    assert len(before["data/batches"]) == 13  # 12 months and the ground truth
    run(["churnlab", "simulate"], project)
    assert {f: _digests(project / f) for f in ("data/batches", "data/labels")} == before
    truth = json.loads((project / "data/batches/ground_truth.json").read_text())["months"]
    assert truth["2026-01"]["stable"] and truth["2026-12"]["stable"]
    assert truth["2026-04"]["expected"] == ["feature_drift"]
    assert truth["2026-11"]["scenarios"][0]["kind"] == "missing_column"


def test_a_stable_month_is_resampled_real_customers(project):
    raw = pd.read_csv(project / "data/raw/churn.csv", dtype=str, keep_default_na=False)
    batch = pd.read_parquet(project / "data/batches/2026-01.parquet")
    labels = pd.read_parquet(project / "data/labels/2026-01.parquet")
    assert len(batch) == CUSTOMERS and batch["customerID"].is_unique
    features = [c for c in batch.columns if c != "customerID"]
    known = set(map(tuple, raw[features].itertuples(index=False)))
    assert all(row in known for row in batch[features].itertuples(index=False))
    assert list(labels["customerID"]) == list(batch["customerID"])
    assert set(labels["Churn"]) == {"Yes", "No"}


def test_a_stable_month_does_not_alert_and_shifted_months_do(project):
    monitor(project, "2026-01", "2026-04", "2026-06")
    stable = verdict(project, "2026-01")
    assert stable["status"] == "ok" and not stable["alerts"]["any"]
    assert stable["quality"]["passed"] and stable["usable_for_training"]
    assert stable["performance"]["realised"]["labelled"] == CUSTOMERS
    mix = verdict(project, "2026-04")  # more month-to-month contracts
    assert mix["alerts"]["feature_drift"] and mix["status"] == "drift"
    assert mix["features"][0]["column"] == "Contract"
    change = mix["features"][0]["largest_change"]
    assert change["category"] == "Month-to-month"
    assert change["month_share"] - change["reference_share"] == pytest.approx(0.10, abs=0.05)
    price = verdict(project, "2026-06")  # MonthlyCharges up by 0.3 sd
    assert "MonthlyCharges" in price["drift"]["drifted_columns"]
    assert price["alerts"]["feature_drift"]


def test_a_month_twice_gives_the_same_bytes_and_one_file(project):
    monitor(project, "2026-02")
    first = (project / "monitoring/2026-02.json").read_bytes()
    monitor(project, "2026-02")
    assert (project / "monitoring/2026-02.json").read_bytes() == first
    assert sorted(p.name for p in (project / "monitoring").iterdir()).count("2026-02.json") == 1
    assert not [p for p in (project / "monitoring").iterdir() if p.name.startswith(".")]


def _fails(project: Path, month: str, *names: str) -> str:
    """Run the monitor on a bad month: one error line naming ``names``, the verdicts of
    other months kept (a month that fails data quality gets a verdict saying so)."""
    if not (project / "monitoring" / "2026-01.json").exists():
        monitor(project, "2026-01")
    before = _digests(project / "monitoring")
    result = monitor(project, month, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("churnlab: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{project}/data" not in errors[0]  # files named from the project, as the user does
    for name in names:
        assert name in errors[0], errors[0]
    after = _digests(project / "monitoring")
    before.pop(f"{month}.json", None)
    assert {k: v for k, v in after.items() if k in before} == before
    return errors[0]


def _bad_month(project: Path, month: str, change) -> None:
    batch = pd.read_parquet(project / "data/batches/2026-01.parquet")
    batch = change(batch.copy())
    batch.to_csv(project / "data/batches" / f"{month}.csv", index=False)


def test_a_month_file_that_does_not_exist(project):
    _fails(project, "2027-05", "data/batches/2027-05", "file not found")
    assert not (project / "monitoring/2027-05.json").exists()


def test_an_empty_month(project):
    (project / "data/batches/2027-06.csv").write_text("")
    _fails(project, "2027-06", "data/batches/2027-06.csv", "empty")
    (project / "data/batches/2027-07.csv").write_text("customerID,tenure\n")
    _fails(project, "2027-07", "data/batches/2027-07.csv", "no rows")


def test_a_month_missing_a_column_is_a_failed_verdict(project):
    line = _fails(project, "2026-11", "data/batches/2026-11.parquet", "TotalCharges")
    assert "missing from the file" in line
    found = verdict(project, "2026-11")
    assert found["status"] == "quality_failed" and not found["usable_for_training"]
    assert found["quality"]["missing_columns"] == ["TotalCharges"]


def test_a_month_with_wrong_types(project):
    def text_in_tenure(batch):
        batch.loc[:9, "tenure"] = "ten"
        return batch

    _bad_month(project, "2027-08", text_in_tenure)
    line = _fails(project, "2027-08", "data/batches/2027-08.csv", "'tenure'", "is a number")
    assert "10 rows" in line
    found = verdict(project, "2027-08")
    assert {"column": "tenure", "rule": "is a number", "count": 10, "examples": ["ten"]} in (
        found["quality"]["violations"]
    )


def _labels(project: Path, month: str, change) -> None:
    shutil.copy(project / "data/batches/2026-01.parquet", project / f"data/batches/{month}.parquet")
    labels = pd.read_parquet(project / "data/labels/2026-01.parquet")
    change(labels.copy()).to_csv(project / f"data/labels/{month}.csv", index=False)


def test_labels_for_ids_not_in_the_month(project):
    def stranger(labels):
        labels.loc[0, "customerID"] = "somebody-else"
        return labels

    _labels(project, "2027-09", stranger)
    _fails(project, "2027-09", "data/labels/2027-09.csv", "'customerID'", "somebody-else")
    assert not (project / "monitoring/2027-09.json").exists()


def test_labels_with_other_values(project):
    def maybe(labels):
        labels.loc[:4, "Churn"] = "Maybe"
        return labels

    _labels(project, "2027-10", maybe)
    _fails(project, "2027-10", "data/labels/2027-10.csv", "'Churn'", "Maybe", "5 rows")


def test_a_month_earlier_than_the_reference(project):
    shutil.copy(project / "data/batches/2026-01.parquet", project / "data/batches/2025-06.parquet")
    _fails(project, "2025-06", "params/monitor.yaml", "reference_month", "2025-06")


def test_no_champion_yet(project):
    tracking = project / "params/tracking.yaml"
    saved = tracking.read_text()
    set_param(project, "params/tracking.yaml", "tracking.registered_model", "never-registered")
    try:
        _fails(project, "2026-03", "tracking.registered_model", "no champion", "make repro")
    finally:
        tracking.write_text(saved)


def test_every_month_with_all(project):
    for folder in ("data/batches", "data/labels"):  # the bad months of the tests above
        for path in (project / folder).glob("202[57]-*"):
            path.unlink()
    result = monitor(project, "--all")
    written = sorted(p.stem for p in (project / "monitoring").glob("2026-*.json"))
    assert written == [f"2026-{m:02d}" for m in range(1, 13)]
    assert "2026-11: failed data quality" in result.stderr
    statuses = {m: verdict(project, m)["status"] for m in written}
    # the months the ground truth says shift are the ones flagged, each for its reason
    truth = json.loads((project / "data/batches/ground_truth.json").read_text())["months"]
    status_of = {
        "feature_drift": "drift",
        "performance": "performance",
        "quality": "quality_failed",
    }
    expected = {m: status_of[t["expected"][0]] if t["expected"] else "ok" for m, t in truth.items()}
    assert statuses == expected
    assert verdict(project, "2026-08")["performance"]["below_estimate"]


def test_the_estimate_is_within_003_on_a_shifted_month_of_customers_not_seen(pipeline_project):
    """The estimate (CBPE) takes the champion's scores for probabilities. A month of 5,000
    with more month-to-month contracts (a covariate shift: each customer keeps their own
    label), drawn from the test customers the champion never saw, scored by the champion:
    estimated recall and precision within 0.03 of the realised ones (bench/RESULTS.md has the
    share of such months over many draws, and the calibration param's effect)."""
    from churnlab.config import load_params
    from churnlab.data import ID_COLUMN, TARGET_COLUMN
    from churnlab.monitoring.performance import estimated_performance

    root = pipeline_project
    paths = load_params(root)["paths"]
    test = pd.read_parquet(root / paths["test"])
    scored = pd.read_parquet(root / paths["test_scores"])
    pool = scored[[ID_COLUMN, "score"]].merge(test, on=ID_COLUMN, validate="one_to_one")
    assert len(pool) == len(test)
    threshold = json.loads((root / paths["test_metrics"]).read_text())["threshold"]
    inside = (pool["Contract"] == "Month-to-month").to_numpy()
    weights = np.where(inside, 1.5, 1.0)
    rows = np.random.default_rng(11).choice(len(pool), 5000, p=weights / weights.sum())
    assert inside[rows].mean() > inside.mean() + 0.05  # the month is shifted
    scores, labels = pool["score"].to_numpy()[rows], pool[TARGET_COLUMN].to_numpy()[rows]
    flagged = scores >= threshold
    realised = {
        "recall": labels[flagged].sum() / labels.sum(),
        "precision": labels[flagged].mean(),
    }
    estimated = estimated_performance(scores, threshold, 0.95)
    for name, value in realised.items():
        assert abs(value - estimated[name]) < 0.03, (name, value, estimated[name])
