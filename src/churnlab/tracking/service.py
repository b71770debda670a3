"""One tracking process per pipeline run: MLflow is imported and its store opened once.

Importing MLflow and opening its store costs about 2 s of CPU (``bench/RESULTS.md``,
"Tracking: where a stage's tracking time goes"); paid in each stage's own process, that is
seconds per stage on two cores, beside the notebook's kernel. So under ``dvc repro`` (or
``dvc exp run``) the first stage that records starts a tracking service, one process for
that project and store, and every stage talks to it over a Unix socket (in a folder only
this user may enter): it sends what to record as small JSON requests and waits for each
answer, and never imports MLflow itself. The service outlives the pipeline run by
``CHURNLAB_TRACKING_SERVICE_IDLE`` seconds (``IDLE_S``) without a stage, so that the next
``dvc exp run`` of a person's change-a-param loop finds MLflow imported and its store
open; each pipeline run still gets its own parent run and settings read anew.

A service never serves what it was not started for: its socket's name is a digest of the
project, the store's URI, the Python environment (a package installed since) and
churnlab's own source files (an edited module): when any of them changes, the next stage
starts a fresh service and the old one exits when idle. A SQLite store deleted and made
anew since (``make clean``) is another file, which MLflow's open connections would not
see: the service then gives its name up and asks the stage to start a fresh one.

The service runs the same code as a stage tracked in its own process (``Tracker``,
``record_stage``): the same runs, parent, params, metrics, registry and promotion, and the
same errors, which the stage raises as its own. A stage whose connection drops before it
ended its run (its process was killed) has its run marked KILLED at once. The service
exits after ``IDLE_S`` seconds without a stage.

A stage run without ``dvc`` (``churnlab run`` in a shell, the tests' own calls) records in
its own process, as does every stage when ``CHURNLAB_TRACKING_SERVICE=off``.

Protocol: one connection per stage; each request and each answer is one line of JSON.
``begin`` (the stage, its process, its pipeline run) starts the stage's run, ``record``
logs what the finished stage produced, ``end`` (``failure``: null, ``FAILED`` or
``KILLED``) ends it. An answer is ``{"ok": true, "tracked": bool, "stderr": text}`` or
``{"ok": false, "error": message, "stderr": text}``; ``stderr`` is what the work printed
(warnings, the promotion decision), for the stage to print.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from churnlab.errors import ChurnlabError
from churnlab.tracking.settings import Settings, display_uri, first_line

SWITCH = "CHURNLAB_TRACKING_SERVICE"  # "off": every stage records in its own process
IDLE_VARIABLE = "CHURNLAB_TRACKING_SERVICE_IDLE"
IDLE_S = 600.0  # the service exits after this long without a stage connected (default)
TEMPORARY_WORKSPACE = "/.dvc/tmp/exps/"  # where DVC runs queued and --temp experiments
TEMPORARY_IDLE_S = 30.0
START_TIMEOUT_S = 60.0  # for the service to listen (it listens before importing MLflow)
_POLL_S = 0.5


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stages run by a pipeline run should record through the service."""
    environ = os.environ if environ is None else environ
    return environ.get(SWITCH, "").strip().lower() not in ("0", "off", "false", "no")


def idle_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a service waits for the next stage before it exits."""
    environ = os.environ if environ is None else environ
    text = environ.get(IDLE_VARIABLE, "").strip()
    try:
        return float(text) if text else IDLE_S
    except ValueError:
        raise ChurnlabError(
            f"{IDLE_VARIABLE}={text!r}: expected a number of seconds, e.g. 600"
        ) from None


def _code_identity() -> str:
    """What the service runs: the interpreter, its installed packages (the folder's time
    changes when one is installed or removed) and each churnlab source file's size and
    time. About a millisecond."""
    import sysconfig

    package = Path(__file__).resolve().parent.parent
    parts = [sys.executable, str(Path(sysconfig.get_paths()["purelib"]).stat().st_mtime_ns)]
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        parts.append(f"{path.relative_to(package)}:{stat.st_size}:{stat.st_mtime_ns}")
    return "\0".join(parts)


def _store_identity(uri: str) -> str:
    """A SQLite store's file (device and inode; "absent"): a file deleted and made anew is
    another store, which MLflow's open connections (cached by URI) would not see."""
    if not uri.startswith("sqlite:///"):
        return ""
    try:
        stat = Path(uri[len("sqlite:///") :]).stat()
    except OSError:
        return "absent"
    return f"{stat.st_dev}:{stat.st_ino}"


def private_folder(name: str) -> tuple[Path, bool]:
    """``name`` in the temporary folder, made for this user only if absent; and whether it
    is private (this user's, and no one else may enter it): the sockets of the tracking
    service and the warm interpreter live there."""
    folder = Path(tempfile.gettempdir()) / f"{name}-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    return folder, info.st_uid == os.getuid() and not info.st_mode & 0o077


def socket_path(root: Path, uri: str) -> Path:
    """The service's socket for one project, store and code: short (a Unix socket's path
    has at most 107 bytes) and in a folder only this user may enter (the requests carry
    the stages' params)."""
    folder, private = private_folder("churnlab-tracking")
    if not private:
        raise ChurnlabError(
            f"{folder}: expected a folder only you may enter (the tracking service's "
            "sockets), found one others may; remove it and run again"
        )
    key = "\0".join([str(root.resolve()), uri, _code_identity()])
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


def _stage_record(stage) -> dict[str, Any]:
    """What the service needs of a stage (``churnlab.pipeline.stages.Stage`` or alike)."""
    return {
        "name": stage.name,
        "values": stage.values,
        "outs": list(stage.outs),
        "deps": list(getattr(stage, "deps", [])),
        "metrics": list(getattr(stage, "metrics", [])),
        "executed_path": stage.executed_path if getattr(stage, "notebook", None) else None,
    }


# --- the stage's side: no MLflow here ---------------------------------------------------------


class RemoteTracker:
    """A stage's connection to its pipeline run's tracking service (started if need be)."""

    def __init__(self, root: Path, settings: Settings, process):
        self.root = root
        self.settings = settings
        self.process = process  # churnlab.tracking.runs.StageProcess
        self._socket: socket.socket | None = None
        self._reader: io.TextIOBase | None = None
        self._restarted = False

    def _connect(self) -> None:
        path = socket_path(self.root, self.settings.uri)
        with _locked(path.with_suffix(".lock")):  # two stages must not start two services
            connection = _try_connect(path)
            if connection is None:
                connection = _start_service(self.root, path)
        self._socket = connection
        self._reader = connection.makefile("r", encoding="utf-8")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its answer; the service's error is raised here."""
        if self._socket is None:
            self._connect()
        assert self._socket is not None and self._reader is not None
        try:
            self._socket.sendall((json.dumps(request, default=str) + "\n").encode())
            line = self._reader.readline()
        except OSError as exc:
            line, lost = "", exc
        else:
            lost = None
        if not line:
            raise ChurnlabError(
                f"MLflow tracking store {display_uri(self.settings.uri)}: the tracking "
                f"service stopped ({first_line(lost) if lost else 'connection closed'}); "
                f"the stage failed and its earlier outputs are kept. Run the stage again "
                f"(or set {SWITCH}=off to record in the stage's own process)"
            )
        answer = json.loads(line)
        if answer.get("restart") and request["op"] == "begin" and not self._restarted:
            # the service was for a store deleted since; it has given its name up
            self._restarted = True
            self.close()
            return self.ask(request)
        if answer.get("stderr"):
            print(answer["stderr"], end="", file=sys.stderr, flush=True)
        if not answer["ok"]:
            raise ChurnlabError(answer["error"])
        return answer

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None

    def begin(self, stage) -> RemoteRun | None:
        """Start the stage's run (None: the store cannot be reached and tracking goes on
        without it, as ``tracking.on_unreachable: continue`` says)."""
        process = self.process
        answer = self.ask(
            {
                "op": "begin",
                "stage": _stage_record(stage),
                "process": [process.pid, process.started],
                "owner": list(process.owner),
                "experiment": process.experiment,
            }
        )
        if not answer["tracked"]:
            self.close()
            return None
        return RemoteRun(self, stage.name)

    def end_stage(self, run: RemoteRun, stage: str, failure: BaseException | None = None):
        """End the stage's run, as ``Tracker.end_stage`` does."""
        status = None
        if failure is not None:
            status = "KILLED" if isinstance(failure, KeyboardInterrupt) else "FAILED"
        try:
            if failure is None:
                self.ask({"op": "end", "failure": None})
            else:
                with contextlib.suppress(ChurnlabError):  # the stage's own error is reported
                    self.ask({"op": "end", "failure": status})
        finally:
            self.close()


class RemoteRun:
    """A stage's run kept by the tracking service."""

    def __init__(self, tracker: RemoteTracker, stage: str):
        self.tracker = tracker
        self.stage = stage

    def record(self, notebook: bool) -> None:
        """Log what the finished stage produced (``record_stage``), in the service;
        ``notebook``: its figures are read from the executed notebook it wrote."""
        self.tracker.ask({"op": "record", "notebook": notebook})


def _try_connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        connection.close()
        return None
    return connection


def _start_service(root: Path, path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # left by a service that died
    idle = idle_seconds()  # a bad value is the stage's error, not a service that never starts
    if TEMPORARY_WORKSPACE in root.resolve().as_posix():
        # `dvc exp run --temp` and queued experiments: a copy of the project no later run
        # will use; wait only for the copy's next stage
        idle = min(idle, TEMPORARY_IDLE_S)
    service = subprocess.Popen(
        [sys.executable, "-m", "churnlab.tracking.service", str(root), str(path), str(idle)],
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # what a stage should see comes back in the answers
        start_new_session=True,  # Ctrl-C on the pipeline stops the stage; the service sees it
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        connection = _try_connect(path)
        if connection is not None:
            return connection
        if service.poll() is not None:
            break
        time.sleep(0.01)
    service.kill()
    raise ChurnlabError(
        f"the tracking service did not start (exit status {service.poll()}); run the stage "
        f"again with {SWITCH}=off to record in the stage's own process and see why"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the service's side -------------------------------------------------------------------------


class Service:
    """The tracking service of one project and store: one request at a time; a tracker per
    pipeline run (its settings read anew, a parent run of its own)."""

    def __init__(self, root: Path, path: Path):
        self.root = root
        self.path = path  # its socket
        self.inode = path.stat().st_ino
        self.tracker = None  # opened by the first stage, again by the next if that failed
        self.owner: tuple | None = None  # the pipeline run the tracker was opened for
        self.store: str | None = None  # the SQLite file the store was opened on
        self.closing = False  # its name given up: serve what was queued, then exit
        self.warming = False  # the register step's imports, started once
        self.lock = threading.Lock()  # one request at a time: MLflow's client, the store
        self.counting = threading.Lock()
        self.connections = 0
        self.last_seen = time.monotonic()

    def _tracker(self, owner: tuple):
        from churnlab.tracking.runs import Tracker, _quiet_mlflow
        from churnlab.tracking.settings import load_settings

        if self.tracker is None or owner != self.owner:
            settings = load_settings(self.root)
            if self.store is not None and _store_identity(settings.uri) != self.store:
                self.give_name_up()
                raise _Restart()
            self.tracker, self.owner = None, owner  # a failed open is tried again
            _quiet_mlflow()
            self.tracker = Tracker._open(self.root, settings)
            self.store = _store_identity(settings.uri)
        return self.tracker

    def _warm_up(self) -> None:
        """Import what the register step uses (2 s of CPU in a fresh service) in the
        background at the lowest priority, once the first stage has ended, while the stages
        before the register stage run: a pipeline run that starts the service does not wait
        for them there. Each step holds the request lock, as a request does (two threads
        importing parts of one package at once can each wait for a module the other is
        importing, which Python breaks by failing one of the imports); a stage's request
        gets in between steps."""
        from churnlab.tracking.registry import warm_up_steps
        from churnlab.tracking.runs import Outcome

        def quietly() -> None:
            for step in warm_up_steps():
                with self.lock, contextlib.suppress(Exception):  # else the register step does
                    step()

        Outcome.in_thread(quietly, "warm-up")

    def give_name_up(self) -> None:
        """Unlink the socket (a stage that comes now starts a new service); exit when idle."""
        _unlink_if_ours(self.path, self.inode)
        self.closing = True

    def serve(self, connection: socket.socket) -> None:
        """Answer one stage's requests; a connection dropped before ``end`` is a killed stage."""
        state: dict[str, Any] = {}
        reader = connection.makefile("r", encoding="utf-8")
        try:
            for line in reader:
                request = json.loads(line)
                with self.lock:
                    answer = _answer(self._do, request, state)
                connection.sendall((json.dumps(answer) + "\n").encode())
        except OSError:
            pass
        finally:
            run = state.pop("run", None)
            if run is not None:  # the stage's process is gone without ending its run
                with self.lock, contextlib.suppress(Exception):
                    run.tracker.end_stage(run, state["stage"].name, KeyboardInterrupt())
            connection.close()

    def _begin(self, request: dict[str, Any], state: dict[str, Any]) -> bool:
        from churnlab.tracking.runs import StageProcess, _read_ahead

        tracker = self._tracker(tuple(request["owner"]))
        if tracker is None:
            return False
        stage = SimpleNamespace(**request["stage"])
        process = StageProcess(*request["process"], tuple(request["owner"]), request["experiment"])
        run = tracker.begin_stage(stage.name, stage.values, set(stage.outs), process)
        state.update(run=run, stage=stage)
        if stage.name == tracker.settings.register_stage:
            # whatever fails here fails again in the register step, with its own message
            with contextlib.suppress(Exception):
                _read_ahead(run, self.root, stage)
        return True

    def _do(self, request: dict[str, Any], state: dict[str, Any]) -> bool:
        """Carry out one request; whether the stage is tracked."""
        from churnlab.tracking.runs import Outcome, record_stage

        op = request["op"]
        if op == "begin":
            # at the lowest CPU priority, as in a stage's own process: the stage's kernel
            # runs meanwhile (the register stage's begin reads models for seconds)
            return Outcome.in_thread(lambda: self._begin(request, state), "begin").result()
        if op == "record":
            stage = state["stage"]
            nb = None
            if request["notebook"] and stage.executed_path:
                # its cells are all the figures need; nbformat would validate it (1 s of
                # jsonschema's start-up in this process), the runner has written it
                text = (self.root / stage.executed_path).read_text(encoding="utf-8")
                nb = SimpleNamespace(cells=json.loads(text)["cells"])
            record_stage(state["run"], self.root, stage, nb)
            return True
        if op == "end":
            run = state.pop("run")
            failure = {None: None, "FAILED": RuntimeError(), "KILLED": KeyboardInterrupt()}
            run.tracker.end_stage(run, state["stage"].name, failure[request["failure"]])
            if not self.warming:  # after the first stage, which never waits for it
                self.warming = True
                self._warm_up()
            return True
        raise ValueError(f"unknown request {op!r}")


class _Restart(Exception):
    """This service's store was deleted and made anew: the stage should start a new one."""


def _answer(work, *args) -> dict[str, Any]:
    """Call ``work(*args)`` with what it prints to stderr captured; its value or its error."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            tracked = work(*args)
    except _Restart:
        return {"ok": False, "restart": True, "error": "the store was made anew"}
    except ChurnlabError as exc:
        return {"ok": False, "error": str(exc), "stderr": printed.getvalue()}
    except Exception as exc:  # a stage in its own process would fail with it too
        error = f"tracking service: {type(exc).__name__}: {first_line(exc)}"
        return {"ok": False, "error": error, "stderr": printed.getvalue()}
    return {"ok": True, "tracked": tracked, "stderr": printed.getvalue()}


def main(argv: list[str]) -> None:
    """``python -m churnlab.tracking.service ROOT SOCKET IDLE_SECONDS``."""
    root, path, idle_s = Path(argv[0]), Path(argv[1]), float(argv[2])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # the socket: this user only
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen()
    listener.settimeout(_POLL_S)
    service = Service(root, path)

    def serve(connection: socket.socket) -> None:
        try:
            service.serve(connection)
        finally:
            with service.counting:
                service.connections -= 1
                service.last_seen = time.monotonic()

    try:
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                idle = service.connections == 0
                if service.closing and idle:
                    return
                if idle and time.monotonic() - service.last_seen > idle_s:
                    # unlink first: a stage that connected before that is queued and is
                    # served by the next accept; one that comes later starts a new service
                    service.give_name_up()
                continue
            connection.settimeout(None)
            with service.counting:
                service.connections += 1
            threading.Thread(target=serve, args=(connection,), daemon=True).start()
    finally:
        _unlink_if_ours(path, service.inode)


def _unlink_if_ours(path: Path, inode: int) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_ino == inode:
            path.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
