"""MLflow tracking of pipeline runs, the model registry and promotion.

Each stage that runs is an MLflow run, nested under one parent run per pipeline run (one
``dvc repro`` or ``dvc exp run``), so a person sees one row per pipeline run in the UI. The
parent gathers every param the stages read, every metric they wrote, the data lineage, the git
commit and the DVC experiment name; the stage runs hold their executed notebooks, HTML and
figures. After the stage named by ``tracking.register_stage`` succeeds (its quality gates
passed), the model is logged with a signature and an input example, registered with the alias
``challenger``, scored against the ``champion`` on the same test customers and promoted when
it is better by ``tracking.promotion.margin``.

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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from churnlab.config import flatten
from churnlab.errors import ChurnlabError

SETTINGS_FILE = "params/tracking.yaml"
DEFAULT_STORE = "mlflow.db"  # in the project root, git-ignored
ARTIFACT_DIR = "mlruns"  # the embedded store's artifacts, git-ignored
PROMOTION_METRICS = {"roc_auc": True, "pr_auc": True, "brier": False}  # higher is better?
TAG_PIPELINE = "churnlab.pipeline"
TAG_HOST, TAG_PID, TAG_STARTED = "churnlab.host", "churnlab.pid", "churnlab.process_start"


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
    )


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


def metric_values(name: str, content: Mapping) -> dict[str, float]:
    """The numbers of one metrics file as MLflow metrics: ``test.roc_auc``, ``cv.folds``."""
    return {
        f"{name}.{key}": float(value)
        for key, value in flatten(content).items()
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
        try:
            with store_lock(settings.uri):  # creating the client may create the database
                tracker = cls(root, settings)
                tracker.experiment_id()
        except Exception as exc:  # any failure to reach the store is the same to the user
            text = str(exc).strip()
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
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
        """Runs left RUNNING by a process that is gone become KILLED; returns their ids."""
        killed = []
        runs = self.client.search_runs(
            [self.experiment_id()], "attributes.status = 'RUNNING'", max_results=1000
        )
        for run in runs:
            if not _alive(run.data.tags):
                self.client.set_terminated(run.info.run_id, "KILLED")
                killed.append(run.info.run_id)
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

    @contextlib.contextmanager
    def stage_run(self, stage: str, params: Mapping[str, Any], outputs: set[str]):
        """A run for one stage under its pipeline run; FAILED (or KILLED) if the block raises."""
        from mlflow.entities import Param

        from churnlab.secrets import masked_params

        with self.locked():
            killed = self.mark_stale_runs()
            parent = self._parent(outputs)
            tags = {
                "mlflow.parentRunId": parent,
                TAG_HOST: socket.gethostname(),
                TAG_PID: str(os.getpid()),
                TAG_STARTED: _process_start(os.getpid()) or "",
                "churnlab.stage": stage,
            }
            child = self.client.create_run(self.experiment_id(), tags=tags, run_name=stage)
            values = flatten(masked_params(dict(params)))
            batch = [
                Param(k, json.dumps(v) if not isinstance(v, str) else v)
                for k, v in sorted(values.items())
            ]
            for run_id in (child.info.run_id, parent):
                for start in range(0, len(batch), 100):
                    self.client.log_batch(run_id, params=batch[start : start + 100])
        if killed:
            print(
                f"[tracking] marked {len(killed)} run(s) of dead processes KILLED", file=sys.stderr
            )
        run = StageRun(self, child.info.run_id, parent)
        try:
            yield run
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception), self.locked():
                self.client.set_terminated(run.run_id, status)
                self.client.update_run(parent, status=status)
            raise
        with self.locked():
            self.client.set_terminated(run.run_id, "FINISHED")
            self.client.update_run(parent, status="FINISHED")


class StageRun:
    """What a stage logs into its own run (and, for params and metrics, the parent's)."""

    def __init__(self, tracker: Tracker, run_id: str, parent_id: str):
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.parent_id = parent_id

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


def log_and_promote(run: StageRun, root: Path, paths: Mapping[str, str]) -> dict[str, Any]:
    """Log the model, register it as ``challenger`` and promote it when it beats the champion.

    The challenger and the champion are scored on the same test customers (the current
    test split) with ``tracking.promotion.metric``. The decision, with both models' numbers,
    goes to ``paths.promotion`` and onto the run as tags.
    """
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from churnlab.data import TARGET_COLUMN
    from churnlab.files import write_json
    from churnlab.model import TRUSTED_TYPES, load_model, model_input

    settings = run.tracker.settings
    client = run.client
    model, features = load_model(root / paths["model"], root / paths["features"])
    test = pd.read_parquet(root / paths["test"])
    inputs = model_input(test, features["numeric"], features["categorical"])
    labels = test[TARGET_COLUMN].to_numpy()
    example = inputs.head(5)
    signature = infer_signature(example, model.predict_proba(example))
    with run.tracker.locked(), fluent_uri(settings.uri), mlflow.start_run(run_id=run.run_id):
        info = mlflow.sklearn.log_model(
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
        version = mlflow.register_model(info.model_uri, settings.registered_model)
        client.set_registered_model_alias(settings.registered_model, "challenger", version.version)
        try:
            champion = client.get_model_version_by_alias(settings.registered_model, "champion")
        except MlflowException:
            champion = None
    scorer = {
        "roc_auc": roc_auc_score,
        "pr_auc": average_precision_score,
        "brier": brier_score_loss,
    }[settings.promotion_metric]

    def score(model_uri: str) -> float:
        with run.tracker.locked(), fluent_uri(settings.uri):
            loaded = mlflow.pyfunc.load_model(model_uri)
        return float(scorer(labels, pd.DataFrame(loaded.predict(inputs)).iloc[:, 1]))

    challenger_score = score(f"models:/{settings.registered_model}/{version.version}")
    decision: dict[str, Any] = {
        "registered_model": settings.registered_model,
        "metric": settings.promotion_metric,
        "margin": settings.promotion_margin,
        "test_customers": int(len(labels)),
        "challenger": {
            "version": int(version.version),
            "run_id": run.run_id,
            "score": challenger_score,
        },
    }
    champion_score = None
    decision["champion_before"] = None
    if champion is not None:
        champion_score = score(f"models:/{settings.registered_model}/{champion.version}")
        decision["champion_before"] = {
            "version": int(champion.version),
            "run_id": champion.run_id,
            "score": champion_score,
        }
    promoted, reason = promotion_decision(
        challenger_score, champion_score, settings.promotion_metric, settings.promotion_margin
    )
    decision["promoted"] = promoted
    decision["reason"] = reason
    if promoted:
        with run.tracker.locked():
            client.set_registered_model_alias(
                settings.registered_model, "champion", version.version
            )
    write_json(root / paths["promotion"], decision)
    run.set_tags(
        {
            "promotion.decision": "promoted" if promoted else "kept champion",
            "promotion.reason": reason,
            "registry.version": version.version,
        }
    )
    run.log_files([root / paths["promotion"]])
    return decision


def record_stage(run: StageRun, root: Path, stage, nb=None) -> None:
    """Log what a finished stage produced: metrics, notebook and HTML, figures, lineage;
    after the register stage, the model and the promotion decision."""
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
        ChurnlabError: no store, or no champion yet.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from churnlab.config import project_root

    root = root or project_root()
    settings = load_settings(root)
    try:
        with store_lock(settings.uri), fluent_uri(settings.uri):
            return mlflow.pyfunc.load_model(f"models:/{settings.registered_model}@champion")
    except MlflowException as exc:
        raise ChurnlabError(
            f"no champion of '{settings.registered_model}' in {display_uri(settings.uri)}: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
