"""A one-stage demo project on a fixture notebook: what the tests of a stage run share.

Each notebook in ``fixtures/`` is named for the one behaviour it shows (``broken.py``,
``no_parameters.py``); :func:`make_project` puts one behind the stage ``demo``.
"""

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

DVC_YAML = """
vars:
  - params/paths.yaml
stages:
  demo:
    cmd: churnlab run demo
    deps:
      - notebooks/demo.py
    params:
      - params/paths.yaml:
          - paths.result
      - params/demo.yaml:
          - demo.n
    outs:
      - ${paths.result}:
          persist: true
      - ${paths.reports}/demo.ipynb:
          persist: true
      - ${paths.reports}/demo.html:
          persist: true
"""


def make_project(root: Path, notebook: str) -> Path:
    (root / "params").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params" / "paths.yaml").write_text(
        "paths:\n  result: out/result.txt\n  reports: reports\n"
    )
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 2\n")
    shutil.copy(FIXTURES / notebook, root / "notebooks" / "demo.py")
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {
        name: (root / name).read_bytes()
        for name in ("out/result.txt", "reports/demo.ipynb", "reports/demo.html")
    }


@contextlib.contextmanager
def unwritable(path: Path):
    """``path`` made unwritable for this process: read-only, and immutable when we are root
    (whom file modes do not stop)."""
    mode = path.stat().st_mode
    path.chmod(mode & ~0o222)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        path.chmod(mode)
        pytest.skip(f"cannot make {path} immutable (chattr) on this file system")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def wait_until_the_cell_runs(root: Path, process: subprocess.Popen) -> None:
    result = root / "out" / "result.txt"
    deadline = time.monotonic() + 60
    while not (result.exists() and result.read_text() == "half a result\n"):
        assert process.poll() is None and time.monotonic() < deadline, "the cell never ran"
        time.sleep(0.1)
