"""A kernel forked by the project's warm interpreter, managed as jupyter_client manages one.

``churnlab.pipeline.warm`` forks a stage's kernel from an interpreter that has imported
pandas, scikit-learn and ipykernel already: the kernel answers in a fraction of a second
instead of the one to three it needs to start and import them. The kernel is the warm
interpreter's child, not the runner's, so jupyter_client's own provisioner (which holds a
``Popen``) cannot watch it: ``WarmProvisioner`` asks the warm interpreter for the kernel and
holds a ``ForkedProcess``, which answers what jupyter_client asks of a ``Popen`` (is it
running, wait for it, signal it) by the process id. When no warm interpreter answers, it
starts the kernel as jupyter_client does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from churnlab.pipeline import warm


def _running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


class ForkedProcess:
    """What jupyter_client uses of a kernel's ``Popen``, for a process that is not this
    one's child (its exit status is not ours to read: 0 once it has gone, or the signal we
    killed it with)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._signalled: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _running(self.pid):
            self.returncode = -self._signalled if self._signalled else 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["kernel"], timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            if number in (signal.SIGKILL, signal.SIGTERM):
                self._signalled = number
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class WarmProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, but the kernel comes from the warm interpreter."""

    warm_socket: Path | None = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        options = self._scrub_kwargs(kwargs)
        pid = None
        if self.warm_socket is not None:
            environ = dict(options.get("env") or os.environ)
            environ["JPY_PARENT_PID"] = str(os.getpid())  # as jupyter_client's launcher sets it
            cwd = options.get("cwd") or os.getcwd()
            pid = warm.request_kernel(self.warm_socket, cmd, environ, cwd)
        if pid is None:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = ForkedProcess(pid)
        self.pid = self.pgid = pid  # the kernel leads a session of its own, as a local one
        self.cwd = kwargs.get("cwd")
        return self.connection_info


def use_warm_kernel(manager, path: Path) -> None:
    """Have ``manager`` (not started yet) take its kernel from the warm interpreter at
    ``path``."""
    import uuid

    manager.kernel_id = manager.kernel_id or str(uuid.uuid4())
    provisioner = WarmProvisioner(
        kernel_id=manager.kernel_id, kernel_spec=manager.kernel_spec, parent=manager
    )
    provisioner.warm_socket = path
    manager.provisioner = provisioner
