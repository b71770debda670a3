"""The cycle's training table on small tables: labelled rows of a month, the held-out share,
and the reference of a champion trained on months the training table no longer holds
(churnlab.cycle.training, churnlab.monitoring.champion.reference_table)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from small_schema import SCHEMA

from churnlab.cycle.training import (
    all_labelled_rows,
    holdout_ids,
    labelled_rows,
    month_weights,
)
from churnlab.data import (
    ID_COLUMN,
    TARGET_COLUMN,
    WEIGHT_COLUMN,
    TableSpec,
    clean_table,
    feature_columns,
    validate_table,
)
from churnlab.errors import ChurnlabError
from churnlab.model import build_model, cross_validate, fit_model, row_weights
from churnlab.monitoring.champion import Champion, reference_table
from churnlab.split import add_cycle_months

SPEC = TableSpec.from_params(SCHEMA)


def _month(folder, month: str, rows: int, labelled: int) -> None:
    ids = [f"{month}-{i:03d}" for i in range(rows)]
    batch = pd.DataFrame(
        {
            "cust": ids,
            "months": [str(i % 50) for i in range(rows)],
            "spend": ["" if i == 0 else "12.5" for i in range(rows)],
            "plan": ["basic", "pro"] * (rows // 2),
            "region": ["north"] * rows,
        }
    )
    (folder / "batches").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    batch.to_parquet(folder / "batches" / f"{month}.parquet", index=False)
    left = ["yes" if i % 3 == 0 else "no" for i in range(labelled)]
    labels = pd.DataFrame({"cust": ids[:labelled][::-1], "left": left[::-1]})  # any order
    labels.to_parquet(folder / "labels" / f"{month}.parquet", index=False)


def test_labelled_rows_are_the_labelled_customers_with_their_target(tmp_path):
    _month(tmp_path, "2026-01", 10, 6)
    rows = labelled_rows(
        tmp_path / "batches/2026-01.parquet", tmp_path / "labels/2026-01.parquet", SPEC
    )
    assert list(rows.columns) == ["cust", "months", "spend", "plan", "region", "left"]
    assert list(rows["cust"]) == [f"2026-01-{i:03d}" for i in range(6)]  # the batch's order
    assert list(rows["left"]) == ["yes" if i % 3 == 0 else "no" for i in range(6)]
    assert rows.loc[0, "spend"] == ""  # raw text, as the raw data is


def test_the_held_out_share_is_seeded_by_month():
    ids = pd.Series([f"c{i}" for i in range(100)])
    held = holdout_ids(ids, 0.3, 17, "2026-03")
    assert len(held) == 30 and held <= set(ids)
    assert holdout_ids(ids.sample(frac=1, random_state=1), 0.3, 17, "2026-03") == held
    assert holdout_ids(ids, 0.3, 17, "2026-04") != held


def test_a_kept_champions_months_are_found_among_the_labelled_months(tmp_path):
    _month(tmp_path, "2026-01", 10, 6)
    _month(tmp_path, "2026-02", 10, 10)
    prepared = tmp_path / "train.parquet"
    pd.DataFrame(
        {ID_COLUMN: ["r1"], "months": [1.0], "spend": [2.0], "plan": ["pro"], "region": ["x"]}
        | {TARGET_COLUMN: np.array([1], dtype="int8")}
    ).to_parquet(prepared, index=False)
    wanted = np.array(["r1", "2026-01-002", "2026-02-009"])
    champion = Champion("m", 2, "run", 0.5, None, ["months", "spend"], ["plan"], wanted)
    with pytest.raises(ChurnlabError, match="2 of the 3 customers"):
        reference_table(champion, [prepared])

    def labelled():
        return all_labelled_rows(tmp_path, "batches", "labels", SPEC, {"spend": 0.0})

    reference = reference_table(champion, [prepared], labelled)
    assert sorted(reference[ID_COLUMN]) == sorted(wanted)
    row = reference.set_index(ID_COLUMN).loc["2026-01-002"]
    assert row["spend"] == 12.5 and row[TARGET_COLUMN] == 0


def test_dvc_lock_entries_of_dead_and_zombie_processes_are_dropped_and_live_ones_kept(tmp_path):
    """A cycle killed during `dvc repro` leaves DVC's rwlock entries behind, held by a dvc
    that is dead or a zombie nobody reaps; the next cycle must not be refused for them."""
    import json
    import os
    import subprocess
    import time

    from churnlab.cycle.retrain import release_dead_dvc_locks

    zombie = subprocess.Popen(["true"])  # exits and is not waited for: a zombie
    dead = subprocess.Popen(["true"])
    dead.wait()
    deadline = time.monotonic() + 10
    while open(f"/proc/{zombie.pid}/stat").read().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    live = {"pid": os.getpid(), "cmd": "dvc repro"}
    lock = {
        "read": {
            "data/raw/churn.csv": [{"pid": zombie.pid, "cmd": "dvc repro"}, live],
            "params": [{"pid": dead.pid, "cmd": "dvc repro"}],
        },
        "write": {"data/prepared": {"pid": zombie.pid, "cmd": "dvc repro"}, "models": live},
    }
    path = tmp_path / ".dvc" / "tmp" / "rwlock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(lock))
    try:
        assert release_dead_dvc_locks(tmp_path) == sorted({zombie.pid, dead.pid})
    finally:
        zombie.wait()
    assert json.loads(path.read_text()) == {
        "read": {"data/raw/churn.csv": [live]},
        "write": {"models": live},
    }
    assert release_dead_dvc_locks(tmp_path) == []  # nothing more to drop
    assert release_dead_dvc_locks(tmp_path / "elsewhere") == []  # no lock file: nothing to do


def test_recent_months_weigh_more_by_the_half_life():
    months = ["2026-01", "2026-03", "2026-05"]
    # 1, 3 and 5 months after the reference 2025-12; halved per 2 months back
    assert month_weights(months, "2025-12", 2) == {
        "2026-01": 2**0.5,
        "2026-03": 2**1.5,
        "2026-05": 2**2.5,
    }
    assert month_weights(months, "2025-12", None) == dict.fromkeys(months, 1.0)


def _raw(ids, plan_pro_leaves):
    rows = len(ids)
    plan = ["basic", "pro"] * (rows // 2)
    leaves = [(p == "pro") == plan_pro_leaves for p in plan]
    return pd.DataFrame(
        {
            "cust": ids,
            "months": [str(i % 50) for i in range(rows)],
            "spend": [str(10 + i % 7) for i in range(rows)],
            "plan": plan,
            "region": ["north", "south"] * (rows // 2),
            "left": ["yes" if x != (i % 5 == 0) else "no" for i, x in enumerate(leaves)],
        }
    )


def test_the_weights_of_the_months_reach_the_fit(tmp_path):
    prepared = clean_table(
        validate_table(_raw([f"c{i}" for i in range(200)], False), SPEC, "raw"), SPEC, {}
    )
    train, test = prepared.iloc[:160], prepared.iloc[160:]
    months = _raw([f"2026-01-{i:03d}" for i in range(100)], True)  # the relation turned over
    months[WEIGHT_COLUMN] = 4.0
    path = tmp_path / "training.parquet"
    months.astype(str).to_parquet(path, index=False)
    joined, added = add_cycle_months(train, test, path, SPEC, {})
    assert added == 100 and row_weights(joined).tolist() == [1.0] * 160 + [4.0] * 100
    numeric, categorical = feature_columns(joined)  # the weight is no feature
    assert (numeric, categorical) == (["months", "spend"], ["plan", "region"])
    model = build_model(numeric, categorical, "logistic_regression", 1, logistic_regression={})
    pro = joined[joined["plan"] == "pro"].iloc[:1]

    def score(weights):
        fitted = fit_model(model, joined, numeric, categorical, TARGET_COLUMN, weights)
        return float(
            fitted.predict_proba(
                pro[[*numeric, *categorical]].astype({c: object for c in categorical})
            )[0, 1]
        )

    plain, weighted = score(None), score(row_weights(joined))
    assert score(np.ones(len(joined))) == pytest.approx(plain)  # weights of 1: no change
    assert weighted > plain + 0.05  # the recent months (pro customers leave) count more
    cv = cross_validate(
        model, joined, numeric, categorical, TARGET_COLUMN, 2, 1, row_weights(joined)
    )
    assert len(cv.folds) == 2
    # without a weight column the split is what it was: no column, every row counts once
    months.drop(columns=[WEIGHT_COLUMN]).astype(str).to_parquet(path, index=False)
    plain_join, _ = add_cycle_months(train, test, path, SPEC, {})
    assert WEIGHT_COLUMN not in plain_join.columns and row_weights(plain_join) is None
