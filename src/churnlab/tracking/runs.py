"""MLflow runs of pipeline runs: one run per stage, nested under one run per pipeline run.

A person sees one row per pipeline run (one ``dvc repro`` or ``dvc exp run``) in the UI. The
parent gathers every param the stages read, every metric they wrote, the data lineage, the
git commit and the DVC experiment name; the stage runs hold their executed notebooks, HTML
and figures. After the register stage, ``record_stage`` hands the stage's model and data to
the registry (``churnlab.tracking.registry.log_and_promote``). Nothing here runs at import
time, and MLflow, pandas and scikit-learn load only when a run is recorded.

A notebook stage opens its tracker in the background (``Tracker.open_in_background``) and
starts its run there too (``tracked_stage``), so that this overlaps the notebook: the kernel
is another process, and the runner only waits for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnlab.config import flatten, get_key, load_params
from churnlab.errors import ChurnlabError
from churnlab.tracking import service
from churnlab.tracking.lineage import (
    file_lineage,
    git_state,
    metric_values,
    notebook_figures,
    param_values,
)
from churnlab.tracking.processes import (
    TAG_HOST,
    TAG_PID,
    TAG_STARTED,
    pipeline_owner,
    process_alive,
    process_start,
)
from churnlab.tracking.settings import (
    ARTIFACT_DIR,
    SETTINGS_FILE,
    Settings,
    display_uri,
    first_line,
    load_settings,
    store_lock,
)

TAG_PIPELINE = "churnlab.pipeline"


class Outcome:
    """The value or the error of a call, made now or in a background thread."""

    def __init__(self) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self._value = work()
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc
        finally:
            self._done.set()

    @classmethod
    def now(cls, work: Callable[[], Any]) -> Outcome:
        outcome = cls()
        outcome._run(work)
        return outcome

    @classmethod
    def in_thread(cls, work: Callable[[], Any], name: str, humble: bool = True) -> Outcome:
        """``work`` in a thread, by default at the lowest CPU priority: it runs beside the
        notebook's kernel, whose OpenMP threads (scikit-learn's gradient boosting) slow down
        many times over when they have to share a core with it. Not ``humble`` when the
        thread only waits (and starts processes, which would inherit its priority)."""

        def humbly():
            with contextlib.suppress(OSError, AttributeError):  # Linux: a thread is a task
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            return work()

        outcome = cls()
        target = humbly if humble else work
        threading.Thread(target=outcome._run, args=(target,), name=name, daemon=True).start()
        return outcome

    def done(self) -> bool:
        """The call has ended (without waiting)."""
        return self._done.is_set()

    def _wait(self) -> None:
        while not self._done.wait(0.2):  # not one long wait: Ctrl-C must get through
            pass

    def result(self) -> Any:
        """The value, once the call has ended; its error is raised here."""
        self._wait()
        if self._error is not None:
            raise self._error
        return self._value

    def failed(self) -> bool:
        """The call has ended with an error (without waiting)."""
        return self._done.is_set() and self._error is not None

    def value_or_none(self) -> Any:
        """The value, or None when the call failed (its error is dropped)."""
        self._wait()
        return self._value if self._error is None else None


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # one line per stage is enough
    # it logs a database error with its traceback, then raises it: we report it once
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class StageProcess:
    """The process a stage runs in, the pipeline run it belongs to and its experiment."""

    pid: int
    started: str  # the process's start time (``process_start``), to tell it from a reused pid
    owner: tuple[int, str]  # the pipeline run's process (``pipeline_owner``): pid, start time
    experiment: str | None  # the DVC experiment's name, if any

    @classmethod
    def this(cls) -> StageProcess:
        return cls(
            os.getpid(),
            process_start(os.getpid()) or "",
            pipeline_owner(),
            os.environ.get("DVC_EXP_NAME") or None,
        )


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
        _quiet_mlflow()
        return cls._open(root, settings)

    @classmethod
    def open_in_background(cls, root: Path) -> Outcome:
        """``open`` in a background thread, started now: ``.result()`` waits for the tracker
        (or None) or raises the error ``open`` would have raised.

        Importing MLflow and starting its store take seconds; a notebook stage does that
        while its kernel (another process) runs the notebook. A mistyped setting still fails
        here, at once; with tracking off no thread starts. A stage run by ``dvc`` gets a
        ``RemoteTracker`` instead: its pipeline run's tracking service
        (:mod:`churnlab.tracking.service`), which imports MLflow once for all its stages.
        """
        settings = load_settings(root)
        if not settings.enabled:
            return Outcome.now(lambda: None)
        _quiet_mlflow()  # here, not in the thread: a kernel started meanwhile sees one environment
        process = StageProcess.this()
        if process.owner[0] != process.pid and service.wanted():
            # a stage of a pipeline run: its tracking service records it (started if need be)
            return Outcome.now(lambda: service.RemoteTracker(root, settings, process))
        return Outcome.in_thread(lambda: cls._open(root, settings), "tracking")

    @classmethod
    def _open(cls, root: Path, settings: Settings) -> Tracker | None:
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
            if not process_alive(run.data.tags):
                self.client.set_terminated(run.info.run_id, "KILLED")
                killed.append(run.info.run_id)
                for version in self.client.search_model_versions(f"run_id = '{run.info.run_id}'"):
                    if not version.aliases:
                        self.client.delete_model_version(version.name, version.version)
        return killed

    def _parent(self, outputs: set[str], process: StageProcess) -> str:
        pid, started = process.owner
        key = f"{socket.gethostname()}:{pid}:{started}"
        found = self.client.search_runs(
            [self.experiment_id()], f"tags.`{TAG_PIPELINE}` = '{key}'", max_results=1
        )
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        commit, dirty = git_state(self.root, outputs)
        experiment = process.experiment
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

    def begin_stage(
        self,
        stage: str,
        params: Mapping[str, Any],
        outputs: set[str],
        process: StageProcess | None = None,
    ) -> StageRun:
        """Start the run of one stage under its pipeline run, with the stage's params.

        ``process`` is the stage's own process when it is not this one (the tracking
        service records stages run by other processes); by default, this one.

        Raises:
            ChurnlabError: the store failed; the runs started are marked FAILED.
        """
        from mlflow.entities import Param

        process = process or StageProcess.this()
        child_id = parent = None
        try:
            with self.store_errors(f"starting the run of stage '{stage}'"), self.locked():
                killed = self.mark_stale_runs()
                parent = self._parent(outputs, process)
                tags = {
                    "mlflow.parentRunId": parent,
                    TAG_HOST: socket.gethostname(),
                    TAG_PID: str(process.pid),
                    TAG_STARTED: process.started,
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
        return StageRun(self, child_id, parent)

    def end_stage(self, run: StageRun, stage: str, failure: BaseException | None = None) -> None:
        """End a stage's run: FINISHED with its aliases moved, or, after ``failure``, FAILED
        (KILLED for Ctrl-C) with its registered version withdrawn.

        Raises:
            ChurnlabError: the store failed while finishing; the run is then FAILED.
        """
        if failure is None:
            try:
                with self.store_errors(f"finishing the run of stage '{stage}'"), self.locked():
                    run.publish()  # the last step: nothing after it can fail the stage
                    self.client.set_terminated(run.run_id, "FINISHED")
                    self.client.update_run(run.parent_id, status="FINISHED")
                return
            except BaseException as exc:
                self._abandon(run, exc)
                raise
        self._abandon(run, failure)

    def _abandon(self, run: StageRun, failure: BaseException) -> None:
        with contextlib.suppress(Exception), self.locked():
            run.withdraw()
        self._fail(run.run_id, run.parent_id, failure)

    @contextlib.contextmanager
    def stage_run(self, stage: str, params: Mapping[str, Any], outputs: set[str]):
        """A run for one stage under its pipeline run; FAILED (or KILLED) if the block raises.

        The registry's aliases move only when the block succeeded, as the last write of the
        stage; when anything fails, they stay where they were and a version registered by the
        block is deleted. A failure of the store is one ChurnlabError naming it.
        """
        run = self.begin_stage(stage, params, outputs)
        try:
            yield run
        except BaseException as exc:
            self.end_stage(run, stage, exc)
            raise
        self.end_stage(run, stage)


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
        # read while the notebook ran (register stage): (digest, model, features), champion
        self.challenger: Outcome | None = None
        self.champion: Outcome | None = None
        self.saved: Outcome | None = None  # the challenger written as an MLflow model

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


def record_stage(run: StageRun, root: Path, stage, nb=None) -> None:
    """Log what a finished stage produced: metrics, notebook and HTML, figures, lineage;
    after the register stage, the model and the promotion decision."""
    if isinstance(run, service.RemoteRun):
        run.record(notebook=nb is not None)
        return
    with run.tracker.store_errors(f"recording stage '{stage.name}'"):
        _record_stage(run, root, stage, nb)


def _record_stage(run: StageRun, root: Path, stage, nb=None) -> None:
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
        import pandas as pd

        from churnlab.data import ID_COLUMN
        from churnlab.tracking.registry import READ_NOW, log_and_promote

        paths = get_key(params, "paths", "params/paths.yaml")
        model, features = _challenger(run, root, paths)
        decision = log_and_promote(
            run,
            model,
            features,
            test=pd.read_parquet(root / paths["test"]),
            training=pd.read_parquet(root / paths["train"], columns=[ID_COLUMN]),
            promotion_path=root / paths["promotion"],
            champion=run.champion.result() if run.champion else READ_NOW,
            saved=run.saved.value_or_none() if run.saved else None,
        )
        print(
            f"[{stage.name}] registered {decision['registered_model']} version "
            f"{decision['challenger']['version']} as challenger; "
            f"{'promoted to champion' if decision['promoted'] else 'champion kept'}: "
            f"{decision['reason']}",
            file=sys.stderr,
        )


def _model_files(root: Path, paths: Mapping[str, str]) -> tuple[bytes, bytes, str]:
    """The model file's and the feature list's bytes, and one digest of both."""
    model, features = ((root / paths[key]).read_bytes() for key in ("model", "features"))
    return model, features, hashlib.sha256(model + b"\0" + features).hexdigest()


def _read_challenger(root: Path, paths: Mapping[str, str]) -> tuple[str, Any, dict]:
    """The stage's model from the bytes its digest is of (the file may change meanwhile)."""
    import skops.io

    from churnlab.model import TRUSTED_TYPES

    model, features, digest = _model_files(root, paths)
    return digest, skops.io.loads(model, trusted=TRUSTED_TYPES), json.loads(features)


def _challenger(run: StageRun, root: Path, paths: Mapping[str, str]) -> tuple[Any, dict]:
    """The stage's model: as read while the notebook ran when its files are unchanged since,
    else read now (a failed read ahead fails again here, with its own message)."""
    from churnlab.model import load_model

    read = run.challenger.value_or_none() if run.challenger else None
    with contextlib.suppress(OSError):  # a file gone since: load_model says which
        if read is not None and read[0] == _model_files(root, paths)[2]:
            return read[1], read[2]
    return load_model(root / paths["model"], root / paths["features"])


def _read_ahead(run: StageRun, root: Path, stage) -> None:
    """What the register step needs and the notebook does not change, read while the
    notebook runs: the libraries, the champion, and when the model and the test split are
    inputs of the stage (not outputs), the model, also written as an MLflow model. A
    failure to read the champion is kept for the register step to raise; the others make
    it do that work itself."""
    import pandas as pd

    from churnlab.tracking.registry import inputs_of, read_champion, save_mlflow_model, warm_up

    warm_up()
    paths = get_key(load_params(root), "paths", "params/paths.yaml")
    run.champion = Outcome.now(lambda: read_champion(run.tracker.settings, run.client))
    if not {paths["model"], paths["features"], paths["test"]} & set(stage.outs):
        run.challenger = Outcome.now(lambda: _read_challenger(root, paths))
        _, model, features = run.challenger.result()
        example = inputs_of(pd.read_parquet(root / paths["test"]), features).head(5)
        run.saved = Outcome.now(lambda: save_mlflow_model(model, example))


@contextlib.contextmanager
def tracked_stage(root: Path, stage, tracker: Tracker | Outcome | None):
    """``with tracked_stage(...) as run``: a stage run, or None when tracking is off.

    With the ``Outcome`` of ``Tracker.open_in_background``, the stage's run starts in the
    background too, and ``run`` is an ``Outcome`` whose ``result()`` waits for the stage's
    run (None: untracked). Call it when the block's own work (the notebook) is done: a store
    that could not be reached or failed to start the run raises there, inside the block.
    """
    if isinstance(tracker, Outcome):
        with _tracked_in_background(root, stage, tracker) as pending:
            yield pending
        return
    if tracker is None:
        yield None
        return
    with tracker.stage_run(stage.name, stage.values, set(stage.outs)) as run:
        yield run


@contextlib.contextmanager
def _tracked_in_background(root: Path, stage, opening: Outcome) -> Iterator[Outcome]:
    def begin() -> StageRun | service.RemoteRun | None:
        tracker = opening.result()
        if tracker is None:
            return None
        if isinstance(tracker, service.RemoteTracker):
            return tracker.begin(stage)
        run = tracker.begin_stage(stage.name, stage.values, set(stage.outs))
        if stage.name == tracker.settings.register_stage:
            # whatever fails here fails again in the register step, with its own message
            with contextlib.suppress(Exception):
                _read_ahead(run, root, stage)
        return run

    # a stage of a pipeline run only waits for its tracking service (which it may start)
    remote = opening.done() and isinstance(opening.value_or_none(), service.RemoteTracker)
    pending = Outcome.in_thread(begin, f"tracking {stage.name}", humble=not remote)
    try:
        yield pending
    except BaseException as exc:
        run = pending.value_or_none()  # the stage's own failure is the one to report
        if run is not None:
            run.tracker.end_stage(run, stage.name, exc)
        raise
    run = pending.result()
    if run is not None:
        run.tracker.end_stage(run, stage.name)
