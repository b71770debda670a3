"""Write deploy/requirements-serving.txt: the serving image's dependencies, pinned by the lock.

The image holds only what `churnlab serve` needs (no JupyterLab, DVC, papermill or MLflow):
the packages in SERVING_ROOTS and everything they require, each at exactly its version in
requirements.lock. What a package requires is read from its installed metadata (the project's
.venv is synced from the same lock), with environment markers evaluated for Python 3.11 on
Linux and no extras. `make lock` runs this after re-locking; `make image` and
tests/test_manifests.py check (``--check``) that the committed file is current.

Usage: python tools/serving_requirements.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
OUTPUT = ROOT / "deploy" / "requirements-serving.txt"

# What the service imports: the web stack, the model and its loader, and the data/params code
# of churnlab it shares with the pipeline (pandera validates tables). Not pyarrow: the service
# reads no Parquet, and at 150 MB it alone would take the image over its 600 MB budget.
SERVING_ROOTS = (
    "fastapi",
    "uvicorn",
    "pydantic",
    "prometheus-client",
    "scikit-learn",
    "skops",
    "pandas",
    "numpy",
    "scipy",
    "pyyaml",
    "pandera",
)
HEADER = (
    "# The serving image's dependencies: tools/serving_requirements.py writes this from\n"
    "# requirements.lock (same versions). Do not edit by hand; `make lock` regenerates it.\n"
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def locked_versions(lock_text: str) -> dict[str, str]:
    """The version of every package pinned in a `uv pip compile` lock, by canonical name."""
    pins = (_PIN.match(line) for line in lock_text.splitlines())
    return {canonicalize_name(m[1]): m[2] for m in pins if m}


def installed_requires(name: str) -> list[str]:
    """The requirement strings in an installed distribution's metadata."""
    try:
        return distribution(name).requires or []
    except PackageNotFoundError:
        sys.exit(
            f"churnlab: error: .venv: {name}: expected installed (it is in requirements.lock), "
            "not found; run `make setup`"
        )


def closure(
    roots: Iterable[str], requires_of: Callable[[str], list[str]], python: str = "3.11"
) -> set[str]:
    """Every package the roots need at run time, without extras, on Linux with `python`."""
    environment = {"python_version": python, "sys_platform": "linux", "extra": ""}
    needed: set[str] = set()
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for text in requires_of(name):
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    return needed


def serving_requirements(lock_text: str, requires_of: Callable[[str], list[str]]) -> str:
    """The text of the serving requirements file: the closure of SERVING_ROOTS, pinned."""
    versions = locked_versions(lock_text)
    needed = closure(SERVING_ROOTS, requires_of)
    missing = sorted(needed - versions.keys())
    if missing:
        sys.exit(
            f"churnlab: error: requirements.lock: {', '.join(missing)}: expected pinned (serving "
            "needs them), not found; re-lock with `make lock`"
        )
    return HEADER + "".join(f"{name}=={versions[name]}\n" for name in sorted(needed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is not current")
    args = parser.parse_args()
    text = serving_requirements(LOCK.read_text(), installed_requires)
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.exit(
                f"churnlab: error: {OUTPUT.relative_to(ROOT)}: expected the serving closure of "
                "requirements.lock, found a different file; run "
                "`python tools/serving_requirements.py`"
            )
        return
    OUTPUT.write_text(text)
    print(f"{OUTPUT.relative_to(ROOT)}: {text.count('==')} packages")


if __name__ == "__main__":
    main()
