"""Which pipeline run a stage belongs to, and whether the process of a run still lives.

A pipeline run is one ``dvc repro`` (or ``dvc exp run``): its stages run in child processes,
so the nearest ``dvc`` ancestor in ``/proc`` names it. A run records its host, process id and
process start time as tags; a run left RUNNING whose process is gone was killed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

TAG_HOST, TAG_PID, TAG_STARTED = "churnlab.host", "churnlab.pid", "churnlab.process_start"


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
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


CALLER: int | None = None  # a stage forked by the warm interpreter: the command it runs for


def pipeline_owner() -> tuple[int, str]:
    """The process whose pipeline run this is: the nearest ``dvc`` ancestor (of the command
    a warm interpreter's child runs for), else this process."""
    pid: int | None = CALLER or os.getpid()
    while pid and pid > 1:
        if _is_dvc(pid):
            return pid, process_start(pid) or ""
        pid = _parent_pid(pid)
    return os.getpid(), process_start(os.getpid()) or ""


def process_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process a run belongs to still runs (unknown hosts count as alive)."""
    if tags.get(TAG_HOST) != socket.gethostname() or TAG_PID not in tags:
        return True
    return process_start(int(tags[TAG_PID])) == tags.get(TAG_STARTED)
