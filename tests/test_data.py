"""The data layer: tiny in-code tables for every rule, and the real Telco data."""

import pandas as pd
import pytest

from churnlab.data import (
    ID_COLUMN,
    TARGET_COLUMN,
    TableSpec,
    clean_table,
    feature_columns,
    load_prepared,
    read_table,
    split_customers,
    validate_table,
)
from churnlab.errors import ChurnlabError

SCHEMA = {
    "id_column": "cust",
    "target": "left",
    "positive_label": "yes",
    "negative_label": "no",
    "numeric": {"months": {"min": 0, "max": 100}, "spend": {"min": 0, "nullable": True}},
    "categorical": {"plan": ["basic", "pro"], "region": None},
}


def raw(**changes) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "cust": ["a", "b", "c"],
            "months": ["1", "20", "3"],
            "spend": ["10.5", " ", "7"],
            "plan": ["basic", "pro", "pro"],
            "region": ["north", "south", "east"],
            "left": ["yes", "no", "no"],
        }
    )
    for column, values in changes.items():
        table[column] = values
    return table


def check(table: pd.DataFrame) -> pd.DataFrame:
    return validate_table(table, TableSpec.from_params(SCHEMA), "own.csv")


def test_a_valid_table_is_typed_and_blanks_are_missing():
    typed = check(raw())
    assert typed["months"].tolist() == [1.0, 20.0, 3.0]
    assert typed["spend"].isna().tolist() == [False, True, False]


def test_a_missing_column_names_the_column_and_the_file():
    with pytest.raises(ChurnlabError, match=r"own.csv: missing column\(s\) \['plan'\]"):
        check(raw().drop(columns="plan"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"months": ["1", "many", "3"]},
            r"column 'months', rule is a number: 1 rows, "
            r"e.g. row 2: 'many'",
        ),
        (
            {"months": ["1", "200", "3"]},
            r"column 'months', rule less_than_or_equal_to\(100\)"
            r": 1 rows, e.g. row 2: 200.0",
        ),
        ({"spend": ["-1", "", "3"]}, r"column 'spend', rule greater_than_or_equal_to\(0\)"),
        (
            {"plan": ["basic", "gold", "pro"]},
            r"column 'plan', rule isin\(\['basic', 'pro'\]\)"
            r": 1 rows, e.g. row 2: 'gold'",
        ),
        ({"left": ["yes", "maybe", "no"]}, r"column 'left', rule isin"),
        ({"cust": ["a", "a", "c"]}, r"column 'cust', rule field_uniqueness: 2 rows"),
        (
            {"months": ["1", "", "3"]},
            r"column 'months', rule not_nullable: 1 rows, "
            r"e.g. row 2: blank",
        ),
    ],
)
def test_each_rule_names_column_rule_and_rows(changes, message):
    with pytest.raises(ChurnlabError, match=message) as error:
        check(raw(**changes))
    assert str(error.value).startswith("own.csv: the data does not match params/data.yaml")


def test_all_violations_are_reported_at_once():
    with pytest.raises(ChurnlabError) as error:
        check(raw(months=["x", "1", "500"], plan=["basic", "gold", "pro"]))
    text = str(error.value)
    assert "rule is a number" in text and "less_than_or_equal_to" in text and "isin" in text


def test_an_empty_file_and_a_header_only_file_are_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ChurnlabError, match="empty.csv: the file is empty"):
        read_table(empty)
    header = tmp_path / "header.csv"
    header.write_text("cust,months\n")
    with pytest.raises(ChurnlabError, match="header.csv: the file has a header but no rows"):
        read_table(header)


def test_parquet_and_csv_give_the_same_typed_table(tmp_path):
    raw().to_csv(tmp_path / "t.csv", index=False)
    parquet = raw().assign(months=[1, 20, 3])
    parquet.to_parquet(tmp_path / "t.parquet")
    from_csv = check(read_table(tmp_path / "t.csv"))
    from_parquet = check(read_table(tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(from_csv, from_parquet)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": None}, r"schema.target: missing"),
        ({"idcolumn": "cust"}, r"schema: unknown key\(s\) \['idcolumn'\]"),
        ({"numeric": {"months": {"minimum": 0}}}, r"schema.numeric.months: expected keys"),
        ({"categorical": {"plan": "basic"}}, r"schema.categorical.plan: expected a list"),
        ({"numeric": {"plan": {}}}, r"\['plan'\] are both numeric and categorical"),
    ],
)
def test_a_bad_schema_names_the_key(change, message):
    with pytest.raises(ChurnlabError, match=message):
        TableSpec.from_params({**SCHEMA, **change})


def test_cleaning_fills_renames_and_encodes_the_target():
    spec = TableSpec.from_params(SCHEMA)
    clean = clean_table(check(raw()), spec, {"spend": 0.0})
    assert list(clean.columns) == [ID_COLUMN, "months", "spend", "plan", "region", TARGET_COLUMN]
    assert clean["spend"].tolist() == [10.5, 0.0, 7.0]
    assert clean[TARGET_COLUMN].tolist() == [1, 0, 0]
    assert feature_columns(clean) == (["months", "spend"], ["plan", "region"])


def test_filling_a_column_that_is_not_numeric_is_an_error():
    spec = TableSpec.from_params(SCHEMA)
    with pytest.raises(ChurnlabError, match=r"prepare.fill_missing: \['plan'\]"):
        clean_table(check(raw()), spec, {"plan": 0})


def test_split_is_seeded_stratified_and_disjoint():
    table = pd.DataFrame(
        {ID_COLUMN: [f"c{i}" for i in range(100)], TARGET_COLUMN: [1] * 30 + [0] * 70}
    )
    train, test = split_customers(table, 0.2, seed=3)
    again, _ = split_customers(table, 0.2, seed=3)
    pd.testing.assert_frame_equal(train, again)
    assert not set(train[ID_COLUMN]) & set(test[ID_COLUMN])
    assert (len(train), len(test)) == (80, 20)
    assert test[TARGET_COLUMN].sum() == 6
    with pytest.raises(ChurnlabError, match="prepare.test_size"):
        split_customers(table, 1.5, seed=3)


# --- the real data ------------------------------------------------------------------------


def test_the_telco_data_passes_the_schema(telco_csv, schema):
    typed = validate_table(read_table(telco_csv), TableSpec.from_params(schema), "telco")
    assert len(typed) == 7043
    assert typed[schema["target"]].value_counts().to_dict() == {"No": 5174, "Yes": 1869}
    assert typed["TotalCharges"].isna().sum() == 11


def test_no_customer_is_in_both_splits_of_the_real_data(telco_csv, schema, params):
    train, test, _ = load_prepared(telco_csv, schema, params["prepare"])
    assert not set(train[ID_COLUMN]) & set(test[ID_COLUMN])
    assert len(train) + len(test) == 7043
    assert train.isna().sum().sum() == 0 and test.isna().sum().sum() == 0
    assert abs(train[TARGET_COLUMN].mean() - test[TARGET_COLUMN].mean()) < 0.01
