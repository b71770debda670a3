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

from churnlab.pipeline.binding import prepare_profile

from conftest import ROOT, copy_project, run

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
    """The notebooks for the CI profile of the default configuration, in their own root."""
    project = copy_project(tmp_path / "project")  # the shipped params: Telco references
    root = tmp_path / "profile"
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(telco_csv, root / "data" / "raw" / "churn.csv")
    prepare_profile(project, project / PROFILE.relative_to(ROOT), root)
    return root


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


# --- as a person runs them: JupyterLab ----------------------------------------------------

LAB_OUTPUTS = (
    "data/prepared/train.parquet",
    "data/prepared/test.parquet",
    "metrics/prepare.json",
    "models/model.skops",
    "models/features.json",
    "models/oof_scores.parquet",
    "metrics/cv.json",
    "metrics/test.json",
    "metrics/headline.json",
    "models/test_scores.parquet",
    "plots/roc.csv",
)


def test_run_all_in_jupyterlab_gives_the_runners_results(pipeline_project, tmp_path):
    """JupyterLab starts a notebook's kernel in notebooks/ and injects no parameters: Run All
    in each pipeline notebook must work unchanged and write what the runner wrote."""
    import nbformat
    from nbclient import NotebookClient

    project = tmp_path / "lab"
    shutil.copytree(
        pipeline_project, project, ignore=shutil.ignore_patterns(".git", ".dvc", "mlruns")
    )
    (project / "mlflow.db").unlink(missing_ok=True)
    for name in LAB_OUTPUTS:
        (project / name).unlink()
    for notebook in sorted((project / "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(notebook, as_version=4)
        client = NotebookClient(
            nb,
            kernel_name="churnlab",
            timeout=600,
            resources={"metadata": {"path": str(project / "notebooks")}},  # as JupyterLab
        )
        client.execute()
    for name in LAB_OUTPUTS:
        assert (project / name).read_bytes() == (pipeline_project / name).read_bytes(), name
    assert not (project / "mlflow.db").exists(), "a notebook run by a person logged to MLflow"
    assert not (project / "notebooks" / "data").exists(), "wrote relative to notebooks/"


def test_make_lab_shows_the_whole_project():
    """The file browser starts at the project root (params, reports), not in notebooks/."""
    import json as json_module
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    from conftest import free_port, tool_env

    port, token = free_port(), "churnlab-test"
    args = f"--no-browser --port={port} --IdentityProvider.token={token}"
    server = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS={args}"],
        cwd=ROOT,
        env={**tool_env(), "JUPYTER_CONFIG_DIR": str(ROOT / ".churnlab" / "jupyter-test")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/contents?token={token}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    listing = json_module.load(response)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("make lab: JupyterLab did not answer in 60 s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    names = {item["name"] for item in listing["content"]}
    assert {"notebooks", "params", "reports", "dvc.yaml", "README.md"} <= names
