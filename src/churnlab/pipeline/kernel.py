"""The stage's kernel, started before the runner needs it and warmed with the notebook's imports.

A stage's runner spends its first seconds importing its own modules and checking the params,
while the kernel needs about a second to start and one or two more to import what the
notebook imports (pandas, scikit-learn, matplotlib). The two can run at once on two cores, so
the runner starts the kernel first and asks it, silently, to import the modules the notebook
imports at its top level. A silent request binds no name, counts no execution and sends no
output: the notebook still starts in a fresh namespace, with execution count 1, and writes the
same bytes as in a kernel started cold (the end-to-end tests check the bytes).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

from churnlab.pipeline.warm import kernel_socket

_LOG_ERRORS_ONLY = "--IPKernelApp.log_level=ERROR"

# `import a.b, c` and `from a.b import c` at the start of a line: the notebook's top level
_IMPORT = re.compile(r"^(?:import\s+([\w.]+(?:\s*,\s*[\w.]+)*)|from\s+([\w.]+)\s+import\b)", re.M)


def top_level_imports(source: str) -> list[str]:
    """The modules a notebook script imports at the start of a line, in order, once each.

    Relative imports and ``import x as y`` aliases need nothing more: the module name is what
    gets warmed, never a name in the notebook's namespace.
    """
    found: list[str] = []
    for plain, origin in _IMPORT.findall(source):
        for name in (origin,) if origin else re.split(r"\s*,\s*", plain):
            if name and name not in found:
                found.append(name)
    return found


def warm_up_code(modules: list[str]) -> str:
    """Code that imports each module without binding a name; a failing import is left for
    the notebook's own cell to report (with its traceback, in its cell)."""
    lines = []
    for module in modules:
        # then what the module itself imports only when called (its ``WARM_UP``: skops for
        # loading a model, scikit-learn's metrics): a comprehension binds no name either
        extras = (
            f"[__import__(_m) for _m in getattr(__import__('sys').modules[{module!r}], "
            "'WARM_UP', ())]"
        )
        lines += ["try:", f"    __import__({module!r})", f"    {extras}", "except Exception:"]
        lines += ["    pass"]
    return "\n".join(lines)


def _run_to_end(coroutine) -> Any:
    """Run ``coroutine`` to its end from synchronous code, also where an event loop already
    runs in this thread (a caller inside Playwright's or a notebook's loop): then in a thread
    of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def work():
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="kernel manager")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class StartedKernel:
    """A kernel process started for one stage, handed to papermill, shut down by the runner."""

    def __init__(self, manager, pid: int):
        self.manager = manager
        self.pid = pid
        self._client = None

    @classmethod
    def start(
        cls, kernel_name: str, cwd: Path, notebook: Path | None, spare_core: bool = False
    ) -> StartedKernel:
        """Start the kernel in ``cwd`` and send it the warm-up imports of ``notebook``.

        Args:
            spare_core: leave one core to the runner (the register stage's tracking works
                in the background while the notebook runs): the kernel's OpenMP pool gets one
                thread fewer than there are cores, unless OMP_NUM_THREADS says otherwise.
                OpenMP threads spin while they wait for each other, so a pool as large as the
                machine, sharing a core with the runner, ran evaluate's cells at half speed
                (4.5 s alone, 10 s beside tracking; 5 s with the spare core). Not for every
                stage: training on 1,000,000 customers on one thread fewer took 60 s more
                than the seconds of tracking it spared. Results do not depend on it: the
                model's bytes are the same for any thread count (tests/test_model.py).

        Raises:
            jupyter_client.kernelspec.NoSuchKernel: the kernel is not installed.
        """
        from jupyter_client.manager import AsyncKernelManager

        env = dict(os.environ)
        if spare_core and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) - 1))
        manager = AsyncKernelManager(kernel_name=kernel_name)
        warm_socket = kernel_socket()
        if warm_socket is not None:  # under dvc, with the project's warm interpreter waiting
            from churnlab.pipeline.forked import use_warm_kernel

            use_warm_kernel(manager, warm_socket)
        # its one warning (TCP on localhost without encryption) would precede every stage's
        # output and the one line of a failing check: the kernel's own log shows errors only
        _run_to_end(manager.start_kernel(cwd=str(cwd), env=env, extra_arguments=[_LOG_ERRORS_ONLY]))
        kernel = cls(manager, manager.provisioner.pid)
        if notebook is not None and notebook.is_file():
            modules = top_level_imports(notebook.read_text(encoding="utf-8"))
            if modules:
                kernel._send_silently(warm_up_code(modules))
        return kernel

    def _send_silently(self, code: str) -> None:
        """Queue ``code`` on the kernel's shell channel without waiting: ZeroMQ delivers it
        when the kernel is up, before any request papermill sends later."""
        from jupyter_client.blocking import BlockingKernelClient

        client = BlockingKernelClient()
        client.load_connection_info(self.manager.get_connection_info())
        client.start_channels(iopub=False, stdin=False, hb=False, control=False)
        client.execute(code, silent=True, store_history=False, allow_stdin=False)
        self._client = client  # closing it now could drop the request before the kernel is up

    def signal(self, number: int) -> None:
        """Send a signal to the kernel's process group (jupyter_client starts each kernel in
        its own session)."""
        try:
            os.killpg(self.pid, number)
        except ProcessLookupError:
            pass

    def shutdown(self) -> None:
        """Stop the kernel: every cell has returned, so whatever it wrote is written."""
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
        if self.manager.has_kernel:
            _run_to_end(self.manager.shutdown_kernel(now=True))

    def kill(self) -> None:
        """Kill the kernel at once (the runner is failing before or while it ran)."""
        self.signal(signal.SIGKILL)
        self.shutdown()
