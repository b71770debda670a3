"""A copy of the project to run in: the tests' and the benchmark's working copies.

A copy holds the files git would see (tracked, and untracked but not ignored) as they are in
the work tree, so it runs the code being changed; DVC wants a git repository, so
:func:`commit_all` makes it one.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path


def copy_project(source_root: Path, target: Path) -> Path:
    """Copy the git-tracked and the untracked-but-not-ignored files of ``source_root``.

    Args:
        source_root: a project in a git work tree.
        target: the folder to copy into (created when missing; files there are overwritten).

    Returns:
        ``target``.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source_root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = source_root / name
        if source.is_file():  # a file deleted but not yet staged is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def commit_all(
    root: Path,
    author: str,
    message: str,
    env: Mapping[str, str] | None = None,
    exclude: tuple[str, ...] = (),
) -> None:
    """Make ``root`` a git repository with everything in it committed.

    Args:
        root: the folder (a project copy).
        author: the committer's name (its e-mail address is ``AUTHOR@example.invalid``).
        message: the commit message.
        env: the environment for git (default: this process's).
        exclude: patterns git should ignore in this copy only (``.git/info/exclude``).
    """
    # The user's git configuration must not reach a throw-away copy: no signing, no hooks.
    git = [
        "git",
        "-c",
        f"user.name={author}",
        "-c",
        f"user.email={author}@example.invalid",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "core.hooksPath=/dev/null",
    ]
    subprocess.run([*git, "init", "-q"], cwd=root, env=env, check=True)
    if exclude:
        (root / ".git" / "info").mkdir(parents=True, exist_ok=True)
        (root / ".git" / "info" / "exclude").write_text("".join(f"{p}\n" for p in exclude))
    subprocess.run([*git, "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=root, env=env, check=True)
