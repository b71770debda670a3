"""nbval over every pipeline notebook under the small-data CI profile.

The notebooks are parameterized for ``params/profiles/ci.yaml`` and run in a temporary
output root holding only the raw data, in pipeline order. Lax mode: every cell runs, the
assertion cells check the metrics, and only cells marked ``NBVAL_CHECK_OUTPUT`` are compared
with their reference outputs (kept in the committed .ipynb, sanitized).
"""

import json
import shutil
import sys

import pytest

from churnlab.runner import prepare_profile

from conftest import ROOT, run

pytestmark = pytest.mark.pipeline
PROFILE = ROOT / "params" / "profiles" / "ci.yaml"


def nbval(folder, *notebooks):
    return run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-kernel-name",
            "churnlab",
            "--nbval-sanitize-with",
            str(ROOT / "tests" / "nbval_sanitize.cfg"),
            "-q",
            "--rootdir",
            str(folder),
            *notebooks,
        ],
        folder,
        check=False,
    )


@pytest.fixture
def profile_root(tmp_path, telco_csv):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    shutil.copy(telco_csv, tmp_path / "data" / "raw" / "churn.csv")
    prepare_profile(ROOT, PROFILE, tmp_path)
    return tmp_path


def test_every_pipeline_notebook_passes_nbval_on_the_ci_profile(profile_root):
    notebooks = sorted(p.name for p in profile_root.glob("0*.ipynb"))
    assert notebooks == [
        "01_explore.ipynb",
        "02_prepare.ipynb",
        "03_train.ipynb",
        "04_evaluate.ipynb",
    ]
    store = ROOT / "mlflow.db"
    before = store.stat().st_mtime_ns if store.exists() else None
    result = nbval(profile_root, *notebooks)
    assert result.returncode == 0, result.stdout[-4000:]
    assert (store.stat().st_mtime_ns if store.exists() else None) == before, (
        "the notebook checks wrote into the user's MLflow store"
    )
    assert not (profile_root / "mlflow.db").exists()
    metrics = json.loads((profile_root / "metrics" / "test.json").read_text())
    prepared = json.loads((profile_root / "metrics" / "prepare.json").read_text())
    assert sum(prepared["rows"].values()) == 2000  # the profile's sample, not the full data
    assert metrics["rows"] == prepared["rows"]["test"]
    assert not (ROOT / "metrics" / "ci").exists()


def test_nbval_fails_when_a_checked_output_changes(profile_root):
    path = profile_root / "02_prepare.ipynb"
    notebook = json.loads(path.read_text())
    checked = [c for c in notebook["cells"] if "NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert len(checked) == 1
    checked[0]["outputs"][0]["text"] = "columns of the prepared tables: 99\n"
    path.write_text(json.dumps(notebook))
    result = nbval(profile_root, "02_prepare.ipynb")
    assert result.returncode != 0 and "columns of the prepared tables: 99" in result.stdout
