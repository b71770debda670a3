import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from churnlab.errors import ChurnlabError
from churnlab.fetch import TELCO_SHA256, check_digest, fetch_raw
from churnlab.split import SplitPlan

from conftest import copy_project, set_param, switch_to_own_data, tool_env


def test_telco_data_is_the_checked_file(telco_csv):
    data = telco_csv.read_bytes()
    assert hashlib.sha256(data).hexdigest() == TELCO_SHA256
    assert b"\r\n" not in data
    assert data.count(b"\n") == 7044  # header and 7,043 customers


def test_a_checksum_mismatch_states_expected_and_found():
    data = b"customer,churn\n1,Yes\n"
    found = hashlib.sha256(data).hexdigest()
    with pytest.raises(ChurnlabError) as error:
        check_digest(data, "0" * 64, "their.csv")
    assert f"expected {'0' * 64}, found {found}" in str(error.value)
    assert "data.sha256" in str(error.value)


def test_a_wrong_checksum_writes_nothing(tmp_path):
    source = tmp_path / "own.csv"
    source.write_bytes(b"id,churn\r\n1,Yes\r\n")
    target = tmp_path / "raw" / "churn.csv"
    with pytest.raises(ChurnlabError, match="SHA-256 mismatch"):
        fetch_raw(str(source), "f" * 64, target, tmp_path)
    assert not target.exists()


def test_own_csv_is_copied_with_lf_line_ends(tmp_path):
    source = tmp_path / "own.csv"
    source.write_bytes(b"id,churn\r\n1,Yes\r\n")
    target = tmp_path / "raw" / "churn.csv"
    digest = fetch_raw("own.csv", None, target, tmp_path)
    assert target.read_bytes() == b"id,churn\n1,Yes\n"
    assert digest == hashlib.sha256(b"id,churn\n1,Yes\n").hexdigest()


@pytest.mark.parametrize(
    ("source", "message"),
    [("missing.csv", "file not found"), ("table.xlsx", "must be 'telco' or a .csv or .parquet")],
)
def test_a_bad_source_is_named(tmp_path, source, message):
    with pytest.raises(ChurnlabError, match=message):
        fetch_raw(source, None, tmp_path / "raw.csv", tmp_path)


def test_source_and_target_formats_must_agree(tmp_path):
    (tmp_path / "own.parquet").write_bytes(b"PAR1")
    with pytest.raises(ChurnlabError, match="paths.raw.*must end in .parquet"):
        fetch_raw("own.parquet", None, tmp_path / "raw.csv", tmp_path)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.mkdir(), "a directory, not a file"),
        (lambda p: os.mkfifo(p), "a FIFO (named pipe), not a file"),
        (lambda p: p.symlink_to(p), "a symlink loop"),
    ],
)
def test_a_source_that_is_not_a_file_says_what_it_is(tmp_path, make, what):
    make(tmp_path / "own.csv")
    signal.alarm(10)  # reading a FIFO would wait for a writer: fail instead of hanging
    try:
        with pytest.raises(ChurnlabError) as error:
            fetch_raw("own.csv", None, tmp_path / "raw.csv", tmp_path)
    finally:
        signal.alarm(0)
    assert str(error.value).startswith(f"params/data.yaml: data.source: {tmp_path}/own.csv: {what}")
    assert not (tmp_path / "raw.csv").exists()


OWN_SCHEMA = {
    "id_column": "cust",
    "target": "left",
    "positive_label": "yes",
    "negative_label": "no",
    "numeric": {"months": {"min": 0}},
    "categorical": {"plan": ["basic", "pro"]},
}


def own_csv(path: Path, leavers: int, rows: int) -> Path:
    lines = ["cust,months,plan,left"] + [
        f"c{i},{i},{'basic' if i % 2 else 'pro'},{'yes' if i < leavers else 'no'}"
        for i in range(rows)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("leavers", "rows", "message"),
    [
        (0, 50, "a churn model needs leavers and stayers; found 0 leaver(s)"),
        (1, 1, "a churn model needs leavers and stayers; found 1 leaver(s)"),
        (3, 50, "needs at least 8 leavers and 8 stayers for 5 folds"),
    ],
)
def test_data_the_pipeline_cannot_use_never_replaces_the_raw_file(tmp_path, leavers, rows, message):
    own_csv(tmp_path / "own.csv", leavers, rows)
    target = tmp_path / "raw" / "churn.csv"
    own_csv(target, 10, 60)
    good = target.read_bytes()
    plan = SplitPlan(test_size=0.2, seed=1, cv_folds=5)
    with pytest.raises(ChurnlabError, match=re.escape(message)):
        fetch_raw("own.csv", None, target, tmp_path, schema=OWN_SCHEMA, plan=plan)
    assert target.read_bytes() == good


def test_a_small_table_with_enough_of_each_class_for_the_folds_is_fetched(tmp_path):
    own_csv(tmp_path / "own.csv", 3, 50)
    target = tmp_path / "raw.csv"
    plan = SplitPlan(test_size=0.2, seed=1, cv_folds=2)
    fetch_raw("own.csv", None, target, tmp_path, schema=OWN_SCHEMA, plan=plan)
    assert target.read_bytes() == (tmp_path / "own.csv").read_bytes()
    with pytest.raises(ChurnlabError, match="for 3 folds"):
        fetch_raw(
            "own.csv", None, target, tmp_path, schema=OWN_SCHEMA, plan=replace(plan, cv_folds=3)
        )


@pytest.mark.parametrize(
    ("leavers", "rows", "message"),
    [
        (
            3,
            50,
            "needs at least 8 leavers and 8 stayers for 5 folds (params/train.yaml "
            "train.cv_folds) and a 20% test split (params/prepare.yaml prepare.test_size); found "
            "3 leaver(s) ('yes') and 47 stayer(s) ('no'): add customers, or lower train.cv_folds",
        ),
        (
            0,
            50,
            "a churn model needs leavers and stayers; found 0 leaver(s) ('yes') and 50 "
            "stayer(s) ('no') (params/data.yaml schema.target, positive_label, negative_label)",
        ),
        (
            1,
            1,
            "a churn model needs leavers and stayers; found 1 leaver(s) ('yes') and 0 "
            "stayer(s) ('no') (params/data.yaml schema.target, positive_label, negative_label)",
        ),
    ],
)
def test_churnlab_fetch_refuses_unusable_data_and_keeps_raw_data_and_lock(
    tmp_path, leavers, rows, message
):
    project = copy_project(tmp_path / "project")
    own_csv(project / "data" / "own" / "small.csv", leavers, rows)
    switch_to_own_data(project, "data/own/small.csv", OWN_SCHEMA)
    raw = project / "data" / "raw" / "churn.csv"
    own_csv(raw, 10, 60)  # the good raw data of an earlier run
    kept = {path: path.read_bytes() for path in (raw, project / "dvc.lock")}
    env = {**tool_env(), "CHURNLAB_TRACKING": "off"}
    proc = subprocess.run(
        ["churnlab", "fetch"], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"churnlab: error: {project}/data/own/small.csv: {message}"]
    assert {path: path.read_bytes() for path in kept} == kept


def test_churnlab_fetch_names_what_a_bad_source_is(tmp_path):
    project = copy_project(tmp_path / "project")
    own = project / "data" / "own"
    (own / "loop.csv").symlink_to("loop.csv")
    os.mkfifo(own / "pipe.csv")
    (own / "folder.csv").mkdir()
    env = {**tool_env(), "CHURNLAB_TRACKING": "off"}
    for name, what in [
        ("loop.csv", "a symlink loop"),
        ("pipe.csv", "a FIFO (named pipe), not a file"),
        ("folder.csv", "a directory, not a file"),
    ]:
        set_param(project, "params/data.yaml", "data.source", f"data/own/{name}")
        proc = subprocess.run(
            ["churnlab", "fetch"], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[0].startswith(
            f"churnlab: error: params/data.yaml: data.source: {own / name}: {what}"
        ), proc.stderr
        assert len(proc.stderr.splitlines()) == 1


def test_the_raw_table_is_validated_once_per_content_and_schema(tmp_path):
    """fetch records that these bytes passed this schema; prepare and explore then skip the
    pandera pass, and a changed file or schema finds no record and fails as before."""
    from test_data import SCHEMA

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params").mkdir()
    source = tmp_path / "own.csv"
    rows = 40
    source.write_text(
        "cust,months,spend,plan,region,left\n"
        + "".join(
            f"c{i},{i},{i}.5,{'basic' if i % 2 else 'pro'},north,{'yes' if i < 10 else 'no'}\n"
            for i in range(rows)
        )
    )
    target = tmp_path / "data" / "raw" / "churn.csv"
    fetch_raw(str(source), None, target, tmp_path, schema=SCHEMA)
    prepare = {"seed": 1, "test_size": 0.25, "fill_missing": {}, "sample_rows": None}

    def load_prepared_in_a_fresh_process(schema: dict) -> subprocess.CompletedProcess:
        code = (
            "import json, sys\n"
            "from churnlab.split import load_prepared\n"
            f"train, test, _ = load_prepared(sys.argv[1], json.loads(sys.argv[2]), {prepare!r})\n"
            "print(len(train) + len(test), 'pandera' in sys.modules)\n"
        )
        return subprocess.run(
            [sys.executable, "-c", code, str(target), json.dumps(schema)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    unchanged = load_prepared_in_a_fresh_process(SCHEMA)
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout.split() == [str(rows), "False"]  # the record matched: no pandera

    good = target.read_bytes()
    # a changed file of the same size: its bytes are not those the record names
    target.write_bytes(good.replace(b",basic,", b",basix,", 1))
    changed_file = load_prepared_in_a_fresh_process(SCHEMA)
    assert changed_file.returncode != 0
    assert "column 'plan', rule isin" in changed_file.stderr
    assert "'basix'" in changed_file.stderr

    target.write_bytes(good)
    stricter = {**SCHEMA, "categorical": {**SCHEMA["categorical"], "plan": ["basic"]}}
    changed_schema = load_prepared_in_a_fresh_process(stricter)  # same bytes, new schema
    assert changed_schema.returncode != 0
    assert "column 'plan', rule isin" in changed_schema.stderr
    assert "'pro'" in changed_schema.stderr
    # the good bytes written again (a new file for the file system): recognised by SHA-256,
    # and the record takes the file's new identity so that the next stage need not hash it
    assert load_prepared_in_a_fresh_process(SCHEMA).stdout.split() == [str(rows), "False"]
    (record,) = (tmp_path / ".churnlab" / "validated").iterdir()
    info = target.stat()
    now = [info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
    assert json.loads(record.read_text())["identity"] == now
