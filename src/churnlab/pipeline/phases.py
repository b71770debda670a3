"""Where a stage's wall time goes: wall-clock marks of its phases, for the benchmark.

With ``CHURNLAB_TIMINGS`` naming a file, each stage process appends one JSON line to it:
``{"stage": name, "marks": {phase: seconds since the epoch}}``, the first mark being the
process's own start (read from ``/proc``). ``bench/run.py`` sets it and puts these marks
beside DVC's lines, so the breakdown it prints is measured inside the run, not estimated from
parts timed on their own. Unset (always, outside the benchmark), nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TIMINGS_ENV = "CHURNLAB_TIMINGS"


def process_start() -> float | None:
    """When this process started (seconds since the epoch, to 10 ms), or None off Linux."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5)
    return time.time() - (uptime - started_after_boot)


class PhaseClock:
    """Marks of one stage's phases, in the order they happen."""

    def __init__(self, stage: str):
        self.stage = stage
        self.marks: dict[str, float] = {}
        self.enabled = bool(os.environ.get(TIMINGS_ENV))
        if self.enabled:
            started = process_start()
            if started is not None:
                self.marks["process start"] = started

    def mark(self, phase: str) -> None:
        if self.enabled:
            self.marks[phase] = time.time()

    def write(self) -> None:
        """Append the marks to the ``CHURNLAB_TIMINGS`` file (one line, one write)."""
        if self.enabled:
            line = json.dumps({"stage": self.stage, "marks": self.marks}) + "\n"
            with open(os.environ[TIMINGS_ENV], "a", encoding="utf-8") as file:
                file.write(line)
