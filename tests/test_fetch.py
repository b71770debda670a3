import hashlib

import pytest

from churnlab.errors import ChurnlabError
from churnlab.fetch import TELCO_SHA256, check_digest, fetch_raw


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
