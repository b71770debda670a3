"""A warm interpreter for the stage commands: their imports are paid once, not per stage.

A stage command (``churnlab run NAME``, ``churnlab report``, ``churnlab fetch``) spends its
first 0.7 to 1.3 s importing papermill, pandas, scikit-learn, pandera, matplotlib and
nbconvert before any work (``bench/RESULTS.md``); a pipeline run pays that once per stage,
a person's evaluation-only experiment twice. So, when DVC runs a stage command and no warm
interpreter waits for the project, the command starts one in the background and runs as
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
of the project, the environment (but for the variables DVC sets per stage and run, which no
import reads) and churnlab's code (the tracking service's identity: the interpreter, the
installed packages, every churnlab source file's size and time). It exits after
``CHURNLAB_WARM_IDLE`` seconds (600; 30 in DVC's temporary experiment copies) without a
command. ``CHURNLAB_WARM=off`` runs every command in its own interpreter, as a command
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
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

SWITCH = "CHURNLAB_WARM"  # "off": every stage command runs in an interpreter of its own
IDLE_VARIABLE = "CHURNLAB_WARM_IDLE"
IDLE_S = 600.0
TEMPORARY_WORKSPACE = "/.dvc/tmp/exps/"  # where DVC runs queued and --temp experiments
TEMPORARY_IDLE_S = 30.0
COMMANDS = ("run", "report", "fetch")  # the stage commands of dvc.yaml
# what the stage commands import (their handlers in churnlab.cli, and what those import
# when they run); never matplotlib: see KERNEL_MODULES
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
# WARM_UP). Not matplotlib: it reads MPLBACKEND when imported, and the kernel sets it (to
# the inline backend) only when it starts; a kernel forked from an interpreter that had
# imported matplotlib would draw no figure into the notebook.
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
_THREAD_VARIABLES = {
    "OMP_NUM_THREADS": "openmp",
    "OPENBLAS_NUM_THREADS": "blas",
    "MKL_NUM_THREADS": "blas",
}
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_POLL_S = 0.5


def wanted(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(SWITCH, "").strip().lower() not in ("0", "off", "false", "no")


def idle_seconds(root: Path, environ=None) -> float:
    """How long a warm interpreter waits for the next command (a bad value: the default)."""
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
    # and what scikit-learn sets when imported (a cold runner may have imported it)
    skipped = ("PWD", "OLDPWD", "SHLVL", "_", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")
    kept = sorted(
        (name, value)
        for name, value in environ.items()
        if not name.startswith(("DVC_", "CHURNLAB_")) and name not in skipped
    )
    return json.dumps(kept)


def socket_path(root: Path, environ=None) -> Path:
    """The warm interpreter's socket for this project, environment and code: short (a Unix
    socket's path has at most 107 bytes), in a folder only this user may enter."""
    from churnlab.tracking.service import _code_identity

    environ = os.environ if environ is None else environ
    folder = Path(tempfile.gettempdir()) / f"churnlab-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return folder / "refused"  # someone else's folder: never connect (run cold)
    key = "\0".join([str(root), _environment_identity(environ), _code_identity()])
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


# --- the command's side ---------------------------------------------------------------------


def run_warm(argv: list[str]) -> int | None:
    """Run the stage command ``argv`` in a child of the project's warm interpreter and
    return its exit status; None: run it here (not a stage command, not under DVC, switched
    off, or no warm interpreter ready: one is then started for the next command)."""
    if not argv or argv[0] not in COMMANDS or not wanted():
        return None
    from churnlab.tracking.processes import pipeline_owner

    if pipeline_owner()[0] == os.getpid():  # not run by dvc
        return None
    try:
        from churnlab.config import project_root

        root = project_root()
        path = socket_path(root)
    except Exception:  # whatever is wrong here, the command itself reports when it runs
        return None
    if path.name == "refused":
        return None
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
            [sys.executable, "-m", "churnlab.pipeline.warm", str(root), str(path)],
            cwd="/",  # in no project folder: its children change to their command's
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on this pipeline run is not its business
            env={**os.environ, IDLE_VARIABLE: str(idle_seconds(root))},
        )
        marker.write_text(str(process.pid))


def _run_there(connection: socket.socket, argv: list[str]) -> int | None:
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": umask,
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
    try:
        while True:
            try:
                line = reader.readline()
                break
            except InterruptedError:
                continue
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


# --- the warm interpreter's side --------------------------------------------------------------


def _warm_up() -> bool:
    """Import what the commands and the kernels import; whether kernels may be forked."""
    import builtins
    import importlib

    # pandas sets two defaults by where it is imported: display.max_columns is 20 in a
    # Jupyter kernel (which get_ipython() tells by its `kernel`), 0 (fit the terminal)
    # elsewhere; display.encoding is sys.stdout's (ipykernel's says "UTF-8"). Imported here
    # for the kernels, it must see what a kernel shows it. (No command prints a table.)
    builtins.get_ipython = lambda: SimpleNamespace(kernel=None)
    stdout, sys.stdout = sys.stdout, SimpleNamespace(encoding="UTF-8")
    try:
        with contextlib.suppress(Exception):
            importlib.import_module("pandas")
    finally:
        sys.stdout = stdout
        del builtins.get_ipython
    def load(names: tuple[str, ...]) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                module = importlib.import_module(name)
                for extra in getattr(module, "WARM_UP", ()):
                    importlib.import_module(extra)

    load(KERNEL_MODULES)
    # tqdm.auto, which papermill imports for its progress bar, picks the notebook's bar
    # when ipykernel's shell is imported (the kernels' modules import it): the commands'
    # modules are imported as a command imports them, without it
    shell = sys.modules.pop("ipykernel.zmqshell", None)
    try:
        load(("tqdm.auto", *COMMAND_MODULES))
    finally:
        if shell is not None:
            sys.modules["ipykernel.zmqshell"] = shell
    return "matplotlib" not in sys.modules


_state: dict = {"kernels": False, "children": set(), "path0": None, "environ": {}}


def _children_alive() -> bool:
    alive = set()
    for pid in _state["children"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            alive.add(pid)
    _state["children"] = alive
    return bool(alive)


def main(argv: list[str]) -> None:
    """``python -m churnlab.pipeline.warm ROOT SOCKET``."""
    root, path = Path(argv[0]), Path(argv[1])
    idle_s = idle_seconds(root)
    marker = path.with_suffix(".starting")
    _state["path0"] = sys.path[0] if sys.path else None  # `-m` puts the folder first
    _state["environ"] = dict(os.environ)
    try:
        _state["kernels"] = _warm_up()
        # what the imports put into the environment (scikit-learn: KMP_DUPLICATE_LIB_OK),
        # which a child whose environment is replaced gets again, as an import would set it
        _state["added"] = {k: v for k, v in os.environ.items() if k not in _state["environ"]}
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o177)  # the socket: this user only
        try:
            listener.bind(str(path))
        except OSError:
            return  # another one got there first
        finally:
            os.umask(old_mask)
    finally:
        with contextlib.suppress(OSError):
            if marker.read_text() == str(os.getpid()):
                marker.unlink()
    inode = path.stat().st_ino
    listener.listen()
    listener.settimeout(_POLL_S)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    last_seen = time.monotonic()
    try:
        # a kernel it forked exits when its parent does: wait for the last one
        while time.monotonic() - last_seen < idle_s or _children_alive():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            last_seen = time.monotonic()
            connection.settimeout(30)
            with contextlib.suppress(Exception):
                _serve(connection, listener)
            connection.close()
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:
                path.unlink()


def _serve(connection: socket.socket, listener: socket.socket) -> None:
    """Read one request, fork its child (a stage command's process, or a kernel) and tell
    the caller its pid; close what the child took over."""
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    try:
        while not message.endswith(b"\n"):
            more = connection.recv(1 << 20)
            if not more:
                return
            message += more
        request = json.loads(message)
        kernel = request.get("op") == "kernel"
        request["socket"] = listener.getsockname()
        if kernel and not (_state["kernels"] and _launches_ipykernel(request["cmd"])):
            return  # the caller starts its kernel itself
        if threading.active_count() > 1:  # forking a threaded process is not safe
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            if kernel:
                connection.close()
                _kernel_child(request, fds)  # never returns
            _child(connection, request, fds)  # never returns
        _state["children"].add(pid)
        connection.sendall((json.dumps({"pid": pid}) + "\n").encode())
    finally:
        for fd in fds:
            os.close(fd)


def _launches_ipykernel(cmd: list[str]) -> bool:
    """Whether the kernel's command is this interpreter's ``-m ipykernel_launcher``."""
    try:
        same = os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)
    except (IndexError, TypeError):
        return False
    return same and "-m" in cmd and cmd[cmd.index("-m") + 1 :][:1] == ["ipykernel_launcher"]


def _reset_signals() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # its own children are its own to reap
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _kernel_child(request: dict, fds: list[int]) -> None:
    """Become the kernel ``python -m ipykernel_launcher ARGS`` would start: in its own
    session, with the runner's environment, folder, umask and output streams; it exits
    when the runner that asked for it is gone (as a kernel does when its parent is)."""
    code = 1
    try:
        os.setsid()
        _reset_signals()
        nothing = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nothing, 0)
        os.close(nothing)
        for number, fd in zip((1, 2), fds, strict=True):
            os.dup2(fd, number)
            os.close(fd)
        environ = {**_state.get("added", {}), **request["env"]}
        _follow_thread_limits(environ)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        if sys.path and sys.path[0] == _state["path0"]:
            del sys.path[0]  # as ipykernel_launcher leaves sys.path
        cmd = request["cmd"]
        launcher = importlib_origin("ipykernel_launcher")
        sys.argv = [launcher, *cmd[cmd.index("-m") + 2 :]]
        import random

        random.seed()
        caller = int(request["caller"])

        def watch():
            while True:
                time.sleep(1.0)
                try:
                    os.kill(caller, 0)
                except ProcessLookupError:
                    os._exit(1)

        threading.Thread(target=watch, name="runner watch", daemon=True).start()
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def importlib_origin(module: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return str(spec.origin) if spec and spec.origin else module


def _follow_thread_limits(environ: dict) -> None:
    """The thread pools' sizes the kernel's environment asks for: OpenMP and BLAS read
    their variables once, when loaded (in the warm interpreter), so a kernel whose
    environment says otherwise (the register stage's kernel leaves a core to its runner)
    sets them now."""
    import threadpoolctl

    for name, api in _THREAD_VARIABLES.items():
        wanted_threads = environ.get(name)
        if wanted_threads != _state["environ"].get(name):
            limit = int(wanted_threads) if wanted_threads else os.cpu_count()
            threadpoolctl.threadpool_limits(limits=limit, user_api=api)


# --- the runner's side: a kernel from the warm interpreter -----------------------------------


def kernel_socket() -> Path | None:
    """The warm interpreter a stage's runner may ask for its kernel (None: start it here)."""
    if not wanted():
        return None
    if _state.get("serving"):  # this runner is that interpreter's child
        return _state["serving"]
    from churnlab.tracking.processes import pipeline_owner

    if pipeline_owner()[0] == os.getpid():
        return None
    try:
        from churnlab.config import project_root

        path = socket_path(project_root())
    except Exception:
        return None
    return path if path.name != "refused" and path.exists() else None


def request_kernel(path: Path, cmd: list[str], env: dict, cwd: str) -> int | None:
    """Ask the warm interpreter at ``path`` to fork the kernel ``cmd``; its pid, or None
    (no warm interpreter answering, or one that does not fork kernels)."""
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "op": "kernel",
        "cmd": cmd,
        "env": env,
        "cwd": str(cwd),
        "umask": umask,
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


def _child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """Become the stage's process; exit with its status (sent to the command first)."""
    code = 1
    try:
        os.setsid()
        _reset_signals()
        for number, fd in enumerate(fds):
            os.dup2(fd, number)
            os.close(fd)
        os.environ.clear()
        os.environ.update({**_state.get("added", {}), **request["env"]})
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        sys.argv = ["churnlab", *request["argv"]]
        if sys.path and sys.path[0] == _state["path0"]:
            sys.path[0] = request.get("path0", "")  # as the command's own interpreter has it
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        import random

        random.seed()  # as a fresh interpreter would
        _state["serving"] = Path(request["socket"])
        from churnlab.tracking import processes

        processes.CALLER = int(request["caller"])  # its pipeline run is the command's
        connection.settimeout(None)
        finished = threading.Event()

        def watch():
            with contextlib.suppress(OSError):
                while connection.recv(1024):
                    pass
            if not finished.is_set():  # the command is gone: stop as on Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=watch, name="caller watch", daemon=True).start()
        from churnlab import cli

        try:
            code = cli.main(request["argv"])
        except SystemExit as exc:  # argparse's errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        cli.finish()
        finished.set()
        connection.sendall((json.dumps({"status": code}) + "\n").encode())
    finally:
        os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
