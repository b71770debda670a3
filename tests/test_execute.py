"""Running a stage: stable outputs, failures in one line, earlier outputs kept, secrets out.

Each run uses a tiny fixture notebook named for the behaviour it tests (``demo_stage``).
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from demo_stage import FIXTURES, make_project, outputs, unwritable, wait_until_the_cell_runs

from churnlab.errors import ChurnlabError
from churnlab.pipeline import execute
from churnlab.pipeline.execute import run_stage

from conftest import ROOT, free_port, run, tool_env


def test_a_good_run_writes_stable_outputs_and_a_script_free_report(tmp_path):
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    first = outputs(root)
    assert first["out/result.txt"] == b"line 0\nline 1\n"
    executed = json.loads(first["reports/demo.ipynb"])
    text = first["reports/demo.ipynb"].decode()
    assert "start_time" not in text and "duration" not in text
    assert executed["metadata"]["papermill"]["parameters"] == {
        "paths_result": "out/result.txt",
        "demo_n": 2,
    }
    html = first["reports/demo.html"].decode()
    assert "wrote 2 lines" in html
    assert "<script" not in html.lower()
    assert "Path(paths_result)" not in html  # no code cells
    assert "demo_n = 2" not in html  # no parameters cell
    run_stage("demo", root=root, progress=False)
    assert outputs(root) == first  # same inputs, same bytes


def test_the_kernel_is_warmed_with_the_notebooks_imports_and_its_namespace_stays_fresh(tmp_path):
    """The runner starts the kernel first and has it import the notebook's modules silently:
    the first cell finds them imported, but no name bound, no execution counted."""
    root = make_project(tmp_path, "warm.py")
    run_stage("demo", root=root, progress=False)
    executed = json.loads((root / "reports" / "demo.ipynb").read_text())
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    printed = "".join("".join(o.get("text", [])) for c in code for o in c["outputs"])
    assert "colorsys warmed: True" in printed  # imported only by a later cell of the notebook
    assert "sklearn.metrics warmed: True" in printed  # a WARM_UP of a module it imports
    names = set(eval(printed.split("names: ", 1)[1].splitlines()[0]))  # the printed list
    ipython = {"In", "Out", "exit", "quit", "get_ipython", "open"}
    assert names == ipython | {"paths_result", "demo_n", "sys"}


def test_a_store_found_unreachable_while_the_notebook_runs_stops_it_at_once(tmp_path):
    """Tracking opens in the background while the notebook runs; when the store turns out
    to be unreachable the notebook is stopped then, not run to its end for nothing."""
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    shutil.copy(FIXTURES / "slow.py", root / "notebooks" / "demo.py")
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 60\n")
    uri = f"http://127.0.0.1:{free_port()}"
    settings = yaml.safe_load((ROOT / "params" / "tracking.yaml").read_text())
    settings["tracking"].update(uri=uri, register_stage="demo")
    (root / "params" / "tracking.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ChurnlabError, match=f"MLflow tracking store {uri} cannot be reached"):
        run_stage("demo", root=root, progress=False)
    assert not (root / "out" / "finished").exists()  # stopped in its sleep, not waited for
    assert outputs(root) == good


def test_a_failing_cell_names_notebook_cell_and_error_and_keeps_earlier_outputs(tmp_path):
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    shutil.copy(FIXTURES / "broken.py", root / "notebooks" / "demo.py")
    with pytest.raises(ChurnlabError) as error:
        run_stage("demo", root=root, progress=False)
    message = str(error.value)
    assert message.startswith("notebooks/demo.py: cell In [4] failed")
    assert "ValueError: demo_n=2 is not allowed" in message
    kept = root / ".churnlab" / "failed" / "demo.ipynb"
    assert str(kept) in message and "ValueError" in kept.read_text()
    assert outputs(root) == good  # the half result did not replace the good one
    assert not (root / ".churnlab" / "backup" / "demo").exists()


def test_a_failing_first_run_leaves_no_half_result(tmp_path):
    root = make_project(tmp_path, "broken.py")
    with pytest.raises(ChurnlabError, match=r"cell In \[4\] failed"):
        run_stage("demo", root=root, progress=False)
    assert not (root / "out" / "result.txt").exists()


def test_a_missing_kernel_says_to_run_setup_and_keeps_earlier_outputs(tmp_path, monkeypatch):
    """jupyter_client's own NoSuchKernel, raised when papermill starts the kernel, becomes
    one line that says what to do."""
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    monkeypatch.setattr(execute, "KERNEL_NAME", "churnlab-not-installed")
    with pytest.raises(ChurnlabError) as error:
        run_stage("demo", root=root, progress=False)
    assert str(error.value) == (
        "no Jupyter kernel named 'churnlab-not-installed': run `make setup` to install it"
    )
    assert outputs(root) == good


def secret_project(root: Path, fail: bool) -> Path:
    make_project(root, "secret.py")
    dvc_yaml = (root / "dvc.yaml").read_text()
    (root / "dvc.yaml").write_text(
        dvc_yaml.replace("- demo.n", "- demo.n\n          - demo.api_token")
    )
    (root / "params" / "demo.yaml").write_text(
        f"demo:\n  n: {0 if fail else 2}\n  api_token: canary-param-5f1e0c\n"
    )
    return root


def written_text(root: Path) -> str:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".ipynb", ".html")]
    assert files
    return "\n".join(p.read_text() for p in files)


def test_no_secret_from_params_or_environment_reaches_a_notebook_or_report(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNLAB_CANARY_TOKEN", "canary-env-93b7aa")
    root = secret_project(tmp_path, fail=False)
    run_stage("demo", root=root)
    text = written_text(root / "reports")
    assert "canary-param-5f1e0c" not in text and "canary-env-93b7aa" not in text
    assert text.count("***") >= 3  # parameter cell, printed param, printed variable


def test_a_failing_run_keeps_secrets_out_of_its_message_and_kept_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNLAB_CANARY_TOKEN", "canary-env-93b7aa")
    root = secret_project(tmp_path, fail=True)
    with pytest.raises(ChurnlabError) as failure:
        run_stage("demo", root=root)
    assert "cannot log in with ***" in str(failure.value)
    assert "canary-param-5f1e0c" not in str(failure.value)
    text = written_text(root / ".churnlab")
    assert "canary-param-5f1e0c" not in text and "canary-env-93b7aa" not in text


# --- failures outside the notebook: one line, the earlier outputs kept ----------------------


def churnlab_run(root: Path, **kwargs) -> subprocess.CompletedProcess:
    return run(["churnlab", "run", "demo"], root, check=False, **kwargs)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("churnlab: error:")]


def leftovers(root: Path) -> list[str]:
    """What a run must not leave: a running notebook, half-written temporary files."""
    running = [p.name for p in (root / ".churnlab" / "running").glob("*")]
    temporary = [p.name for p in root.rglob(".demo.*")] + [p.name for p in root.rglob(".result.*")]
    return running + temporary


@pytest.mark.parametrize(
    ("target", "named"),
    [("reports", "reports"), ("reports/demo.html", "reports/demo.html")],
    ids=["folder", "file"],
)
def test_an_unwritable_output_is_one_line_and_keeps_every_output(tmp_path, target, named):
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    with unwritable(root / target):
        result = churnlab_run(root)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        line for line in result.stderr.splitlines() if line.startswith(f"churnlab: error: {named}:")
    ]
    assert len(error_lines(result.stderr)) == 1 and "run again" in result.stderr
    assert outputs(root) == good  # out/result.txt too, although it could be moved aside
    assert leftovers(root) == [] and not list((root / ".churnlab" / "backup").rglob("*.*"))


def test_an_unwritable_reports_folder_stops_a_first_run_before_the_notebook(tmp_path):
    root = make_project(tmp_path, "ok.py")
    (root / "reports").mkdir()
    with unwritable(root / "reports"):
        result = churnlab_run(root)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "churnlab: error: reports: not writable by this process; expected a file or folder "
        "this user may write; make it writable (`chmod u+w`, change its owner, or `chattr -i` "
        "when `lsattr` shows it immutable) and run again"
    ]
    assert not (root / "out").exists()  # the notebook did not run


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system (tmpfs) at ``tmp_path / "disk"``: a real full disk, for root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_keeps_every_output(small_disk):
    root = make_project(small_disk / "project", "large_output.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    free_kb = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize // 1024
    # the notebook's own write fits; the HTML page (about 270 kB) written after it does not
    (root / "params" / "demo.yaml").write_text(f"demo:\n  n: {free_kb - 64}\n")
    result = churnlab_run(root)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert line.startswith("churnlab: error: ") and "No space left on device" in line
    assert "free space there" in line
    assert outputs(root) == good
    assert leftovers(root) == []


def test_a_killed_run_leaves_nothing_once_the_next_run_fails(tmp_path):
    root, good, process = start_a_slow_run(tmp_path, stderr=subprocess.DEVNULL)
    process.kill()
    process.wait(30)
    assert list((root / ".churnlab" / "running").glob("*.ipynb"))  # what a killed run leaves
    shutil.copy(FIXTURES / "broken.py", root / "notebooks" / "demo.py")
    result = churnlab_run(root)
    assert result.returncode == 1 and len(error_lines(result.stderr)) == 1
    assert outputs(root) == good  # put back from the killed run's backup
    assert leftovers(root) == []


def start_a_slow_run(tmp_path: Path, stderr) -> tuple[Path, dict, subprocess.Popen]:
    """A stage with good outputs, then `churnlab run` of a slow cell, waited for until the
    cell has written half a result: the project, its good outputs, the running process."""
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    shutil.copy(FIXTURES / "slow.py", root / "notebooks" / "demo.py")
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 60\n")
    process = subprocess.Popen(
        ["churnlab", "run", "demo"], cwd=root, env=tool_env(), stderr=stderr, text=True
    )
    wait_until_the_cell_runs(root, process)
    return root, good, process


def processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is ``folder`` (a notebook's kernel runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to see
            pass
    return found


def test_ctrl_c_restores_outputs_stops_the_kernel_and_says_one_line(tmp_path):
    root, good, process = start_a_slow_run(tmp_path, stderr=subprocess.PIPE)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "churnlab: interrupted: earlier outputs restored"
    assert outputs(root) == good
    assert leftovers(root) == []
    deadline = time.monotonic() + 30  # a loaded machine is slow to reap; one that never exits fails
    while processes_in(root.resolve()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(root.resolve()) == [], "the kernel outlived the run"


# --- stage commands run however dvc is started ----------------------------------------------


BARE_PATH = "/usr/local/bin:/usr/bin:/bin"  # a shell with no environment activated


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]


def launcher_project(root: Path, with_venv: bool) -> Path:
    """The demo project calling the project's ``bin/churnlab``, as a clone would hold it."""
    make_project(root, "ok.py")
    dvc_yaml = (root / "dvc.yaml").read_text()
    (root / "dvc.yaml").write_text(dvc_yaml.replace("cmd: churnlab", "cmd: bin/churnlab"))
    (root / "bin").mkdir()
    shutil.copy2(ROOT / "bin" / "churnlab", root / "bin" / "churnlab")
    if with_venv:  # `make setup` made it; here the work tree's own stands in for it
        (root / ".venv").symlink_to(ROOT / ".venv")
    (root / ".gitignore").write_text("/.venv\n/.churnlab/\n")
    return root


def bare(cmd: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(cmd, root, check=check, path=BARE_PATH)


def test_the_readme_experiment_runs_with_only_venv_dvc_and_leaves_a_consistent_tree(tmp_path):
    root = launcher_project(tmp_path, with_venv=True)
    dvc = str(ROOT / ".venv" / "bin" / "dvc")
    assert shutil.which("churnlab", path=BARE_PATH) is None
    bare([*GIT, "init", "-q"], root)
    bare([dvc, "init", "-q"], root)
    bare([dvc, "repro", "-q"], root)
    bare([*GIT, "add", "-A"], root)
    bare([*GIT, "commit", "-q", "-m", "pipeline"], root)
    result = bare([dvc, "exp", "run", "-n", "three", "-S", "params/demo.yaml:demo.n=3"], root)
    assert "Ran experiment(s): three" in result.stdout
    assert (root / "out" / "result.txt").read_text() == "line 0\nline 1\nline 2\n"
    assert "up to date" in bare([dvc, "status"], root).stdout  # params, lock, outputs agree
    # the README's way back to the committed pipeline leaves nothing modified
    bare([*GIT, "checkout", "--", "params", "dvc.lock"], root)
    bare([dvc, "checkout", "-q"], root)
    assert bare([*GIT, "status", "--porcelain"], root).stdout == ""
    assert (root / "out" / "result.txt").read_text() == "line 0\nline 1\n"


def test_the_launcher_without_an_environment_says_what_to_do(tmp_path):
    root = launcher_project(tmp_path, with_venv=False)
    result = bare(["bin/churnlab", "run", "demo"], root, check=False)
    assert result.returncode == 127
    assert result.stderr.startswith("churnlab: error: .venv/bin/churnlab: not found")
    assert "make setup" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_every_stage_command_goes_through_the_launcher():
    from churnlab.config import read_yaml

    stages = read_yaml(ROOT / "dvc.yaml")["stages"]
    assert {name: body["cmd"].split()[0] for name, body in stages.items()} == {
        name: "bin/churnlab" for name in stages
    }
    guide = (ROOT / "docs" / "experiments.md").read_text()
    experiments = guide[guide.index("## Comparing experiments") :].split("```")[1]
    assert "dvc exp run" in experiments
    for line in filter(None, experiments.splitlines()):
        assert line.startswith((".venv/bin/dvc ", "git ", "make ")), line
