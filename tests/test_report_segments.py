"""Performance by segment and the model card's sentences on sensitive columns."""

import pandas as pd
import pytest
from report_tables import scored_customers
from sklearn.metrics import precision_score, roc_auc_score

from churnlab.errors import ChurnlabError
from churnlab.report.segments import (
    segment_gaps,
    segment_labels,
    segment_performance,
    sensitive_columns,
    sensitive_inputs,
)


@pytest.fixture
def scored():
    return scored_customers()


def test_segments_by_bands_and_by_named_values():
    bands = segment_labels(
        pd.Series([0, 12, 13, 48, 49, None]), {"column": "m", "bins": [12, 48]}, "where"
    )
    assert list(bands) == ["up to 12", "up to 12", "12 to 48", "12 to 48", "over 48", "missing"]
    named = segment_labels(
        pd.Series(["0", "1"]), {"column": "f", "names": {0: "no", 1: "yes"}}, "where"
    )
    assert list(named) == ["no", "yes"]
    with pytest.raises(ChurnlabError, match="where.bins"):
        segment_labels(pd.Series([1]), {"column": "m", "bins": [5, 2]}, "where")


def test_segment_performance_is_computed_per_group(scored):
    table, labels, scores = scored
    segments = [
        {"column": "plan", "label": "Plan"},
        {"column": "months", "label": "Months", "bins": [12, 24]},
    ]
    performance = segment_performance(table, labels, scores, 0.5, segments, min_size=50)
    monthly = performance[
        (performance["segment"] == "Plan") & (performance["group"] == "monthly")
    ].iloc[0]
    member = table["plan"].to_numpy() == "monthly"
    assert monthly["customers"] == member.sum()
    assert monthly["precision"] == pytest.approx(
        precision_score(labels[member], scores[member] >= 0.5)
    )
    assert monthly["roc_auc"] == pytest.approx(roc_auc_score(labels[member], scores[member]))
    months = performance[performance["segment"] == "Months"]
    assert list(months["group"]) == ["up to 12", "12 to 24", "over 24"]
    assert months["customers"].sum() == len(table)
    gaps = segment_gaps(performance)
    assert {g["segment"] for g in gaps} == {"Plan", "Months"}
    assert all(g["best"] >= g["worst"] for g in gaps)


def test_a_segment_naming_a_missing_column_is_an_error(scored):
    table, labels, scores = scored
    with pytest.raises(ChurnlabError, match=r"report.segments\[0\].column: 'Contract'"):
        segment_performance(table, labels, scores, 0.5, [{"column": "Contract"}], 50)


SEGMENTS = [{"column": "age_band", "label": "Age band"}, {"column": "sex", "label": "Sex"}]


@pytest.mark.parametrize(
    ("sensitive", "inputs", "expected"),
    [
        (
            ["age_band", "sex"],
            ["age_band", "sex", "months"],
            [
                "Age band and Sex are inputs of the model; they are kept so that their effect "
                "can be measured here, and the segment table shows how the model treats each "
                "group. Dropping them does not by itself remove their effect, since other "
                "attributes correlate with them."
            ],
        ),
        (
            ["sex", "region"],
            ["region", "months"],
            [
                "Region is an input of the model. Dropping it does not by itself remove its "
                "effect, since other attributes correlate with it.",
                "Sex is not an input of the model, but other attributes may correlate with it; "
                "the segment table shows how the model treats each group.",
            ],
        ),
    ],
    ids=["used-and-shown", "one-used-one-not"],
)
def test_the_sentences_on_sensitive_columns_follow_what_the_model_uses(sensitive, inputs, expected):
    assert sensitive_inputs(sensitive, inputs, SEGMENTS) == expected


def test_no_sensitive_column_is_said_and_a_wrong_one_is_an_error():
    assert "report.sensitive_columns" in sensitive_inputs([], ["months"], SEGMENTS)[0]
    assert sensitive_columns({"sensitive_columns": []}, ["sex"]) == []
    with pytest.raises(ChurnlabError, match=r"\['Sex'\] are not columns of the data"):
        sensitive_columns({"sensitive_columns": ["Sex"]}, ["sex", "months"])
    with pytest.raises(ChurnlabError, match="expected a list of column names"):
        sensitive_columns({"sensitive_columns": "sex"}, ["sex"])
