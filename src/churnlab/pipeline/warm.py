"""A warm interpreter for the stage commands: their imports are paid once, not per stage.

A stage command (``churnlab run NAME``, ``churnlab report``, ``churnlab fetch``) spends its
first 0.7 to 1.3 s importing papermill, pandas, scikit-learn, pandera, matplotlib and
nbconvert before any work (``bench/RESULTS.md``); a pipeline run pays that once per stage,
a person's evaluation-only experiment twice. So, when DVC runs a stage command and no warm
interpreter waits for its environment, the command starts one in the background and runs as
before; the warm interpreter imports what the stage commands import and waits on a Unix
socket. The next stage command connects and hands over its arguments, working folder,
environment, umask and its three standard streams; the warm interpreter forks, and the
child, a copy of the warmed interpreter that has run nothing, becomes the stage's process:
it runs ``churnlab.cli.main`` with the command's arguments, in its folder, with its
environment, writing to its terminal or log, and sends back its exit status, which the
command exits with. The warm interpreter itself never runs a stage, so each stage starts
from the same untouched interpreter, as each started from a fresh one before; the outputs
are the same bytes (the end-to-end tests check them).

The command stays the stage's process for DVC: it passes Ctrl-C, termination and hang-up
on to the child and exits with its status. A command killed outright (SIGKILL) leaves a
child that sees its caller gone and stops as on Ctrl-C, restoring the stage's earlier
outputs.

A warm interpreter never serves what it was not started for: its socket's name is a digest
of the environment (but for the variables DVC sets per stage and run, which no import
reads) and churnlab's code (the tracking service's identity: the interpreter, the
installed packages, every churnlab source file's size and time). It exits after
``CHURNLAB_WARM_IDLE`` seconds (600; 30 in DVC's temporary experiment copies) without a
command. It holds nothing of a project, so the projects of one environment share it.
``CHURNLAB_WARM=off`` runs every command in its own interpreter, as a command
started outside DVC (a person's ``churnlab run`` in a shell, the tests' own calls) always does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

SWITCH = "CHURNLAB_WARM"  # "off": every stage command runs in an interpreter of its own
IDLE_VARIABLE = "CHURNLAB_WARM_IDLE"
IDLE_S = 600.0
COMMANDS = ("run", "report", "fetch")  # the stage commands of dvc.yaml
# what the stage commands import (their handlers in churnlab.cli, and what those import
# when they run)
COMMAND_MODULES = (
    "churnlab.cli",
    "churnlab.fetch",
    "churnlab.split",
    "churnlab.param_rules",
    "churnlab.pipeline.execute",
    "churnlab.pipeline.stages",
    "churnlab.pipeline.guard",
    "churnlab.pipeline.pages",
    "churnlab.tracking.runs",
    "churnlab.tracking.service",
    "papermill",
    "nbclient",
    "jupyter_client.manager",
)
# what the notebooks' kernels import (the notebooks' own imports, and their modules'
# WARM_UP); matplotlib apart (PLOTTING_MODULES)
KERNEL_MODULES = (
    "ipykernel.kernelapp",
    "numpy",
    "pandas",
    "churnlab.notebook",
    "churnlab.files",
    "churnlab.data",
    "churnlab.explore",
    "churnlab.split",
    "churnlab.search",
    "churnlab.model",
    "churnlab.evaluation",
    "churnlab.compute.cluster",
)
# what the notebooks and the report draw with, imported last. matplotlib reads MPLBACKEND
# when imported, and a kernel sets it (to the inline backend) only when it starts: a kernel
# forked from the warm interpreter sets matplotlib's backend as that import would have
# (warm_server._follow_kernel_backend). Not the inline backend's module: imported, it
# attaches itself to the IPython shell it finds, and the warm interpreter has none.
PLOTTING_MODULES = ("matplotlib", "matplotlib.pyplot")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SERVING: Path | None = None  # in a process the warm interpreter forked: its socket


def wanted(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(SWITCH, "").strip().lower() not in ("0", "off", "false", "no")


def idle_seconds(root: Path, environ=None) -> float:
    """How long a warm interpreter waits for the next command (a bad value: the default)."""
    from churnlab.tracking.service import TEMPORARY_IDLE_S, TEMPORARY_WORKSPACE

    environ = os.environ if environ is None else environ
    try:
        idle = float(environ.get(IDLE_VARIABLE, "").strip() or IDLE_S)
    except ValueError:
        idle = IDLE_S
    if TEMPORARY_WORKSPACE in root.as_posix() + "/":
        idle = min(idle, TEMPORARY_IDLE_S)  # a copy no later run will use
    return idle


def _environment_identity(environ) -> str:
    """The environment but what no import reads: the variables DVC sets per stage and run
    (DVC_STAGE, DVC_EXP_NAME, ...), churnlab's own (read when a command runs) and the
    shell's bookkeeping."""
    # and what scikit-learn sets when imported (a cold runner may have imported it), and
    # pytest's marker of the running test (the suite's projects share one per worker)
    skipped = ("PWD", "OLDPWD", "SHLVL", "_", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")
    skipped += ("PYTEST_CURRENT_TEST",)
    kept = sorted(
        (name, value)
        for name, value in environ.items()
        if not name.startswith(("DVC_", "CHURNLAB_")) and name not in skipped
    )
    return json.dumps(kept)


def socket_path(environ=None) -> Path:
    """The warm interpreter's socket for this environment and code: short (a Unix socket's
    path has at most 107 bytes), in a folder only this user may enter. Not per project: it
    holds no project's state (each child runs in its command's folder), so the projects of
    one environment (a venv, a conda environment) share it."""
    from churnlab.tracking.service import _code_identity, private_folder

    environ = os.environ if environ is None else environ
    folder, private = private_folder("churnlab-warm")
    if not private:
        return folder / "refused"  # someone else's folder: never connect (run cold)
    key = "\0".join([_environment_identity(environ), _code_identity()])
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


# --- the command's side ---------------------------------------------------------------------


def _under_dvc() -> tuple[Path, Path] | None:
    """The project and the warm interpreter's socket, for a process run by dvc with the
    warm interpreter wanted; None otherwise (and for anything wrong here: the command
    itself reports it when it runs)."""
    if not wanted():
        return None
    from churnlab.tracking.processes import pipeline_owner

    if pipeline_owner()[0] == os.getpid():  # not run by dvc
        return None
    try:
        from churnlab.config import project_root

        root, path = project_root(), socket_path()
    except Exception:
        return None
    return None if path.name == "refused" else (root, path)


def run_warm(argv: list[str]) -> int | None:
    """Run the stage command ``argv`` in a child of the project's warm interpreter and
    return its exit status; None: run it here (not a stage command, not under DVC, switched
    off, or no warm interpreter ready: one is then started for the next command)."""
    found = _under_dvc() if argv and argv[0] in COMMANDS else None
    if found is None:
        return None
    root, path = found
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        _start(root, path)
        return None
    with connection:
        return _run_there(connection, argv)


def _start(root: Path, path: Path) -> None:
    """Start a warm interpreter in the background, unless one is starting already."""
    marker = path.with_suffix(".starting")
    with contextlib.suppress(OSError, ValueError):
        pid = int(marker.read_text())
        os.kill(pid, 0)
        return  # starting: its socket appears once its imports are done
    path.unlink(missing_ok=True)  # left by one that died
    with contextlib.suppress(OSError):
        process = subprocess.Popen(
            [sys.executable, "-m", "churnlab.pipeline.warm_server", str(root), str(path)],
            cwd="/",  # in no project folder: its children change to their command's
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on this pipeline run is not its business
            env={**os.environ, IDLE_VARIABLE: str(idle_seconds(root))},
        )
        marker.write_text(str(process.pid))


def _run_there(connection: socket.socket, argv: list[str]) -> int | None:
    request = {
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": _umask(),
        "caller": os.getpid(),
        "path0": sys.path[0] if sys.path else "",  # the `churnlab` script's folder
    }
    with contextlib.suppress(OSError, ValueError):
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    try:
        socket.send_fds(connection, [(json.dumps(request) + "\n").encode()], [0, 1, 2])
        reader = connection.makefile("r", encoding="utf-8")
        started = reader.readline()
    except OSError:
        return None  # nothing ran: run it here
    if not started:
        return None
    child = json.loads(started)["pid"]

    def forward(number, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, number)

    previous = {number: signal.signal(number, forward) for number in _FORWARDED}
    try:  # a forwarded signal interrupts the read, which Python then resumes (PEP 475)
        line = reader.readline()
    except OSError:
        line = ""
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if not line:
        print(
            f"churnlab: error: the stage's process (pid {child}, started by the warm "
            f"interpreter) ended without an exit status: killed? Run again, or with {SWITCH}=off",
            file=sys.stderr,
        )
        return 1
    return int(json.loads(line)["status"])


# --- the runner's side: a kernel from the warm interpreter -----------------------------------


def kernel_socket() -> Path | None:
    """The warm interpreter a stage's runner may ask for its kernel (None: start it here)."""
    if SERVING is not None:  # this runner is that interpreter's child
        return SERVING if wanted() else None
    found = _under_dvc()
    return found[1] if found is not None and found[1].exists() else None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def request_kernel(path: Path, cmd: list[str], env: dict, cwd: str) -> int | None:
    """Ask the warm interpreter at ``path`` to fork the kernel ``cmd``; its pid, or None
    (no warm interpreter answering, or one that does not fork kernels)."""
    request = {
        "op": "kernel",
        "cmd": cmd,
        "env": env,
        "cwd": str(cwd),
        "umask": _umask(),
        "caller": os.getpid(),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        try:
            connection.connect(str(path))
            socket.send_fds(connection, [(json.dumps(request) + "\n").encode()], [1, 2])
            answer = connection.makefile("r", encoding="utf-8").readline()
        except OSError:
            return None
    return int(json.loads(answer)["pid"]) if answer else None
