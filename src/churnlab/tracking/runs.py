"""MLflow runs of pipeline runs: one run per stage, nested under one run per pipeline run.

A person sees one row per pipeline run (one ``dvc repro`` or ``dvc exp run``) in the UI. The
parent gathers every param the stages read, every metric they wrote, the data lineage, the
git commit and the DVC experiment name; the stage runs hold their executed notebooks, HTML
and figures. After the register stage, ``record_stage`` hands the stage's model and data to
the registry (``churnlab.tracking.registry.log_and_promote``). Nothing here runs at import
time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from churnlab.config import flatten, get_key, load_params
from churnlab.errors import ChurnlabError
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
            if not process_alive(run.data.tags):
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
                    TAG_STARTED: process_start(os.getpid()) or "",
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


def record_stage(run: StageRun, root: Path, stage, nb=None) -> None:
    """Log what a finished stage produced: metrics, notebook and HTML, figures, lineage;
    after the register stage, the model and the promotion decision."""
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
        # the model's code (scikit-learn) only for the stage that registers it
        from churnlab.data import ID_COLUMN
        from churnlab.model import load_model
        from churnlab.tracking.registry import log_and_promote

        paths = get_key(params, "paths", "params/paths.yaml")
        model, features = load_model(root / paths["model"], root / paths["features"])
        decision = log_and_promote(
            run,
            model,
            features,
            test=pd.read_parquet(root / paths["test"]),
            training=pd.read_parquet(root / paths["train"], columns=[ID_COLUMN]),
            promotion_path=root / paths["promotion"],
        )
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
