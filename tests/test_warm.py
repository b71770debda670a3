"""The warm interpreter (churnlab.pipeline.warm): stage commands and kernels forked from it
behave as the ones started cold, and nothing is left when a run is stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from demo_stage import FIXTURES, make_project, outputs, wait_until_the_cell_runs

from churnlab.pipeline import warm

from conftest import tool_env

FAKE_DVC = """#!/usr/bin/env python3
# stands in for `dvc` (a process named dvc, the stage command its child), as DVC runs one
import subprocess, sys
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"""


def _under_dvc(tmp_path: Path) -> list[str]:
    fake = tmp_path / "fake" / "dvc"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(FAKE_DVC)
    return [sys.executable, str(fake)]


def _environ(**changes) -> dict[str, str]:
    """The tests' environment, marked as this test's own: its own warm interpreter (they are
    shared by environment, and the other test worker's must not count here)."""
    environ = {**tool_env(), warm.IDLE_VARIABLE: "60", "WARM_TEST_OWN": uuid.uuid4().hex}
    environ.pop(warm.SWITCH, None)
    return {**environ, **changes}


def _start_warm(root: Path, environ: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    path = warm.socket_path(environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "churnlab.pipeline.warm_server", str(root.resolve()), str(path)],
        cwd=root,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, "no warm interpreter"
        time.sleep(0.05)
    return process, path


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(10)


FINGERPRINT = (
    # what a stage's kernel has imported by its first cell (the notebooks' modules, warmed)
    "".join(f"import {name}\n" for name in warm.KERNEL_MODULES)
    + "[__import__(m) for n in list(__import__('sys').modules) "
    + "for m in getattr(__import__('sys').modules[n], 'WARM_UP', ())]\n"
    + r"""
import json as _json, os as _os, sys as _sys, warnings as _warnings
import numpy as _np, pandas as _pd, matplotlib as _mpl, matplotlib.pyplot as _plt
import threadpoolctl as _tpc
print(_json.dumps({
    "path": _sys.path,
    "argv": [_os.path.basename(a) for a in _sys.argv if not a.endswith(".json")],
    "cwd": _os.getcwd(),
    "env": dict(_os.environ),
    "umask": _os.umask(0o022),
    "pandas": {k: repr(_pd.get_option(k)) for k in _pd._config.config._registered_options},
    "rc": {k: repr(v) for k, v in _mpl.rcParams.items()},
    "backend": _mpl.get_backend(),
    "numpy": repr(_np.get_printoptions()),
    "warnings": [[f[0], repr(f[1]), f[2].__module__ + "." + f[2].__qualname__, f[3]]
                 for f in _warnings.filters],
    "packages": sorted({name.split(".")[0] for name in _sys.modules}),
    "threads": sorted((i["user_api"], i["num_threads"]) for i in _tpc.threadpool_info()),
    "main": _sys.modules["__main__"].__name__,
    "parent": __import__("ipykernel.kernelapp").kernelapp.IPKernelApp.instance().parent_handle,
}, sort_keys=True))
"""
)
SHOWN = """
import numpy as np, pandas as pd, matplotlib.pyplot as plt
display(pd.DataFrame(np.arange(90).reshape(3, 30)))
plt.plot([1, 3, 2]); plt.show()
"""


def _kernel_says(cwd: Path, environ: dict[str, str], warm_socket: Path | None) -> list[dict]:
    """Start the project's kernel (cold, or from the warm interpreter), run the fingerprint
    and a cell that shows a table and a figure; the outputs, as papermill would store them."""
    from jupyter_client.manager import KernelManager

    from churnlab.pipeline.forked import ForkedProcess, use_warm_kernel

    manager = KernelManager(kernel_name="churnlab")
    if warm_socket is not None:
        use_warm_kernel(manager, warm_socket)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        manager.start_kernel(cwd=str(cwd))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    forked = isinstance(manager.provisioner.process, ForkedProcess)
    assert forked == (warm_socket is not None)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        said = []
        for code in (FINGERPRINT, SHOWN):
            outs: list = []
            client.execute_interactive(
                code, timeout=60, output_hook=lambda m, outs=outs: outs.append(m)
            )
            said.append([(m["msg_type"], m["content"]) for m in outs if m["msg_type"] != "status"])
        return said
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        assert not manager.is_alive()


def _same_warnings(cold: dict, hot: dict) -> None:
    """The same warnings filters, in effect: the cold kernel's all there, each category's in
    the same order; more only for categories of packages the cold kernel never imported
    (requests, which papermill imports, adds its own when imported). The order across
    categories differs (the warm interpreter imported the packages before IPython set its
    own), which changes nothing: a warning meets only its own category's filters."""
    hot_filters = [tuple(f) for f in hot["warnings"]]
    cold_filters = [tuple(f) for f in cold["warnings"]]
    assert set(cold_filters) <= set(hot_filters)
    for extra in set(hot_filters) - set(cold_filters):
        assert extra[2].split(".")[0] not in cold["packages"], extra
    for category in {f[2] for f in cold_filters}:
        assert [f for f in hot_filters if f[2] == category] == [
            f for f in cold_filters if f[2] == category
        ], category


def test_a_kernel_from_the_warm_interpreter_is_the_kernel_a_cold_start_gives(tmp_path):
    """The same folder, path, arguments, environment, pandas options (display.max_columns
    is 20 in a kernel), matplotlib settings and backend (inline), warnings filters and thread
    pools; the same table and figure bytes. The register stage's kernel (one core left to
    its runner: OMP_NUM_THREADS=1) gets its one OpenMP thread from the warm one too."""
    root = make_project(tmp_path / "project", "ok.py")
    environ = _environ()
    process, path = _start_warm(root, environ)
    try:
        for changes in ({}, {"OMP_NUM_THREADS": "1"}):
            kernel_env = {**environ, **changes}
            cold = _kernel_says(root / "notebooks", kernel_env, None)
            hot = _kernel_says(root / "notebooks", kernel_env, path)
            cold_print, hot_print = (
                json.loads(next(c["text"] for kind, c in said[0] if kind == "stream"))
                for said in (cold, hot)
            )
            for key in set(cold_print) - {"warnings", "packages"}:
                assert hot_print[key] == cold_print[key], key
            _same_warnings(cold_print, hot_print)
            assert cold_print["backend"] == "module://matplotlib_inline.backend_inline"
            assert cold_print["pandas"]["display.max_columns"] == "20"
            assert hot[1] == cold[1]  # the table's text and HTML, the figure's PNG
            assert [kind for kind, _ in hot[1]] == ["execute_input", "display_data", "display_data"]
    finally:
        _stop(process)


def _slow_project(tmp_path: Path) -> tuple[Path, dict]:
    root = make_project(tmp_path / "project", "ok.py")
    subprocess.run(["churnlab", "run", "demo"], cwd=root, env=tool_env(), check=True)
    good = outputs(root)
    shutil.copy(FIXTURES / "slow.py", root / "notebooks" / "demo.py")
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 60\n")
    return root, good


@pytest.mark.parametrize("stop", ["ctrl-c", "kill"])
def test_a_stage_run_by_the_warm_interpreter_stops_cleanly(tmp_path, stop):
    """Under dvc the stage command hands its run to the warm interpreter: the stage's
    process and its kernel are the warm interpreter's children. Ctrl-C on the command reaches
    the stage (exit 130, earlier outputs restored); a command killed outright leaves a stage
    that stops on its own, the same way. Either way no process of the run is left."""
    root, good = _slow_project(tmp_path)
    environ = _environ()
    server, _ = _start_warm(root, environ)
    try:
        command = subprocess.Popen(
            [*_under_dvc(tmp_path), "churnlab", "run", "demo"],
            cwd=root,
            env=environ,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until_the_cell_runs(root, command)
        stage = psutil.Process(server.pid).children()
        assert len(stage) == 2  # the stage's process and its kernel, both forked
        client = psutil.Process(command.pid).children()[0]  # the `churnlab` under `dvc`
        if stop == "ctrl-c":
            client.send_signal(signal.SIGINT)
            _, stderr = command.communicate(timeout=30)
            assert command.returncode == 130, stderr
            assert stderr.strip().splitlines()[-1] == (
                "churnlab: interrupted: earlier outputs restored"
            )
        else:
            client.kill()
            command.wait(30)
        gone, alive = psutil.wait_procs(stage, timeout=30)
        assert alive == []
        assert outputs(root) == good
        assert not (root / "out" / "finished").exists()
        assert server.poll() is None  # still waiting for the next command
    finally:
        _stop(server)


def test_a_stage_command_run_warm_says_and_exits_as_one_run_cold(tmp_path):
    """The same outputs, exit status and messages: a good run, then a stage that does not
    exist (one line, exit 1). The first command, with no warm interpreter waiting, runs
    cold and starts one; it exits once idle."""
    root = make_project(tmp_path / "project", "ok.py")
    dvc = _under_dvc(tmp_path)
    environ = _environ(**{warm.IDLE_VARIABLE: "3"})
    path = warm.socket_path(environ)
    said = {}
    for how in ("cold", "warm"):
        if how == "warm":
            deadline = time.monotonic() + 60
            while not path.exists():  # the cold run started it
                assert time.monotonic() < deadline, "the first command started none"
                time.sleep(0.1)
        done = subprocess.run(
            [*dvc, "churnlab", "run", "demo"], cwd=root, env=environ, capture_output=True, text=True
        )
        bad = subprocess.run(
            [*dvc, "churnlab", "run", "nodemo"],
            cwd=root,
            env=environ,
            capture_output=True,
            text=True,
        )
        timed = re.sub(r"done in [0-9.]+ s", "done in N s", done.stderr)
        said[how] = (done.returncode, done.stdout, timed, outputs(root), bad.returncode)
        said[how] += (bad.stdout, bad.stderr)
    assert said["warm"] == said["cold"]
    assert said["cold"][0] == 0 and said["cold"][4] == 1
    assert said["cold"][6].splitlines()[-1].startswith("churnlab: error: dvc.yaml: no stage")
    deadline = time.monotonic() + 30
    while path.exists():  # idle for 3 s: gone
        assert time.monotonic() < deadline, "the warm interpreter did not exit when idle"
        time.sleep(0.2)


def test_off_and_outside_dvc_no_warm_interpreter_starts(tmp_path):
    root = make_project(tmp_path / "project", "ok.py")
    for cmd, environ in (
        (["churnlab", "run", "demo"], _environ()),
        ([*_under_dvc(tmp_path), "churnlab", "run", "demo"], _environ(**{warm.SWITCH: "off"})),
    ):
        subprocess.run(cmd, cwd=root, env=environ, check=True, capture_output=True)
        time.sleep(0.5)
        assert not warm.socket_path(environ).exists()
        assert not warm.socket_path(environ).with_suffix(".starting").exists()


def test_a_socket_folder_others_may_enter_is_never_used(tmp_path):
    """The sockets' folders must be this user's alone (the requests carry environments and
    params): found open to others, the warm interpreter is not used (the command runs cold)
    and the tracking service refuses with one line naming the folder; made afresh, each is
    private."""
    script = (
        "from pathlib import Path\n"
        "from churnlab.errors import ChurnlabError\n"
        "from churnlab.pipeline import warm\n"
        "from churnlab.tracking import service\n"
        "print(warm.socket_path())\n"
        "try:\n"
        "    print(service.socket_path(Path('.'), 'sqlite:///x'))\n"
        "except ChurnlabError as exc:\n"
        "    print(exc)\n"
    )
    uid = os.getuid()
    for state in ("open", "fresh"):
        temporary = tmp_path / state
        temporary.mkdir()
        if state == "open":
            for name in ("churnlab-warm", "churnlab-tracking"):
                (temporary / f"{name}-{uid}").mkdir(mode=0o755)
                (temporary / f"{name}-{uid}").chmod(0o755)
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "TMPDIR": str(temporary)},
            capture_output=True,
            text=True,
            check=True,
        )
        warm_path, tracking = done.stdout.splitlines()
        if state == "open":
            assert warm_path == f"{temporary}/churnlab-warm-{uid}/refused"
            assert tracking.startswith(f"{temporary}/churnlab-tracking-{uid}: expected a folder")
        else:
            for line in (warm_path, tracking):
                folder = Path(line).parent
                assert line.endswith(".sock") and folder.parent == temporary
                assert folder.stat().st_mode & 0o777 == 0o700
