"""The warm interpreter itself: ``python -m churnlab.pipeline.warm_server ROOT SOCKET``.

It imports what the stage commands and the notebooks' kernels import, listens on the
project's socket, and forks a child per request: a stage command's process or a kernel
(``churnlab.pipeline.warm`` says why, and holds the side that asks). It runs nothing
itself, so every child starts from the same untouched interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from churnlab.pipeline import warm
from churnlab.pipeline.warm import (
    COMMAND_MODULES,
    KERNEL_MODULES,
    PLOTTING_MODULES,
    idle_seconds,
)

_THREAD_VARIABLES = {
    "OMP_NUM_THREADS": "openmp",
    "OPENBLAS_NUM_THREADS": "blas",
    "MKL_NUM_THREADS": "blas",
}
_POLL_S = 0.5


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
    load(PLOTTING_MODULES)
    # a backend chosen here (a figure drawn by an import) would be every kernel's: a kernel
    # is forked only while matplotlib's backend is what MPLBACKEND alone makes it
    with contextlib.suppress(ImportError):
        import matplotlib

        return matplotlib.get_backend(auto_select=False) == (os.environ.get("MPLBACKEND") or None)
    return True


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
    """``python -m churnlab.pipeline.warm_server ROOT SOCKET``."""
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
        _flush()
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


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed stream
            stream.flush()


def _launches_ipykernel(cmd: list[str]) -> bool:
    """Whether the kernel's command is this interpreter's ``-m ipykernel_launcher``."""
    try:
        same = os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)
    except (IndexError, TypeError):
        return False
    return same and "-m" in cmd and cmd[cmd.index("-m") + 1 :][:1] == ["ipykernel_launcher"]


def _become(request: dict, streams: list[int]) -> dict:
    """What a forked child shares, command or kernel: a session of its own, the default
    signal handlers, the caller's ``streams`` as its standard ones (closed here), the
    caller's environment (with what the warm-up's imports added to it, as they would),
    thread pools as that environment asks, folder and umask, a fresh random state. Returns
    the environment."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # its own children are its own to reap
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    for number, fd in enumerate(streams):
        os.dup2(fd, number)
        os.close(fd)
    environ = {**_state.get("added", {}), **request["env"]}
    _follow_thread_limits(environ)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    import random

    random.seed()  # as a fresh interpreter would
    return environ


def _kernel_child(request: dict, fds: list[int]) -> None:
    """Become the kernel ``python -m ipykernel_launcher ARGS`` would start: in its own
    session, with the runner's environment, folder, umask and output streams; it exits
    when the runner that asked for it is gone (as a kernel does when its parent is)."""
    code = 1
    try:
        nothing = os.open(os.devnull, os.O_RDONLY)
        environ = _become(request, [nothing, *fds])
        if sys.path and sys.path[0] == _state["path0"]:
            del sys.path[0]  # as ipykernel_launcher leaves sys.path
        cmd = request["cmd"]
        launcher = importlib_origin("ipykernel_launcher")
        sys.argv = [launcher, *cmd[cmd.index("-m") + 2 :]]
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

        _follow_kernel_backend(kernelapp.IPKernelApp)

        # the kernel's parent is a default read from the environment when ipykernel was
        # imported (here: the warm interpreter's, which has none); without it the kernel
        # prints its connection banner into the stage's output
        parent = int(environ.get("JPY_PARENT_PID") or 0)
        kernelapp.IPKernelApp.launch_instance(parent_handle=parent)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _follow_kernel_backend(app: type) -> None:
    """matplotlib reads MPLBACKEND once, when imported: here, in the warm interpreter,
    before the kernel sets it (ipykernel's ``init_gui_pylab`` makes the inline backend the
    default). After it has, set what a notebook's own import would then read."""
    if "matplotlib" not in sys.modules:
        return
    set_default = app.init_gui_pylab

    def init_gui_pylab(self) -> None:
        set_default(self)
        import matplotlib

        if os.environ.get("MPLBACKEND"):
            matplotlib.rcParams["backend"] = os.environ["MPLBACKEND"]

    app.init_gui_pylab = init_gui_pylab


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


def _child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """Become the stage's process; exit with its status (sent to the command first)."""
    code = 1
    try:
        _become(request, fds)
        sys.argv = ["churnlab", *request["argv"]]
        if sys.path and sys.path[0] == _state["path0"]:
            sys.path[0] = request.get("path0", "")  # as the command's own interpreter has it
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        warm.SERVING = Path(request["socket"])
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
