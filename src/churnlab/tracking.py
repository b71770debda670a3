"""MLflow tracking of pipeline runs, the model registry and promotion.

Each stage that runs is an MLflow run, nested under one parent run per pipeline run (one
``dvc repro`` or ``dvc exp run``), so a person sees one row per pipeline run in the UI. The
parent gathers every param the stages read, every metric they wrote, the data lineage, the git
commit and the DVC experiment name; the stage runs hold their executed notebooks, HTML and
figures. After the stage named by ``tracking.register_stage`` succeeds (its quality gates
passed), the model is logged with a signature, an input example and the ids of its training
customers, registered, and compared with the ``champion`` on test customers neither model was
trained on. The aliases (``challenger``, and ``champion`` when promoted) move as the very last
step of a successful stage; a stage that fails leaves them where they were and deletes the
version it registered.

Nothing here runs at import time. Settings come from ``params/tracking.yaml``; the
``MLFLOW_TRACKING_URI`` environment variable wins over ``tracking.uri``; ``CHURNLAB_TRACKING=off``
switches tracking off for a shell. The embedded store is SQLite; its writers take a file lock,
so two pipeline runs logging at once wait for each other instead of failing with "database is
locked".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from churnlab.config import flatten
from churnlab.errors import ChurnlabError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SETTINGS_FILE = "params/tracking.yaml"
DEFAULT_STORE = "mlflow.db"  # in the project root, git-ignored
ARTIFACT_DIR = "mlruns"  # the embedded store's artifacts, git-ignored
PROMOTION_METRICS = {"roc_auc": True, "pr_auc": True, "brier": False}  # higher is better?
TAG_PIPELINE = "churnlab.pipeline"
TAG_HOST, TAG_PID, TAG_STARTED = "churnlab.host", "churnlab.pid", "churnlab.process_start"
TRAINING_IDS = "training/customer_ids.parquet"  # run artifact: whom the model was trained on
MODEL_FILE = "model.skops"  # the model inside a registered version (mlflow.sklearn, skops)


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
    from churnlab.config import read_yaml
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


# --- processes: which pipeline run a stage belongs to, and whether a run's process lives ---


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), or None when it is gone."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(arg.decode(errors="replace")).name == "dvc" for arg in argv[:3])


def pipeline_owner() -> tuple[int, str]:
    """The process whose pipeline run this is: the nearest ``dvc`` ancestor, else this one."""
    pid: int | None = os.getpid()
    while pid and pid > 1:
        if _is_dvc(pid):
            return pid, _process_start(pid) or ""
        pid = _parent_pid(pid)
    return os.getpid(), _process_start(os.getpid()) or ""


def _alive(tags: Mapping[str, str]) -> bool:
    """Whether the process a run belongs to still runs (unknown hosts count as alive)."""
    if tags.get(TAG_HOST) != socket.gethostname() or TAG_PID not in tags:
        return True
    return _process_start(int(tags[TAG_PID])) == tags.get(TAG_STARTED)


def git_state(root: Path, ignore: set[str] = frozenset()) -> tuple[str | None, bool]:
    """The commit and whether tracked files differ from it (``ignore``: pipeline outputs)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None, False
    paths = {line[3:].strip() for line in changed}
    return commit, bool(paths - set(ignore) - {"dvc.lock"})


# --- what gets logged ------------------------------------------------------------------------

# What MLflow accepts in one part of a param or metric key (its own rule, less the colon that
# Windows refuses); '.' joins the parts and '/' makes a key a path, so both are escaped too.
_KEY_CHARACTER = re.compile(r"[\w\- ]")
_ESCAPE_LOOKALIKE = re.compile(r"_x[0-9A-F]{4}")


def _escape_character(char: str) -> str:
    units = char.encode("utf-16-be")  # beyond U+FFFF: two escapes, so every escape has 4 digits
    return "".join(f"_x{units[i]:02X}{units[i + 1]:02X}_" for i in range(0, len(units), 2))


def mlflow_key_part(part: str) -> str:
    """One part of a param or metric key (a column name, say) in a form MLflow accepts.

    A character MLflow refuses becomes ``_xHHHH_``, its UTF-16 code in hex (the escape of
    names in XML and Office files): ``Plan (type)`` -> ``Plan _x0028_type_x0029_``.
    A literal ``_`` that would read as the start of such an escape is escaped itself
    (``_x005F_``), so two different parts never give the same key. Parts MLflow accepts
    as they are (``cv_folds``, ``max_iter``) do not change.
    """
    out = []
    for index, char in enumerate(part):
        following = part[index + 6 : index + 7]
        if (
            char == "_"
            and _ESCAPE_LOOKALIKE.match(part, index)
            and following
            and (following == "_" or not _KEY_CHARACTER.fullmatch(following))
        ):
            out.append("_x005F_")  # the next characters would end as an escape: _xHHHH_
        elif _KEY_CHARACTER.fullmatch(char):
            out.append(char)
        else:
            out.append(_escape_character(char))
    return "".join(out)


def mlflow_keys(tree: Any) -> Any:
    """Nested mappings with every key made an MLflow key part (see ``mlflow_key_part``)."""
    if not isinstance(tree, Mapping):
        return tree
    return {mlflow_key_part(str(key)): mlflow_keys(value) for key, value in tree.items()}


def shorten_key(key: str) -> str:
    """A key within MLflow's 250 characters: a long one keeps its start and a digest."""
    if len(key) <= 250:
        return key
    return f"{key[:233]}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """A stage's params as MLflow params: dotted keys, secrets masked, values as text.

    The top-level keys are the param keys of ``dvc.yaml`` (``train``, ``paths.raw``); the
    keys below them come from the data (column names in ``schema``) and are escaped.
    """
    from churnlab.secrets import masked_params

    masked = masked_params(dict(params))
    values = flatten({key: mlflow_keys(value) for key, value in masked.items()})
    return {
        shorten_key(key): value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
    }


def metric_values(name: str, content: Mapping) -> dict[str, float]:
    """The numbers of one metrics file as MLflow metrics: ``test.roc_auc``, ``cv.folds``."""
    return {
        shorten_key(f"{name}.{key}"): float(value)
        for key, value in flatten(mlflow_keys(content)).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def file_lineage(root: Path, path: str) -> dict[str, Any]:
    """A data file's DVC hash (MD5 of its bytes) and row count."""
    target = root / path
    digest = hashlib.md5(target.read_bytes()).hexdigest()
    if target.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_metadata(target).num_rows
    else:
        with target.open("rb") as handle:
            rows = max(sum(1 for _ in handle) - 1, 0)
    return {"md5": digest, "rows": int(rows)}


def notebook_figures(nb) -> list[bytes]:
    """The PNG figures a notebook's outputs show, in order."""
    import base64

    figures = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                figures.append(base64.b64decode(data["image/png"]))
    return figures


# --- the tracker ------------------------------------------------------------------------------


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


class Tracker:
    """Records the stage runs of pipeline runs in one MLflow store."""

    def __init__(self, root: Path, settings: Settings):
        import mlflow

        self.root = root
        self.settings = settings
        self.client = mlflow.MlflowClient(settings.uri)
        self._experiment_id: str | None = None

    @classmethod
    def open(cls, root: Path) -> Tracker | None:
        """The tracker, checked to reach its store; None when tracking is off.

        Raises:
            ChurnlabError: the store cannot be reached and ``on_unreachable`` is ``stop``.
        """
        settings = load_settings(root)
        if not settings.enabled:
            return None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # one line per stage is enough
        # it logs a database error with its traceback, then raises it: we report it once
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        try:
            with store_lock(settings.uri):  # creating the client may create the database
                tracker = cls(root, settings)
                tracker.experiment_id()
        except Exception as exc:  # any failure to reach the store is the same to the user
            reason = first_line(exc)
            where = display_uri(settings.uri)
            message = f"MLflow tracking store {where} cannot be reached ({reason})"
            if settings.on_unreachable == "continue":
                print(
                    f"churnlab: warning: {message}; going on without tracking "
                    f"({SETTINGS_FILE} tracking.on_unreachable: continue)",
                    file=sys.stderr,
                )
                return None
            raise ChurnlabError(
                f"{message}. Start it (`make server`), point MLFLOW_TRACKING_URI or "
                f"{SETTINGS_FILE} tracking.uri at a running store, or set "
                "tracking.on_unreachable: continue"
            ) from None
        return tracker

    def locked(self):
        """Serialise writers of an embedded SQLite store (a server needs no lock)."""
        return store_lock(self.settings.uri)

    @contextlib.contextmanager
    def store_errors(self, what: str) -> Iterator[None]:
        """Any failure of the store or its artifacts while doing ``what`` becomes one
        ChurnlabError naming the store (a read-only or full database, a server gone)."""
        try:
            yield
        except ChurnlabError:
            raise
        except Exception as exc:
            raise ChurnlabError(
                f"MLflow tracking store {display_uri(self.settings.uri)}: {what} failed "
                f"({first_line(exc)}); the stage failed and its earlier outputs are kept. Make "
                "the store writable (permissions, free disk space, a running server) and run "
                "the stage again"
            ) from None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.settings.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                location = None
                if self.settings.uri.startswith("sqlite:///"):
                    location = (self.root / ARTIFACT_DIR).resolve().as_uri()
                self._experiment_id = self.client.create_experiment(
                    self.settings.experiment, artifact_location=location
                )
        return self._experiment_id

    def mark_stale_runs(self) -> list[str]:
        """Runs left RUNNING by a process that is gone become KILLED; returns their ids.

        A model version such a run registered but never got an alias (the process died before
        the stage's last step) is deleted: the registry keeps no version of a failed run.
        """
        killed = []
        runs = self.client.search_runs(
            [self.experiment_id()], "attributes.status = 'RUNNING'", max_results=1000
        )
        for run in runs:
            if not _alive(run.data.tags):
                self.client.set_terminated(run.info.run_id, "KILLED")
                killed.append(run.info.run_id)
                for version in self.client.search_model_versions(f"run_id = '{run.info.run_id}'"):
                    if not version.aliases:
                        self.client.delete_model_version(version.name, version.version)
        return killed

    def _parent(self, outputs: set[str]) -> str:
        pid, started = pipeline_owner()
        key = f"{socket.gethostname()}:{pid}:{started}"
        found = self.client.search_runs(
            [self.experiment_id()], f"tags.`{TAG_PIPELINE}` = '{key}'", max_results=1
        )
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        commit, dirty = git_state(self.root, outputs)
        experiment = os.environ.get("DVC_EXP_NAME")
        tags = {
            TAG_PIPELINE: key,
            TAG_HOST: socket.gethostname(),
            TAG_PID: str(pid),
            TAG_STARTED: started,
            "git.commit": commit or "unknown",
            "git.dirty": str(dirty).lower(),
            "mlflow.source.git.commit": commit or "",
        }
        if experiment:
            tags["dvc.experiment"] = experiment
        name = experiment or time.strftime("pipeline %Y-%m-%d %H:%M:%S")
        run = self.client.create_run(self.experiment_id(), tags=tags, run_name=name)
        return run.info.run_id

    def _fail(self, child: str | None, parent: str | None, exc: BaseException) -> None:
        """Mark a stage run and its parent ended, as far as a failing store still allows."""
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception), self.locked():
            if child is not None:
                self.client.set_terminated(child, status)
            if parent is not None:
                self.client.update_run(parent, status=status)

    @contextlib.contextmanager
    def stage_run(self, stage: str, params: Mapping[str, Any], outputs: set[str]):
        """A run for one stage under its pipeline run; FAILED (or KILLED) if the block raises.

        The registry's aliases move only when the block succeeded, as the last write of the
        stage; when anything fails, they stay where they were and a version registered by the
        block is deleted. A failure of the store is one ChurnlabError naming it.
        """
        from mlflow.entities import Param

        child_id = parent = None
        try:
            with self.store_errors(f"starting the run of stage '{stage}'"), self.locked():
                killed = self.mark_stale_runs()
                parent = self._parent(outputs)
                tags = {
                    "mlflow.parentRunId": parent,
                    TAG_HOST: socket.gethostname(),
                    TAG_PID: str(os.getpid()),
                    TAG_STARTED: _process_start(os.getpid()) or "",
                    "churnlab.stage": stage,
                }
                child_id = self.client.create_run(
                    self.experiment_id(), tags=tags, run_name=stage
                ).info.run_id
                batch = [Param(k, v) for k, v in sorted(param_values(params).items())]
                for run_id in (child_id, parent):
                    for start in range(0, len(batch), 100):
                        self.client.log_batch(run_id, params=batch[start : start + 100])
        except BaseException as exc:
            self._fail(child_id, parent, exc)
            raise
        if killed:
            print(
                f"[tracking] marked {len(killed)} run(s) of dead processes KILLED", file=sys.stderr
            )
        run = StageRun(self, child_id, parent)
        try:
            yield run
            with self.store_errors(f"finishing the run of stage '{stage}'"), self.locked():
                run.publish()  # the last step: nothing after it can fail the stage
                self.client.set_terminated(run.run_id, "FINISHED")
                self.client.update_run(parent, status="FINISHED")
        except BaseException as exc:
            with contextlib.suppress(Exception), self.locked():
                run.withdraw()
            self._fail(child_id, parent, exc)
            raise


class StageRun:
    """What a stage logs into its own run (and, for params and metrics, the parent's).

    A model version registered by the stage and the aliases it should get are held here
    until the stage has succeeded (``publish``), or undone when it failed (``withdraw``).
    """

    def __init__(self, tracker: Tracker, run_id: str, parent_id: str):
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.parent_id = parent_id
        self.registered: tuple[str, str] | None = None  # (registered model, version)
        self.aliases: dict[str, str] = {}  # alias -> version, moved by publish()
        self._moved: dict[str, str | None] = {}  # alias -> the version it was on before

    def publish(self) -> None:
        """Move the aliases (the caller holds the store lock)."""
        from mlflow.exceptions import MlflowException

        if self.registered is None:
            return
        name = self.registered[0]
        for alias, version in self.aliases.items():
            try:
                before = self.client.get_model_version_by_alias(name, alias).version
            except MlflowException:
                before = None
            self._moved[alias] = before
            self.client.set_registered_model_alias(name, alias, version)

    def withdraw(self) -> None:
        """Put moved aliases back and delete the version this stage registered."""
        if self.registered is None:
            return
        name, version = self.registered
        for alias, before in self._moved.items():
            if before is None:
                self.client.delete_registered_model_alias(name, alias)
            else:
                self.client.set_registered_model_alias(name, alias, before)
        self.client.delete_model_version(name, version)
        self.registered = None

    def log_metrics(self, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, 0) for k, v in sorted(values.items())]
        with self.tracker.locked():
            for run_id in (self.run_id, self.parent_id):
                for start in range(0, len(batch), 500):
                    self.client.log_batch(run_id, metrics=batch[start : start + 500])

    def set_tags(self, tags: Mapping[str, Any], parent: bool = True) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
        with self.tracker.locked():
            for run_id in (self.run_id, self.parent_id) if parent else (self.run_id,):
                self.client.log_batch(run_id, tags=batch)

    def log_files(self, files: list[Path], folder: str | None = None) -> None:
        with self.tracker.locked():
            for path in files:
                self.client.log_artifact(self.run_id, str(path), folder)

    def log_figures(self, figures: list[bytes], prefix: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            for index, png in enumerate(figures, start=1):
                (Path(folder) / f"{prefix}_{index}.png").write_bytes(png)
            if figures:
                with self.tracker.locked():
                    self.client.log_artifacts(self.run_id, folder, "figures")

    def log_lineage(self, lineage: Mapping[str, Mapping[str, Any]]) -> None:
        self.set_tags(flatten(dict(lineage), "lineage"))
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "lineage.json"
            target.write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
            self.log_files([target])


# --- the model: logging, registry, promotion -------------------------------------------------


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


def _pinned(*names: str) -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]


def promotion_decision(
    challenger: float, champion: float | None, metric: str, margin: float
) -> tuple[bool, str]:
    """Whether the challenger becomes champion, and why, from both scores on the same data."""
    if champion is None:
        return True, "there was no champion"
    gain = challenger - champion if PROMOTION_METRICS[metric] else champion - challenger
    promoted = gain >= margin
    return promoted, (
        f"{metric} {challenger:.4f} against the champion's {champion:.4f}: "
        f"{'better' if promoted else 'not better'} by at least the margin {margin}"
    )


def input_columns(signature) -> list[tuple[str, str]]:
    """A model signature's inputs as sorted ``(column, type)`` pairs."""
    return sorted(
        (spec.get("name", ""), str(spec.get("type"))) for spec in signature.inputs.to_dict()
    )


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )


def describe_input_change(
    champion: list[tuple[str, str]], challenger: list[tuple[str, str]]
) -> str:
    """How the champion's input columns differ from the challenger's, in a few words."""
    old, new = dict(champion), dict(challenger)
    parts = []
    gone = sorted(set(old) - set(new))
    if gone:
        parts.append(f"it takes {len(gone)} column(s) the data no longer has: {_some(gone)}")
    added = sorted(set(new) - set(old))
    if added:
        parts.append(f"the data has {len(added)} column(s) it does not take: {_some(added)}")
    retyped = sorted(f"{c} {old[c]} -> {new[c]}" for c in set(old) & set(new) if old[c] != new[c])
    if retyped:
        parts.append(f"{len(retyped)} column(s) changed type: {_some(retyped)}")
    return "; ".join(parts)


def unseen_customers(
    test_ids: pd.Series, labels: np.ndarray, trained_ids: set[str], minimum: int
) -> tuple[np.ndarray, str | None]:
    """The test customers the champion was not trained on (a mask), and why they are too
    few to compare on (None when they are enough: ``minimum`` customers, both classes)."""
    unseen = ~test_ids.astype(str).isin(trained_ids).to_numpy()
    count, classes = int(unseen.sum()), len(set(labels[unseen].tolist()))
    if count >= minimum and classes == 2:
        return unseen, None
    found = f"only {count} of the {len(labels)} test customers were not in its training data"
    if count and classes < 2:
        found += ", all of one class"
    return unseen, (
        f"{found}, and a comparison needs at least {minimum} such customers of both classes "
        f"({SETTINGS_FILE} tracking.promotion.min_customers)"
    )


def _broken_version(client, name: str, version: str, exc: BaseException) -> ChurnlabError:
    try:
        where = f"{client.get_model_version_download_uri(name, version)}/{MODEL_FILE}"
    except Exception:  # the store cannot say where: the registry URI still names it
        where = f"models:/{name}/{version}"
    return ChurnlabError(
        f"{name} version {version}: the model file {where} cannot be loaded "
        f"({first_line(exc)}): it was changed or damaged after it was registered. Point the "
        "champion alias at a good version (MLflow UI, or MlflowClient."
        "set_registered_model_alias) or register a new model (`dvc repro -f evaluate`)"
    )


@contextlib.contextmanager
def _version_files(settings: Settings, client, version: str) -> Iterator[Path]:
    """The files of a registered model version, in a temporary folder."""
    import mlflow

    name = settings.registered_model
    with tempfile.TemporaryDirectory() as folder:
        with store_lock(settings.uri), fluent_uri(settings.uri):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=folder
            )
        yield Path(local)


def _training_ids(settings: Settings, client, run_id: str) -> set[str] | None:
    """The ids of the customers a registered model was trained on; None when not recorded."""
    import mlflow
    import pandas as pd

    folder = TRAINING_IDS.rpartition("/")[0]
    if not any(a.path == TRAINING_IDS for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=TRAINING_IDS, dst_path=tmp, tracking_uri=settings.uri
        )
        return set(pd.read_parquet(local).iloc[:, 0].astype(str))


def write_promotion(path: Path, decision: Mapping[str, Any]) -> None:
    """Write the promotion record; a folder that cannot be written is a ChurnlabError."""
    from churnlab.files import write_json

    try:
        write_json(path, dict(decision))
    except OSError as exc:
        raise ChurnlabError(
            f"{path}: cannot write the promotion record ({exc.strerror or exc}): make "
            f"{path.parent} writable and run the stage again; the registry is unchanged"
        ) from None


def _compare_with_champion(
    settings: Settings, client, champion, signature, test, inputs, scores
) -> dict[str, Any]:
    """The promotion decision against the current champion (None: there is none).

    Returns the decision's fields: ``champion_before``, ``compared_customers``,
    ``challenger_score``, ``promoted``, ``outcome`` and ``reason``.
    """
    import mlflow
    import skops.io
    from mlflow.exceptions import MlflowException
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from churnlab.data import ID_COLUMN, TARGET_COLUMN
    from churnlab.model import TRUSTED_TYPES

    scorer = {
        "roc_auc": roc_auc_score,
        "pr_auc": average_precision_score,
        "brier": brier_score_loss,
    }[settings.promotion_metric]
    labels = test[TARGET_COLUMN].to_numpy()
    found: dict[str, Any] = {
        "champion_before": None,
        "compared_customers": None,
        "challenger_score": float(scorer(labels, scores)),  # on every test customer
    }
    if champion is None:
        return {**found, "promoted": True, "outcome": "promoted", "reason": "there was no champion"}
    name, version = settings.registered_model, champion.version
    found["champion_before"] = {"version": int(version), "score": None}
    before = f"the champion (version {version})"
    with store_lock(settings.uri), fluent_uri(settings.uri):
        try:
            info = mlflow.models.get_model_info(f"models:/{name}/{version}")
        except MlflowException as exc:
            raise _broken_version(client, name, version, exc) from None
    theirs = input_columns(info.signature) if info.signature else []
    if theirs != input_columns(signature):
        change = describe_input_change(theirs, input_columns(signature))
        return {
            **found,
            "promoted": True,
            "outcome": "new lineage",
            "reason": f"{before} takes other inputs ({change}): another data schema, so a new "
            "lineage starts and the challenger becomes champion without a comparison",
        }
    trained_ids = _training_ids(settings, client, champion.run_id)
    if trained_ids is None:
        return {
            **found,
            "promoted": True,
            "outcome": "new lineage",
            "reason": f"{before} has no record of the customers it was trained on, so no fair "
            "comparison can be made: a new lineage starts and the challenger becomes champion",
        }
    unseen, too_few = unseen_customers(
        test[ID_COLUMN], labels, trained_ids, settings.promotion_min_customers
    )
    found["compared_customers"] = int(unseen.sum())
    if too_few:
        return {
            **found,
            "promoted": False,
            "outcome": "not compared",
            "reason": f"the models cannot be compared: {too_few}; {before} is kept",
        }
    with _version_files(settings, client, version) as folder:
        try:
            theirs_model = skops.io.load(folder / MODEL_FILE, trusted=TRUSTED_TYPES)
            their_scores = theirs_model.predict_proba(inputs[unseen])[:, 1]
        except Exception as exc:  # skops, zip: whatever the damage, the same advice
            raise _broken_version(client, name, version, exc) from None
    found["challenger_score"] = float(scorer(labels[unseen], scores[unseen]))
    found["champion_before"]["score"] = float(scorer(labels[unseen], their_scores))
    promoted, reason = promotion_decision(
        found["challenger_score"],
        found["champion_before"]["score"],
        settings.promotion_metric,
        settings.promotion_margin,
    )
    return {
        **found,
        "promoted": promoted,
        "outcome": "promoted" if promoted else "kept champion",
        "reason": f"{reason}, on the {int(unseen.sum())} test customers neither was trained on",
    }


def log_and_promote(run: StageRun, root: Path, paths: Mapping[str, str]) -> dict[str, Any]:
    """Decide on promotion, log and register the model, and hold the alias moves for the end.

    The challenger and the champion are compared with ``tracking.promotion.metric`` only on
    test customers neither of them was trained on (the ids the champion was trained on are
    an artifact of its run). A champion that takes other input columns, or whose training
    customers are not recorded, starts a new lineage: the challenger becomes champion. With
    too few customers to compare on, the champion is kept. The decision goes to
    ``paths.promotion`` and onto the run as tags; the aliases move only when the whole stage
    has succeeded (``StageRun.publish``).
    """
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from churnlab.data import ID_COLUMN
    from churnlab.model import TRUSTED_TYPES, load_model, model_input

    settings = run.tracker.settings
    client = run.client
    name = settings.registered_model
    model, features = load_model(root / paths["model"], root / paths["features"])
    test = pd.read_parquet(root / paths["test"])
    inputs = model_input(test, features["numeric"], features["categorical"])
    example = inputs.head(5)
    signature = infer_signature(example, model.predict_proba(example))
    scores = model.predict_proba(inputs)[:, 1]  # the challenger, from memory
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    found = _compare_with_champion(settings, client, champion, signature, test, inputs, scores)
    training = pd.read_parquet(root / paths["train"], columns=[ID_COLUMN])
    with tempfile.TemporaryDirectory() as folder:
        ids_file = Path(folder) / TRAINING_IDS.rpartition("/")[2]
        training.to_parquet(ids_file, index=False)
        with run.tracker.locked(), fluent_uri(settings.uri), mlflow.start_run(run_id=run.run_id):
            logged = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format="skops",
                skops_trusted_types=TRUSTED_TYPES,
                pyfunc_predict_fn="predict_proba",
                signature=signature,
                input_example=example,
                pip_requirements=_pinned("scikit-learn", "skops", "pandas", "numpy", "scipy"),
            )
            client.update_run(run.run_id, status="RUNNING")  # start_run's exit ended it
            client.log_artifact(run.run_id, str(ids_file), TRAINING_IDS.rpartition("/")[0])
            version = mlflow.register_model(logged.model_uri, name).version
            run.registered = (name, version)  # deleted again if the stage fails from here on
    decision = {
        "registered_model": name,
        "metric": settings.promotion_metric,
        "margin": settings.promotion_margin,
        "min_customers": settings.promotion_min_customers,
        "test_customers": int(len(test)),
        "compared_customers": found["compared_customers"],
        "challenger": {"version": int(version), "score": found["challenger_score"]},
        "champion_before": found["champion_before"],
        "promoted": found["promoted"],
        "outcome": found["outcome"],
        "reason": found["reason"],
    }
    run.aliases = {"challenger": version, **({"champion": version} if found["promoted"] else {})}
    write_promotion(root / paths["promotion"], decision)
    run.set_tags(
        {
            "promotion.decision": decision["outcome"],
            "promotion.reason": decision["reason"],
            "registry.version": version,
        }
    )
    run.log_files([root / paths["promotion"]])
    return decision


def record_no_promotion(root: Path, path: str, tracked: bool, stage: str) -> None:
    """The promotion record of a stage that declares it but registered nothing."""
    if tracked:
        reason = (
            f"stage '{stage}' writes the promotion record but is not {SETTINGS_FILE} "
            "tracking.register_stage: no model was registered and the aliases did not move"
        )
    else:
        reason = (
            "tracking was off (CHURNLAB_TRACKING, tracking.enabled, or an unreachable store "
            f"with tracking.on_unreachable: continue in {SETTINGS_FILE}): no model was "
            "registered and the aliases did not move"
        )
    write_promotion(
        root / path,
        {"promoted": False, "outcome": "not registered", "tracked": tracked, "reason": reason},
    )


def promotion_output(root: Path, stage) -> str | None:
    """``paths.promotion`` when the stage declares it as an output, else None."""
    from churnlab.config import load_params

    path = (load_params(root).get("paths") or {}).get("promotion")
    return path if path in stage.outs else None


def record_stage(run: StageRun, root: Path, stage, nb=None) -> None:
    """Log what a finished stage produced: metrics, notebook and HTML, figures, lineage;
    after the register stage, the model and the promotion decision."""
    with run.tracker.store_errors(f"recording stage '{stage.name}'"):
        _record_stage(run, root, stage, nb)


def _record_stage(run: StageRun, root: Path, stage, nb=None) -> None:
    from churnlab.config import get_key, load_params

    metrics = {}
    for path in stage.metrics:
        metrics.update(metric_values(Path(path).stem, json.loads((root / path).read_text())))
    run.log_metrics(metrics)
    pages = [root / o for o in stage.outs if o.endswith((".ipynb", ".html"))]
    run.log_files([p for p in pages if p.is_file()], "reports")
    if nb is not None:
        run.log_figures(notebook_figures(nb), stage.name)
    params = load_params(root)
    data_files = [p for p in (*stage.deps, *stage.outs) if p.endswith((".csv", ".parquet"))]
    lineage = {p: file_lineage(root, p) for p in data_files if (root / p).is_file()}
    source = get_key(params, "data", "params/data.yaml")  # where the raw data comes from
    lineage["source"] = {"name": str(source.get("source")), "sha256": str(source.get("sha256"))}
    run.log_lineage(lineage)
    if stage.name == run.tracker.settings.register_stage:
        paths = get_key(params, "paths", "params/paths.yaml")
        decision = log_and_promote(run, root, paths)
        print(
            f"[{stage.name}] registered {decision['registered_model']} version "
            f"{decision['challenger']['version']} as challenger; "
            f"{'promoted to champion' if decision['promoted'] else 'champion kept'}: "
            f"{decision['reason']}",
            file=sys.stderr,
        )


@contextlib.contextmanager
def tracked_stage(root: Path, stage, tracker: Tracker | None):
    """``with tracked_stage(...) as run``: a stage run, or None when tracking is off."""
    if tracker is None:
        yield None
        return
    with tracker.stage_run(stage.name, stage.values, set(stage.outs)) as run:
        yield run


def load_champion(root: Path | None = None):
    """The registered model with the alias ``champion``, as an MLflow pyfunc model.

    ``model.predict(frame)`` gives, per customer, the probabilities of staying and leaving.

    Raises:
        ChurnlabError: no store, no champion yet, or a model file that does not load
            (changed or damaged after it was registered), naming the version and the file.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from churnlab.config import project_root

    root = root or project_root()
    settings = load_settings(root)
    name = settings.registered_model
    client = mlflow.MlflowClient(settings.uri)
    try:
        with store_lock(settings.uri):
            version = client.get_model_version_by_alias(name, "champion").version
    except MlflowException as exc:
        raise ChurnlabError(
            f"no champion of '{name}' in {display_uri(settings.uri)}: {first_line(exc)}"
        ) from None
    with _version_files(settings, client, version) as folder:
        try:
            return mlflow.pyfunc.load_model(str(folder))
        except Exception as exc:  # skops, zip, YAML: whatever the damage, the same advice
            raise _broken_version(client, name, version, exc) from None
