"""Batch scoring (churnlab.serving): each row checked against the schema, rejects with their
reasons, scores equal to the model's own predict_proba, CSV and Parquet both ways, and a
refused batch that writes nothing.

The first tests use the small non-Telco schema of tests/small_schema.py and a model fitted
here on a few hundred rows; the last ones run ``churnlab score`` on the default pipeline's
run (its registry champion and its model file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from small_schema import SCHEMA

from churnlab.data import TableSpec, clean_table, read_table, validate_table
from churnlab.errors import ChurnlabError
from churnlab.model import build_model, model_input
from churnlab.serving.rows import check_rows
from churnlab.serving.score import (
    ScoreSettings,
    ScoringModel,
    one_hot_inputs,
    read_customers,
    rejects_path,
    score_file,
    score_frame,
)

from conftest import assert_one_clean_error, committed_copy, run

SPEC = TableSpec.from_params(SCHEMA)
SETTINGS = ScoreSettings(max_reject_fraction=0.2, rejects="{stem}.rejects{suffix}", chunk_rows=1000)


def customers(rows: int, seed: int = 7) -> pd.DataFrame:
    """``rows`` customers of the small schema, as text, every row valid, with the target."""
    rng = np.random.default_rng(seed)
    spend = rng.uniform(0, 500, rows).round(2).astype(str)
    spend[rng.random(rows) < 0.1] = ""  # nullable: blanks are valid
    frame = pd.DataFrame(
        {
            "cust": [f"c{i:04d}" for i in range(rows)],
            "months": rng.integers(0, 101, rows).astype(str),
            "spend": spend,
            "plan": rng.choice(["basic", "pro"], rows),
            "region": rng.choice(["north", "south", "east"], rows),
            "left": rng.choice(["yes", "no"], rows),
        }
    )
    return frame.astype("str")


@pytest.fixture(scope="module")
def small_model() -> ScoringModel:
    """A model of the small schema, fitted the pipeline's way on 300 customers."""
    typed = validate_table(customers(300, seed=1), SPEC, "train.csv")
    table = clean_table(typed, SPEC, {})
    numeric, categorical = list(SPEC.numeric), list(SPEC.categorical)
    model = build_model(numeric, categorical, "logistic_regression", seed=0)
    model.fit(model_input(table, numeric, categorical), table["churned"])
    return ScoringModel(model, numeric, categorical, 0.5, "test", "small model")


def expected_probabilities(model: ScoringModel, raw: pd.DataFrame) -> np.ndarray:
    """The model's predict_proba on rows typed by the pipeline's own validation."""
    typed = validate_table(raw, SPEC, "expected.csv")
    return model.model.predict_proba(model_input(typed, model.numeric, model.categorical))[:, 1]


# each rule of the schema broken once, with the reason it must give
BROKEN = [
    ("months", "ten", "months: a finite number: found 'ten'"),
    ("months", "inf", "months: a finite number: found 'inf'"),
    ("months", "101", "months: <= 100: found '101'"),
    ("months", "-1", "months: >= 0: found '-1'"),
    ("months", "", "months: not blank: found blank"),
    ("spend", "-0.5", "spend: >= 0: found '-0.5'"),
    ("plan", "gold", "plan: one of ['basic', 'pro']: found 'gold'"),
    ("plan", " ", "plan: not blank: found blank"),
    ("region", "", "region: not blank: found blank"),
    ("cust", "", "cust: not blank: found blank"),
]


def test_each_rule_of_the_schema_rejects_its_rows_with_the_reason():
    raw = customers(40)
    for row, (column, value, _) in enumerate(BROKEN):
        raw.loc[row, column] = value
    raw.loc[20, "cust"] = raw.loc[21, "cust"] = raw.loc[22, "cust"] = "twice"

    checked = check_rows(raw, SPEC, "in.csv")

    reasons = dict(zip(checked.rejects["row"], checked.rejects["reason"], strict=True))
    expected = {row + 1: reason for row, (_, _, reason) in enumerate(BROKEN)}
    expected.update({r: "cust: unique: found 'twice' in 3 rows" for r in (21, 22, 23)})
    assert reasons == expected
    assert checked.rejects.columns.tolist() == ["row", "cust", "reason"]
    assert len(checked.valid) == 40 - len(expected)
    assert not checked.valid.index.isin(checked.rejects["row"] - 1).any()
    # a blank in a nullable column passes, as a missing number
    assert checked.valid["spend"].isna().any()


def test_a_row_breaking_several_rules_gets_every_reason_in_schema_order():
    raw = customers(3)
    raw.loc[1, ["months", "plan", "region"]] = ["x", "gold", ""]

    rejects = check_rows(raw, SPEC, "in.csv").rejects

    assert rejects["reason"].tolist() == [
        "months: a finite number: found 'x'; plan: one of ['basic', 'pro']: found 'gold'; "
        "region: not blank: found blank"
    ]


def test_target_present_or_absent_and_extra_columns_change_nothing():
    raw = customers(30)
    raw.loc[3, "months"] = "400"
    with_target = check_rows(raw, SPEC, "in.csv")
    without = check_rows(raw.drop(columns="left").assign(note="free text"), SPEC, "in.csv")

    pd.testing.assert_frame_equal(with_target.valid, without.valid)
    pd.testing.assert_frame_equal(with_target.rejects, without.rejects)
    assert with_target.extra == [] and without.extra == ["note"]


def test_a_missing_schema_column_refuses_the_table():
    with pytest.raises(ChurnlabError, match=r"in\.csv: missing column\(s\) \['plan'\]"):
        check_rows(customers(5).drop(columns="plan"), SPEC, "in.csv")


def test_typed_parquet_columns_are_checked_like_their_text(tmp_path):
    raw = customers(50)
    raw.loc[4, "months"] = "150"
    typed = raw.assign(months=raw["months"].astype(int), spend=pd.to_numeric(raw["spend"]))
    typed.to_parquet(tmp_path / "in.parquet", index=False)

    from_text = check_rows(raw, SPEC, "in.csv")
    from_types = check_rows(read_customers(tmp_path / "in.parquet"), SPEC, "in.parquet")

    pd.testing.assert_frame_equal(from_text.valid, from_types.valid)
    assert from_types.rejects["reason"].tolist() == ["months: <= 100: found '150'"]


def test_scores_equal_the_models_predict_proba_and_the_threshold_decides(small_model):
    raw = customers(200, seed=3)
    raw.loc[[5, 9], "plan"] = "gold"

    scored, rejects = score_frame(raw, SPEC, small_model, chunk_rows=64)

    valid = raw.drop(index=[5, 9])
    assert scored["cust"].tolist() == valid["cust"].tolist()
    expected = expected_probabilities(small_model, valid)
    assert np.array_equal(scored["probability"].to_numpy(), expected)
    assert scored["decision"].tolist() == [int(p >= 0.5) for p in expected]
    assert set(scored["model_version"]) == {"test"}
    assert rejects["row"].tolist() == [6, 10]


def test_the_direct_one_hot_matrix_is_the_models_own_and_other_shapes_fall_back(small_model):
    raw = customers(80, seed=5)
    raw.loc[3, "region"] = "a region the model never saw"  # all zeros, as the encoder does
    typed = validate_table(raw, SPEC, "in.csv")
    preprocess = small_model.model.named_steps["preprocess"]
    inputs = model_input(typed, small_model.numeric, small_model.categorical)

    direct = one_hot_inputs(small_model.model, typed, small_model.numeric, small_model.categorical)

    assert np.array_equal(direct, preprocess.transform(inputs))
    # an encoder that drops a category is another shape: the model's own predict_proba
    other = clone(small_model.model).set_params(preprocess__categorical__drop="first")
    other.fit(inputs, (typed["left"] == "yes").astype(int))
    assert one_hot_inputs(other, typed, small_model.numeric, small_model.categorical) is None
    fallback = ScoringModel(other, small_model.numeric, small_model.categorical, 0.5, "x", "x")
    expected = other.predict_proba(inputs)[:, 1]
    assert np.array_equal(fallback.probabilities(typed), expected)


@pytest.mark.parametrize(
    ("source", "target"),
    [("in.csv", "out.parquet"), ("in.parquet", "out.csv"), ("in.csv", "out.csv")],
)
def test_files_csv_and_parquet_both_ways(tmp_path, small_model, source, target):
    raw = customers(120, seed=4)
    raw.loc[7, "months"] = "-3"
    raw.loc[8, "region"] = ""
    path = tmp_path / source
    raw.to_csv(path, index=False) if source.endswith(".csv") else raw.to_parquet(path)

    counts = score_file(
        path, tmp_path / target, tmp_path / f"rejects.{target.split('.')[1]}", SPEC,
        small_model, SETTINGS,
    )  # fmt: skip

    read = pd.read_parquet if target.endswith(".parquet") else pd.read_csv
    scored, rejects = read(tmp_path / target), read(tmp_path / f"rejects.{target.split('.')[1]}")
    assert counts == {"rows": 120, "scored": 118, "rejected": 2}
    expected = expected_probabilities(small_model, raw.drop(index=[7, 8]))
    assert np.array_equal(scored["probability"].to_numpy(), expected)  # exact, through text too
    assert rejects["reason"].tolist() == [
        "months: >= 0: found '-3'",
        "region: not blank: found blank",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_too_many_rejects_write_nothing_and_keep_the_earlier_output(tmp_path, small_model):
    good = tmp_path / "good.csv"
    customers(50).to_csv(good, index=False)
    output, rejects = tmp_path / "scores.csv", tmp_path / "scores.rejects.csv"
    score_file(good, output, rejects, SPEC, small_model, SETTINGS)
    before = {p.name: p.read_bytes() for p in (output, rejects)}
    bad = customers(50)
    bad.loc[:10, "plan"] = "gold"  # 11 of 50 = 22% > 20%
    bad.to_csv(tmp_path / "bad.csv", index=False)

    with pytest.raises(ChurnlabError) as error:
        score_file(tmp_path / "bad.csv", output, rejects, SPEC, small_model, SETTINGS)

    message = str(error.value)
    assert "bad.csv: 11 of 50 rows (22.0%)" in message
    assert "score.max_reject_fraction 20.0%" in message
    assert "plan: one of ['basic', 'pro'] (11 rows)" in message
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in (output, rejects)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.csv", "good.csv", "scores.csv", "scores.rejects.csv"
    ]  # fmt: skip


def test_outputs_that_overwrite_the_input_or_each_other_are_refused(tmp_path, small_model):
    source = tmp_path / "in.csv"
    customers(10).to_csv(source, index=False)
    before = source.read_bytes()
    for output, rejects, found in [
        (source, tmp_path / "r.csv", "OUTPUT: the input file itself"),
        (tmp_path / "out.csv", tmp_path / "out.csv", "the same file as OUTPUT or INPUT"),
        (tmp_path / "out.csv", tmp_path / "r.txt", "expected a .csv or .parquet file name"),
    ]:
        with pytest.raises(ChurnlabError, match=found):
            score_file(source, output, rejects, SPEC, small_model, SETTINGS)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_a_model_of_columns_the_schema_does_not_describe_is_refused(small_model):
    spec = TableSpec.from_params({**SCHEMA, "categorical": {"plan": ["basic", "pro"]}})

    with pytest.raises(ChurnlabError, match=r"small model takes column\(s\) \['region'\]"):
        score_frame(customers(5), spec, small_model)


def test_rejects_path_follows_the_pattern_and_refuses_a_bad_one(tmp_path):
    assert rejects_path(tmp_path / "s.parquet", "{stem}.rejects{suffix}") == (
        tmp_path / "s.rejects.parquet"
    )
    for pattern, found in [
        ("{name}.csv", "score.rejects: expected a file name with {stem}"),
        ("{stem}{suffix}", "names the output file itself"),
        ("{stem}.txt", "expected a .csv or .parquet file name, found '.txt'"),
    ]:
        with pytest.raises(ChurnlabError, match=found.replace("{", r"\{").replace(".", r"\.")):
            rejects_path(tmp_path / "s.csv", pattern)


def test_unreadable_inputs_are_one_clear_error(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("cust,months\n")
    (tmp_path / "twice.csv").write_text("cust,cust\n1,2\n")
    for name, found in [
        ("empty.csv", "the file is empty"),
        ("header.csv", "a header but no rows"),
        ("twice.csv", "appear more than once"),
        ("missing.csv", "file not found"),
        ("in.xlsx", "expected a .csv or .parquet file name"),
    ]:
        with pytest.raises(ChurnlabError, match=found):
            read_customers(tmp_path / name)


# On the default pipeline's run: the registry champion and models/model.skops.


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def telco(tmp_path_factory, pipeline_project):
    """A copy of the default run, and its raw Telco file with six broken rows."""
    project = committed_copy(pipeline_project, tmp_path_factory.mktemp("score") / "project")
    raw = read_table(project / "data" / "raw" / "churn.csv")
    broken = raw.copy()
    broken.loc[0, "tenure"] = "twelve"
    broken.loc[1, "MonthlyCharges"] = "5000"
    broken.loc[2, "Contract"] = "Three year"
    broken.loc[3, "gender"] = ""
    broken.loc[4, "customerID"] = broken.loc[5, "customerID"]
    broken.to_csv(project / "customers.csv", index=False)
    return project, raw, broken


@pytest.mark.pipeline
def test_churnlab_score_with_the_champion_equals_the_model_file(telco):
    project, raw, broken = telco
    result = run(["churnlab", "score", "customers.csv", "scores.csv"], project)

    scored = pd.read_csv(project / "scores.csv", dtype={"customerID": str})
    rejects = pd.read_csv(project / "scores.rejects.csv")
    assert rejects["row"].tolist() == [1, 2, 3, 4, 5, 6]
    assert rejects["reason"].tolist()[:4] == [
        "tenure: a finite number: found 'twelve'",
        "MonthlyCharges: <= 1000: found '5000'",
        "Contract: one of ['Month-to-month', 'One year', 'Two year']: found 'Three year'",
        "gender: not blank: found blank",
    ]
    # independently: the pipeline's own typing and filling, the model file's predict_proba
    import skops.io
    import yaml

    from churnlab.model import TRUSTED_TYPES

    spec = TableSpec.from_params(
        yaml.safe_load((project / "params/data.yaml").read_text())["schema"]
    )
    fill = yaml.safe_load((project / "params/prepare.yaml").read_text())["prepare"]["fill_missing"]
    features = json.loads((project / "models/features.json").read_text())
    table = clean_table(validate_table(raw.iloc[6:], spec, "raw"), spec, fill)
    model = skops.io.load(project / "models/model.skops", trusted=TRUSTED_TYPES)
    inputs = model_input(table, features["numeric"], features["categorical"])
    expected = model.predict_proba(inputs)[:, 1]
    threshold = json.loads((project / "metrics/test.json").read_text())["threshold"]
    assert scored["customerID"].tolist() == raw["customerID"].iloc[6:].tolist()
    assert np.array_equal(scored["probability"].to_numpy(), expected)
    assert np.array_equal(scored["decision"].to_numpy(), (expected >= threshold).astype(int))
    assert set(scored["model_version"].astype(str)) == {"1"}  # the first registered model
    assert "version 1 (champion)" in result.stderr

    # the model file, a Parquet input without the target: the same scores
    broken.drop(columns="Churn").to_parquet(project / "customers.parquet", index=False)
    result = run(
        ["churnlab", "score", "customers.parquet", "scores.parquet", "--model",
         "models/model.skops"],
        project,
    )  # fmt: skip
    again = pd.read_parquet(project / "scores.parquet")
    pd.testing.assert_series_equal(again["probability"], scored["probability"])
    assert set(again["model_version"]) == {f"file:{_sha256(project / 'models/model.skops')[:12]}"}
    assert pd.read_parquet(project / "scores.rejects.parquet")["row"].tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.pipeline
def test_churnlab_score_refuses_too_many_rejects_and_keeps_the_output(telco):
    project, raw, _ = telco
    (project / "old.csv").write_text("customerID,probability\nx,0.5\n")
    before = _sha256(project / "old.csv")
    bad = raw.copy()
    bad.loc[: len(raw) // 10, "Contract"] = "Three year"  # 10% > 1% (params/score.yaml)
    bad.to_csv(project / "bad.csv", index=False)

    result = run(["churnlab", "score", "bad.csv", "old.csv"], project, check=False)

    assert_one_clean_error(result, "bad.csv")
    assert "more than score.max_reject_fraction 1.0%" in result.stderr
    assert _sha256(project / "old.csv") == before
    assert not (project / "old.rejects.csv").exists()


@pytest.mark.pipeline
def test_a_model_file_the_threshold_was_not_chosen_for_is_refused(telco, tmp_path):
    project, _, _ = telco
    other = tmp_path / "model.skops"
    other.write_bytes((project / "models/model.skops").read_bytes() + b"\0")

    result = run(
        ["churnlab", "score", "customers.csv", "out.csv", "--model", str(other)],
        project,
        check=False,
    )

    assert_one_clean_error(result, "not the model the evaluate stage chose its threshold for")
    assert not (project / "out.csv").exists()


@pytest.mark.pipeline
def test_an_unknown_registry_version_is_one_clear_error(telco):
    from churnlab.monitoring.champion import load_champion

    with pytest.raises(ChurnlabError, match="no version 99 of"):
        load_champion(telco[0], 99)
