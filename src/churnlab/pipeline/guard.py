"""A stage's earlier outputs, kept until its run has fully succeeded.

Before a run, :class:`OutputGuard` moves the stage's outputs aside (under
``.churnlab/backup/STAGE``); when the run fails, is interrupted or cannot be recorded, the
half-results go and the earlier outputs come back. A run killed outright leaves its backup,
and the next run puts it back first.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from churnlab.files import write_atomic

WORK_DIR = ".churnlab"


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half of it)."""
    write_atomic(path, text.encode())


def check_writable(root: Path, outs: list[str]) -> None:
    """Fail before a run, not after it, when a stage could not write its outputs.

    Raises:
        PermissionError: naming the first folder (the output's own, or its nearest existing
            parent) that this process may not write.
    """
    for out in outs:
        folder = (root / out).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable by this process", str(folder))


class OutputGuard:
    """Moves a stage's existing outputs aside and puts them back unless the run succeeds."""

    def __init__(self, root: Path, stage: str, outs: list[str]):
        self.root = root
        self.outs = outs
        self.backup = root / WORK_DIR / "backup" / stage

    def __enter__(self):
        if self.backup.exists():  # a run killed earlier: its saved outputs come back first
            self._restore()
        check_writable(self.root, self.outs)
        try:
            for out in self.outs:
                source = self.root / out
                if source.exists():
                    target = self.backup / out
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
        except BaseException:  # one output cannot move (immutable): the others come back
            self._restore()
            raise
        return self

    def _restore(self):
        for out in self.outs:
            saved = self.backup / out
            if saved.exists():
                current = self.root / out
                if current.is_dir():
                    shutil.rmtree(current)
                elif current.exists():
                    current.unlink()
                current.parent.mkdir(parents=True, exist_ok=True)
                os.replace(saved, current)
        shutil.rmtree(self.backup, ignore_errors=True)

    def __exit__(self, kind, value, tb):
        if kind is None:
            shutil.rmtree(self.backup, ignore_errors=True)
        else:
            for out in self.outs:  # half-results of the failed run go
                current = self.root / out
                if current.is_dir():
                    shutil.rmtree(current)
                elif current.exists():
                    current.unlink()
            self._restore()
        return False
