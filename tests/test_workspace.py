"""The project copy the tests and the benchmark run in: what git sees, committed."""

import subprocess
from pathlib import Path

from churnlab.pipeline.workspace import commit_all, copy_project

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def test_a_copy_holds_what_git_sees_as_it_is_in_the_work_tree(tmp_path):
    source = tmp_path / "source"
    (source / "src").mkdir(parents=True)
    (source / ".gitignore").write_text("*.log\n")
    (source / "src" / "kept.py").write_text("committed\n")
    (source / "gone.txt").write_text("deleted after the commit\n")
    git(source, "init", "-q")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "start")
    (source / "src" / "kept.py").write_text("changed, not committed\n")
    (source / "new.txt").write_text("untracked\n")
    (source / "run.log").write_text("ignored\n")
    (source / "gone.txt").unlink()

    target = copy_project(source, tmp_path / "copy")

    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == [".gitignore", "new.txt", "src/kept.py"]
    assert (target / "src" / "kept.py").read_text() == "changed, not committed\n"


def test_commit_all_leaves_a_clean_repository_without_the_excluded_files(tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "customers.csv").write_text("id\n1\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")

    commit_all(tmp_path, author="bench", message="a copy", exclude=("/big/",))

    assert git(tmp_path, "ls-files").split() == ["params.yaml"]
    assert git(tmp_path, "status", "--porcelain") == ""
    assert git(tmp_path, "log", "--format=%an %s") == "bench a copy\n"
