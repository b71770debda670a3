"""Writing files so that a reader never sees half of one, and so that bytes are stable."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only in signatures: the CLI's start-up does not pay for pandas
    import pandas as pd


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    Raises:
        OSError: naming ``path`` (not the temporary file), also when the disk is full.
    """
    write_atomic_all({Path(path): data})


def write_atomic_all(files: Mapping[Path, bytes]) -> None:
    """Write several files, each through a temporary file in its folder.

    Every temporary file is complete before the first file is replaced, so a full disk or
    a folder that cannot be written replaces none of them.

    Raises:
        OSError: naming the file that could not be written (not its temporary file).
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                staged.append((tmp, path))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(tmp, 0o644)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


# What to do about the operating system's refusals a person can fix, by errno.
_NOT_WRITABLE = (
    "expected a file or folder this user may write; make it writable (`chmod u+w`, change "
    "its owner, or `chattr -i` when `lsattr` shows it immutable) and run again"
)
_FIXES = {
    errno.EACCES: _NOT_WRITABLE,
    errno.EPERM: _NOT_WRITABLE,
    errno.EROFS: "expected a writable file system; remount it read-write or move the "
    "project, and run again",
    errno.ENOSPC: "the disk that holds it is full; free space there (`df -h` shows how much "
    "is left) and run again",
    errno.EDQUOT: "your disk quota is used up; free space (or raise the quota) and run again",
    errno.EFBIG: "the file system does not take a file this large; move the project to "
    "another disk and run again",
}


def os_error_message(exc: OSError, root: Path | None = None) -> str:
    """One line for an ``OSError``: the path (relative to ``root``), what failed, what to do."""
    what = " ".join((exc.strerror or str(exc) or type(exc).__name__).split())
    fix = _FIXES.get(exc.errno)
    line = f"{what}; {fix}" if fix else what
    if exc.filename is None:
        return line
    where = str(exc.filename)
    if root is not None:
        try:
            where = Path(exc.filename).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return f"{where}: {line}"


def write_json(path: Path, content: Any) -> None:
    """Pretty, key-sorted JSON with a final newline."""
    write_atomic(path, (json.dumps(content, indent=2, sort_keys=True) + "\n").encode())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv(index=False, lineterminator="\n").encode())


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
