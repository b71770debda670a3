"""Shared fixtures. Tests never depend on the working directory: paths start at ROOT."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from churnlab.fetch import TELCO_SHA256, fetch_raw
from churnlab.pipeline import workspace

ROOT = Path(__file__).resolve().parents[1]
# Two test workers on two cores: one OpenMP thread each. HistGradientBoosting's threads spin
# when the other core is busy (a train stage then runs 20-30x slower); the saved model's bytes
# do not depend on the thread count (churnlab.model), so results stay the same.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A pipeline run's tracking service waits 10 minutes for the next run (a person's loop);
# the suite's dozens of temporary projects would keep that many services: 20 s is enough
# for a test's runs one after the other (tests/test_tracking.py sets its own where it counts)
os.environ.setdefault("CHURNLAB_TRACKING_SERVICE_IDLE", "20")
os.environ.setdefault("CHURNLAB_WARM_IDLE", "20")  # the warm interpreters, likewise
# The shipped configuration (Telco data, every param at its default): the tests of the
# package and of the default pipeline run on it in temporary copies, whatever data the
# project itself is configured for (tests/defaults/README.md).
DEFAULTS = ROOT / "tests" / "defaults"
OWN_DATA = "data/own"


def param_files(folder: Path) -> dict[str, bytes]:
    """Every params file under ``folder`` (profiles too), by relative name."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.yaml"))}


def on_default_config() -> bool:
    """Whether the project's own params are the shipped defaults (then its committed
    outputs are those of the default pipeline)."""
    return param_files(ROOT / "params") == param_files(DEFAULTS / "params")


@pytest.fixture(autouse=True, scope="session")
def _not_the_users_tracking_store():
    """Tests in this process never log to a store the user configured."""
    saved = {
        n: os.environ.pop(n)
        for n in ("MLFLOW_TRACKING_URI", "CHURNLAB_TRACKING")
        if n in os.environ
    }
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def params() -> dict:
    from churnlab.config import load_params

    return load_params(DEFAULTS)


@pytest.fixture(scope="session")
def schema(params) -> dict:
    return params["schema"]


@pytest.fixture(scope="session")
def telco_csv(tmp_path_factory) -> Path:
    """The real Telco CSV, fetched the way the pipeline fetches it (checksum checked)."""
    target = tmp_path_factory.mktemp("raw") / "churn.csv"
    fetch_raw("telco", TELCO_SHA256, target, ROOT)
    return target


def tool_env(path: str | None = None) -> dict:
    """The environment for the project's command-line tools (dvc, churnlab, pytest).

    Args:
        path: the ``PATH`` to use instead of this one with the project's ``.venv/bin`` first.
    """
    env = dict(os.environ)
    env["PATH"] = path or f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    for name in ("MLFLOW_TRACKING_URI", "CHURNLAB_TRACKING"):  # never the user's store
        env.pop(name, None)
    return env


def run(
    cmd: list[str], cwd: Path, check: bool = True, path: str | None = None, **kwargs
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=tool_env(path), capture_output=True, text=True, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(target: Path, config: str = "default") -> Path:
    """A fresh git repository holding the project's files as they are in the work tree.

    Args:
        target: an empty folder.
        config: ``"default"``: the shipped params (``tests/defaults``) replace the project's
            own, so the copy runs the default pipeline; ``"user"``: the project's params and
            its own data files (``data/own``, versioned by DVC, so not in git) as they are.
    """
    if config not in ("default", "user"):
        raise ValueError(f"config: 'default' or 'user', not {config!r}")
    workspace.copy_project(ROOT, target)
    if config == "default":
        shutil.rmtree(target / "params")
        shutil.copytree(DEFAULTS / "params", target / "params")
        # the user's own tables (their .dvc files are in git, the data is not): not used here
        for path in (target / OWN_DATA).iterdir():
            if path.name != "README.md":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        shutil.copytree(ROOT / OWN_DATA, target / OWN_DATA, dirs_exist_ok=True)
    workspace.commit_all(target, author="test", message="copy", env=tool_env())
    return target


def set_param(project: Path, file_name: str, dotted: str, value) -> None:
    """Change one key of a params file in a project copy."""
    path = project / file_name
    content = yaml.safe_load(path.read_text())
    node = content
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def switch_to_own_data(project: Path, relative: str, schema: dict) -> None:
    """Point a project copy at its own table by params only, as the README says: the file
    in data/own versioned by DVC, the schema, and the params that name columns."""
    run(["dvc", "add", "-q", relative], project)
    set_param(project, "params/data.yaml", "data.source", relative)
    set_param(project, "params/data.yaml", "data.sha256", None)
    set_param(project, "params/data.yaml", "schema", schema)
    set_param(project, "params/prepare.yaml", "prepare.fill_missing", {})
    set_param(project, "params/explore.yaml", "explore.segments", list(schema["categorical"]))
    set_param(project, "params/report.yaml", "report.segments", [])
    set_param(project, "params/report.yaml", "report.sensitive_columns", [])


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test run, even when pytest-xdist runs several workers.

    Under xdist every worker has its own session; the first to arrive builds in a folder
    shared by the run (named after the run's id), the others wait for it and use the result.
    Tests must only read what it built (those that change it work on a ``committed_copy``).
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        folder = tmp_path_factory.mktemp(name) / "project"
        build(folder)
        return folder
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / f"shared-{run_id}"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name / "project", shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder.parent, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


def _default_pipeline(folder: Path) -> None:
    copy_project(folder)
    result = run(["dvc", "repro"], folder)
    assert "Running stage 'report'" in result.stdout


def _user_pipeline(folder: Path) -> None:
    copy_project(folder, config="user")
    run(["dvc", "repro"], folder)


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory) -> Path:
    """A fresh copy of the project after one full ``dvc repro`` of the default pipeline
    (built once per test run; read it, change only a ``committed_copy``)."""
    return built_once(tmp_path_factory, "e2e", _default_pipeline)


@pytest.fixture(scope="session")
def user_project(tmp_path_factory, pipeline_project) -> Path:
    """A fresh copy of the project as configured (its params, its data) after ``dvc repro``.

    On the default configuration that is the default pipeline's run; on the user's own data,
    a run of its own.
    """
    if on_default_config():
        return pipeline_project
    return built_once(tmp_path_factory, "user", _user_pipeline)


def committed_copy(project: Path, target: Path) -> Path:
    """A copy of a project after a run (its git history and DVC cache too), the run committed,
    for tests that change it without disturbing the session's other tests."""
    shutil.copytree(project, target, symlinks=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run([*git, "add", "-A"], target)
    run([*git, "commit", "-q", "--allow-empty", "-m", "pipeline run"], target)
    return target


def pipeline_model(project: Path):
    """The model file, its feature lists and the test split of a project after a run."""
    import pandas as pd

    from churnlab.model import load_model

    model, features = load_model(
        project / "models" / "model.skops", project / "models" / "features.json"
    )
    return model, features, pd.read_parquet(project / "data" / "prepared" / "test.parquet")


def registered_model(project: Path) -> str:
    """The registered model's name, from the project's tracking settings."""
    from churnlab.tracking.settings import load_settings

    return load_settings(project, {}).registered_model


@contextlib.contextmanager
def unwritable(path: Path):
    """A file or folder nobody may change, root included (``chattr +i``), for a block."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)


def assert_champion_scores_like_the_model_file(project: Path) -> None:
    """The registry's champion, loaded by alias, gives the model file's churn scores."""
    import numpy as np

    from churnlab.model import predict_scores
    from churnlab.tracking.registry import load_champion

    model, features, test = pipeline_model(project)
    columns = features["numeric"] + features["categorical"]
    served = np.asarray(load_champion(project).predict(test[columns]))
    assert np.array_equal(served[:, 1], predict_scores(model, test, features))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def apt_install(package: str) -> None:
    """Install a Debian package when we may (root, apt-get there); the caller checks after."""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, check=False)


def mlflow_runs(root: Path) -> list:
    """The runs of a project's own embedded store, oldest first."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("churnlab")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


def outputs(project: Path, folders=("data", "models", "metrics", "plots", "reports")) -> dict:
    """SHA-256 of dvc.lock and every output file of a project."""
    files = [project / "dvc.lock"]
    for folder in folders:
        files += sorted(p for p in (project / folder).rglob("*") if p.is_file())
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_one_clean_error(result, *expected: str) -> None:
    assert result.returncode != 0
    assert result.stderr.count("churnlab: error:") == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]
