"""How runs are recorded: ``params/tracking.yaml`` after the environment, and how to reach
the store it names.

``MLFLOW_TRACKING_URI`` wins over ``tracking.uri``; ``CHURNLAB_TRACKING=off`` switches
tracking off for a shell. The embedded store is SQLite; its writers take a file lock
(``store_lock``), so two pipeline runs logging at once wait for each other instead of failing
with "database is locked".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from churnlab.config import read_yaml
from churnlab.errors import ChurnlabError

SETTINGS_FILE = "params/tracking.yaml"
DEFAULT_STORE = "mlflow.db"  # in the project root, git-ignored
ARTIFACT_DIR = "mlruns"  # the embedded store's artifacts, git-ignored
PROMOTION_METRICS = {"roc_auc": True, "pr_auc": True, "brier": False}  # higher is better?


@dataclass(frozen=True)
class Settings:
    """How runs are recorded (``params/tracking.yaml``, after the environment)."""

    enabled: bool
    uri: str
    experiment: str
    registered_model: str
    on_unreachable: str
    register_stage: str
    promotion_metric: str
    promotion_margin: float
    promotion_min_customers: int = 200


def load_settings(root: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check ``params/tracking.yaml``; apply ``MLFLOW_TRACKING_URI`` and
    ``CHURNLAB_TRACKING``.

    A missing file means tracking is off (``churnlab.param_rules.check_params`` warns about
    it at each stage start).

    Raises:
        ChurnlabError: an unknown or mistyped setting, naming the file and the key.
    """
    # param_rules takes SETTINGS_FILE and PROMOTION_METRICS from this module: importing it
    # at the top would make an import loop.
    from churnlab.param_rules import check_section

    environ = os.environ if environ is None else environ
    if not (root / SETTINGS_FILE).is_file():  # a project that has not set tracking up
        return Settings(False, "", "", "", "stop", "", "roc_auc", 0.0)
    content = (read_yaml(root / SETTINGS_FILE) or {}).get("tracking")
    if not isinstance(content, dict):
        raise ChurnlabError(f"{SETTINGS_FILE}: expected a 'tracking' section")
    check_section(SETTINGS_FILE, "tracking", content)
    metric = content["promotion"]["metric"]
    switch = environ.get("CHURNLAB_TRACKING", "").strip().lower()
    enabled = content["enabled"] and switch not in ("0", "off", "false", "no")
    uri = environ.get("MLFLOW_TRACKING_URI") or content["uri"]
    if not uri:
        uri = f"sqlite:///{(root / DEFAULT_STORE).resolve()}"
    return Settings(
        enabled=enabled,
        uri=uri,
        experiment=content["experiment"],
        registered_model=content["registered_model"],
        on_unreachable=content["on_unreachable"],
        register_stage=content["register_stage"],
        promotion_metric=metric,
        promotion_margin=float(content["promotion"]["margin"]),
        promotion_min_customers=content["promotion"]["min_customers"],
    )


def first_line(exc: BaseException) -> str:
    """The first telling line of an error, short enough for a one-line message."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.startswith("(raised as a result of")  # SQLAlchemy's note
    ]
    return lines[0][:200] if lines else type(exc).__name__


def display_uri(uri: str) -> str:
    """The URI without a password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --- reaching the store: both the runs and the registry write through these -----------------


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside an SQLite store (``mlflow.db.lock``); no-op for servers.

    SQLite allows one writer; MLflow's own retries give up with "database is locked", and two
    processes creating the tables of a new store collide. Waiting here avoids both.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri[len("sqlite:///") :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's module-level API at ``uri`` for a block, then back where it was.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment, which
    would leak into later settings and child processes.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
