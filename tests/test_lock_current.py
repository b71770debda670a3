"""The committed ``dvc.lock`` records the code and params that are committed with it.

A change to a stage's code or params without a re-run leaves ``dvc.lock`` stale: a fresh clone
then sees every stage as changed, and the end-to-end test fails only after the whole pipeline
has run. This test finds it in a second: every dep that git tracks must have, in ``dvc.lock``,
the hash DVC gives its current content (a file's MD5; a folder's MD5 of its listing, the way
DVC 3 computes it, ``__pycache__`` left out as ``.dvcignore`` says).
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from churnlab.config import read_yaml

from conftest import ROOT

LOCK = read_yaml(ROOT / "dvc.lock")["stages"]
TRACKED = set(
    subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
)


def file_md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def folder_md5(folder) -> str:
    entries = [
        {"md5": file_md5(path), "relpath": path.relative_to(folder).as_posix()}
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.relative_to(folder).parts
    ]
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing).hexdigest() + ".dir"


def tracked_deps():
    for stage, entry in LOCK.items():
        for dep in entry.get("deps", []):
            path = dep["path"]
            if path in TRACKED or any(t.startswith(path.rstrip("/") + "/") for t in TRACKED):
                yield pytest.param(stage, dep, id=f"{stage}:{path}")


@pytest.mark.parametrize(("stage", "dep"), list(tracked_deps()))
def test_dvc_lock_holds_the_committed_hash_of_every_tracked_dep(stage, dep):
    path = ROOT / dep["path"]
    actual = folder_md5(path) if path.is_dir() else file_md5(path)
    assert actual == dep["md5"], (
        f"dvc.lock is stale: stage {stage!r} recorded {dep['path']} as {dep['md5']}, "
        f"its content now hashes to {actual}. Re-run the pipeline from a fresh clone "
        f"(`dvc repro`) and commit dvc.lock with the change."
    )


def test_every_stage_has_tracked_deps_to_check():
    """The check above cannot pass by checking nothing."""
    checked = {param.values[0] for param in tracked_deps()}
    assert checked == set(LOCK)
