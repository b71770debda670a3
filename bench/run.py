"""Benchmark: the DVC pipeline against the same computation as plain function calls, and the
data scientist's loop (an experiment, tracking) against issue 10's targets.

For the default data (and, unless ``--quick``, for synthetic tables of ``--sizes`` customers
made by :func:`synth.generate_customers` (bench/synth.py)) the script

1. copies the project (git-tracked and untracked-but-not-ignored files) into a temporary
   folder, makes it a git repository and runs the full ``dvc repro`` there. Each stage's
   span comes from DVC's ``Running stage`` lines; inside a notebook stage, the runner's own
   phase marks (``CHURNLAB_TIMINGS``, :mod:`churnlab.pipeline.phases`) split it into its
   phases, measured in the real run;
2. runs the no-op ``dvc repro`` three times (median) beside ``dvc status`` (DVC's floor);
3. runs the four notebooks' own code cells, with the parameters the runner binds, in one
   fresh Python process, timed per stage (the physical limit: no kernel, no papermill, no
   DVC, imports paid once);

and on the default data only, in the same copy once its run is committed:

4. an evaluation-only and a training experiment (``dvc exp run -S ...`` then ``dvc exp
   show``), each from the committed state (median of ``--exp-repeats``);
5. the same stages with tracking on and off (``dvc repro --force``, ``tracking.enabled``);
6. a few parts on their own where they explain a phase: interpreter and CLI imports, the
   kernel's start and warm-up per notebook, ``dvc --version`` and ``dvc status``;

then prints the figures and writes them, with the machine they came from, to
``bench/RESULTS.md`` (or ``--output``). Run it with the project's Python (``make bench``)::

    .venv/bin/python bench/run.py                  # default data, 100k and 1M customers
    .venv/bin/python bench/run.py --quick          # default data only
    .venv/bin/python bench/run.py --sizes 100000   # default data and 100k customers
    .venv/bin/python bench/run.py --quick --output /tmp/bench.md   # a trial run

The project's own workspace is never touched: everything runs in temporary copies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from churnlab.pipeline.workspace import commit_all, copy_project

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (100_000, 1_000_000)
DEFAULT_SEED = 20240601
REPEATS = 3
SYNTH_DIR = "data/own"  # where a user's own table lives, versioned by `dvc add`
TIMINGS_ENV = "CHURNLAB_TIMINGS"  # churnlab.pipeline.phases.TIMINGS_ENV (kept in step by hand:
# the benchmark must still read an older runner's marks, and a newer one's)

# issue 10's targets
TARGET_REPRO_S = 30.0
TARGET_RATIO = 1.15
TARGET_RATIO_ROWS = 1_000_000
TARGET_NOOP_S = 1.0
TARGET_EXP_EVAL_S = 8.0
TARGET_EXP_TRAIN_S = 20.0
TARGET_TRACKING_S = 0.5
TARGET_REGISTRY_S = 2.0

# The two experiments: one param changed each, from the committed default run; label,
# setting, target, runs under --quick (the training one once: --quick stays a few minutes)
EXPERIMENTS = (
    ("evaluation only", "params/evaluate.yaml:evaluate.threshold_rule=cost", TARGET_EXP_EVAL_S, 3),
    (
        "training",
        "params/train.yaml:train.gradient_boosting.learning_rate=0.1",
        TARGET_EXP_TRAIN_S,
        1,
    ),
)
TRACKING_PARAMS = "params/tracking.yaml"

# The runner's marks this script names (it reads all marks generically, in the order given;
# a phase whose marks are missing is shown as "–").
FIRST_CELL = "first cell"
CELLS = ("first cell", "notebook done")
PAGE = ("notebook done", "page written")
TRACKING = ("page written", "recorded")
RUNNER_START_MARK = "runner start"
PHASE_NOTES = {
    ("process start", "runner start"): "interpreter start and the CLI's imports",
    ("runner start", "kernel started"): "launching the kernel and queueing its warm-up imports",
    ("kernel started", "params checked"): "checking params, reading and binding the notebook",
    ("params checked", "tracking started"): "starting the tracking thread (it opens the store "
    "and the stage's run while the notebook runs)",
    ("tracking started", "first cell"): "the output guard, papermill's set-up and waiting for "
    "the kernel's start and warm-up",
    ("first cell", "notebook done"): "the notebook's cells",
    ("notebook done", "page written"): "scrubbing and writing the executed notebook and page",
    ("page written", "recorded"): "tracking: waiting for the tracking thread, logging the "
    "stage, the model and the registry",
    ("recorded", "kernel stopped"): "stopping the kernel",
}
BEFORE_PROCESS = "DVC → process start"  # DVC's `Running stage` line to the process's start
AFTER_LAST = "→ DVC's next line"  # the last mark to DVC's next `Running stage` or the end

QUIET_SHARE = 0.1  # the machine counts as quiet below this share of all CPUs busy
QUIET_WINDOW_S = 5.0
DISTURBED_CORES = 0.1  # other processes using more than this many cores disturb a phase
WATCH_S = 5.0  # a watched command is ended when other processes use more than
WATCH_CORES = 0.3  # WATCH_CORES cores in WATCH_TIMES windows of WATCH_S seconds in a row
WATCH_TIMES = 2
MUTED_LINES = ("Kernel is running over TCP without encryption",)
VERSIONS = (
    "dvc",
    "mlflow",
    "papermill",
    "nbconvert",
    "nbclient",
    "jupytext",
    "ipykernel",
    "pandas",
    "scikit-learn",
    "pandera",
    "matplotlib",
)

STAGE_START = re.compile(r"^Running stage '([^']+)'")


class Disturbed(Exception):
    """A watched command was ended because other processes started to use the CPUs."""


@dataclass(frozen=True)
class Run:
    """One timed command: wall time, every output line with its time since the start, and
    the start in seconds since the epoch (to put the runner's marks beside the lines)."""

    wall: float
    lines: list[tuple[float, str]]
    started: float


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    """Print one progress line with the wall-clock time."""
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def bench_env(bin_dir: Path) -> dict[str, str]:
    """The environment for every command: the project's venv first, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def stream(
    command: list[str], cwd: Path, env: dict[str, str], echo: bool = True, watch: bool = False
) -> Run:
    """Run a command, timestamping each line of its merged stdout and stderr.

    Raises:
        Disturbed: ``watch`` is on and other processes loaded the CPUs (see :class:`Watchdog`).
        RuntimeError: a non-zero exit, with the last lines of output.
    """
    epoch = time.time()
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with (
        subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
        Watchdog(proc.pid, watch) as dog,
    ):
        assert proc.stdout is not None
        for text in proc.stdout:
            text = text.rstrip("\n")
            lines.append((time.perf_counter() - started, text))
            if echo and text.strip() and not any(m in text for m in MUTED_LINES):
                print(f"    {lines[-1][0]:7.1f} s | {text}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    if dog.fired:
        raise Disturbed(f"{' '.join(command)} ended after {wall:.0f} s: other processes")
    if proc.returncode != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}) in {cwd}:\n{tail}")
    return Run(wall, lines, epoch)


def wall_seconds(command: list[str], cwd: Path, env: dict[str, str], repeats: int) -> float:
    """Median wall time of a quiet command over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def import_seconds(
    python: str,
    modules: list[str],
    cwd: Path,
    env: dict[str, str],
    repeats: int,
    preload: tuple[str, ...] = (),
) -> float:
    """Median time to import ``modules`` in a fresh interpreter (start-up not counted),
    after ``preload`` was imported (not counted either)."""
    first = f"import {', '.join(preload)}; " if preload else ""
    code = (
        f"{first}import time; s = time.perf_counter(); "
        f"import {', '.join(modules)}; print(time.perf_counter() - s)"
    )
    times = [
        float(
            subprocess.run(
                [python, "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(times)


def cpu_busy_share(window: float) -> float:
    """The share of all CPUs that was busy (not idle or waiting) during ``window`` seconds."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total_before, idle_before = sample()
    time.sleep(window)
    total_after, idle_after = sample()
    elapsed = max(total_after - total_before, 1)
    return 1.0 - (idle_after - idle_before) / elapsed


def wait_until_quiet(max_wait: float) -> float:
    """Wait until other processes leave the CPUs (at most ``max_wait`` s); return the wait."""
    if not Path("/proc/stat").is_file():
        return 0.0
    started = time.perf_counter()
    told = False
    while (busy := cpu_busy_share(QUIET_WINDOW_S)) >= QUIET_SHARE:
        waited = time.perf_counter() - started
        if waited >= max_wait:
            log(f"the machine is still busy ({busy:.0%}) after {waited:.0f} s: measuring anyway")
            break
        if not told:
            log(f"other processes keep {busy:.0%} of the CPUs busy: waiting for a quiet machine")
            told = True
    return time.perf_counter() - started


def cpu_seconds() -> dict[int, tuple[int, float]]:
    """``{pid: (parent pid, CPU seconds of it and its waited-for children)}``, all processes."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    return table


def foreign_cpu(before: dict, after: dict) -> float:
    """CPU seconds that processes outside this benchmark's process tree used in between."""
    children: dict[int, list[int]] = {}
    for table in (before, after):
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
    ours, stack = {os.getpid()}, [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in ours:
                ours.add(child)
                stack.append(child)
    ours |= tracking_services("churnlab-bench-")  # the copies' services, warm interpreters
    return sum(
        cpu - before.get(pid, (0, 0.0))[1]
        for pid, (parent, cpu) in after.items()
        if pid not in ours and parent != 2 and pid != 2
    )


def tracking_services(root_part: str) -> set[int]:
    """The tracking services (``churnlab.tracking.service``) and warm interpreters
    (``churnlab.pipeline.warm``, with the stage processes and kernels they fork, which
    keep its command line) of projects whose path holds ``root_part``. Started by a
    stage, they outlive it (their parent is then init), but their work is the pipeline's."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            line = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        helper = b"churnlab.tracking.service" in line or b"churnlab.pipeline.warm" in line
        if helper and any(root_part.encode() in a for a in line):
            found.add(int(entry.name))
    return found


def timed_phase(action: Any, max_wait: float) -> tuple[Any, float, float]:
    """Wait for a quiet machine, run ``action()``; return its result, wall time and the
    average number of cores other processes used meanwhile (0 without ``/proc``)."""
    wait_until_quiet(max_wait)
    if not Path("/proc/stat").is_file():
        started = time.perf_counter()
        return action(), time.perf_counter() - started, 0.0
    before = cpu_seconds()
    started = time.perf_counter()
    result = action()
    wall = time.perf_counter() - started
    return result, wall, foreign_cpu(before, cpu_seconds()) / wall


def run_worker(
    kind: str,
    root: Path,
    out: Path,
    env: dict[str, str],
    watch: bool = False,
    repeats: int = REPEATS,
) -> dict:
    """Run one measurement in a fresh interpreter (this script with ``--worker``).

    Raises:
        Disturbed: ``watch`` is on and other processes loaded the CPUs.
        RuntimeError: the worker failed.
    """
    out.mkdir(parents=True, exist_ok=True)
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", kind, "--root", str(root), "--out", str(out)]
    command += ["--repeats", str(repeats)]
    with (
        subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True) as proc,
        Watchdog(proc.pid, watch) as dog,
    ):
        stdout, _ = proc.communicate()
    if dog.fired:
        raise Disturbed(f"worker {kind!r} ended: other processes")
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind!r} failed ({proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1])


def end_tree(pid: int) -> None:
    """Kill a process this script started and every process below it, by id."""
    table = cpu_seconds()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [pid], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    for victim in reversed(found):
        try:
            os.kill(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


class Watchdog:
    """Ends a command (its whole process tree) when other processes start to use the CPUs.

    Two runs competing for 2 cores slow each other down far more than twofold (the
    OpenMP threads of the gradient boosting spin), so a disturbed measurement is worthless
    and is better ended early and repeated on a quiet machine.
    """

    def __init__(self, pid: int, enabled: bool):
        self.pid = pid
        self.enabled = enabled and Path("/proc/stat").is_file()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        before, busy = cpu_seconds(), 0
        while not self._stop.wait(WATCH_S):
            after = cpu_seconds()
            busy = busy + 1 if foreign_cpu(before, after) / WATCH_S > WATCH_CORES else 0
            before = after
            if busy >= WATCH_TIMES:
                self.fired = True
                log("other processes are using the CPUs: ending this run to repeat it")
                end_tree(self.pid)
                return

    def __enter__(self) -> Watchdog:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


# --------------------------------------------------------------------------- the project copy


def point_data_at(root: Path, source: str) -> None:
    """Set ``data.source`` in the copy's ``params/data.yaml``; a user file has no digest."""
    import yaml

    path = root / "params" / "data.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["source"] = source
    params["data"]["sha256"] = None
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def write_customers(root: Path, template: Any, rows: int, seed: int) -> str:
    """Write ``rows`` synthetic customers as CSV into the copy; return the relative path."""
    import yaml
    from synth import generate_customers

    schema = yaml.safe_load((root / "params" / "data.yaml").read_text())["schema"]
    table = generate_customers(
        template, rows, seed, schema["id_column"], schema["target"], schema.get("numeric") or {}
    )
    relative = f"{SYNTH_DIR}/customers_{rows}.csv"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / relative, index=False, lineterminator="\n")
    return relative


# --------------------------------------------------------------------------- parsing a run


def read_marks(path: Path) -> dict[str, dict[str, float]]:
    """The runner's phase marks per stage from a ``CHURNLAB_TIMINGS`` file (the last line of a
    stage wins); empty when no stage wrote any."""
    marks: dict[str, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                marks[entry["stage"]] = dict(entry["marks"])
    return marks


def phase_segments(marks: dict[str, float], begin: float, end: float) -> list[list]:
    """A stage's span cut at its marks, in the order the runner gave them.

    Args:
        marks: phase name -> seconds since the epoch.
        begin: DVC's ``Running stage`` line, seconds since the epoch.
        end: DVC's next ``Running stage`` line (or the end of the run).

    Returns:
        ``[label, seconds]`` pairs that add up to ``end - begin``: DVC to the first mark,
        each mark to the next, the last mark to DVC's next line.
    """
    names = list(marks)
    segments = [
        [
            BEFORE_PROCESS if names[0] == "process start" else f"DVC → {names[0]}",
            marks[names[0]] - begin,
        ]
    ]
    segments += [
        [f"{a} → {b}", marks[b] - marks[a]] for a, b in zip(names, names[1:], strict=False)
    ]
    segments.append([f"{names[-1]} {AFTER_LAST}", end - marks[names[-1]]])
    return segments


def stage_spans(run: Run, marks: dict[str, dict[str, float]]) -> tuple[float, dict[str, dict]]:
    """Split a ``dvc repro`` (or ``dvc exp run``) run into DVC start-up and one span per stage.

    A stage's span runs from DVC's ``Running stage`` line to the next one (the last to the
    end of the run), so the spans and the start-up add up to the wall time. A stage with
    phase marks also gets ``marks`` (seconds since its ``Running stage`` line, in the order
    given) and ``segments`` (:func:`phase_segments`).
    """
    starts = [i for i, (_, text) in enumerate(run.lines) if STAGE_START.match(text)]
    if not starts:
        return run.wall, {}
    spans: dict[str, dict] = {}
    for number, first in enumerate(starts):
        last = starts[number + 1] if number + 1 < len(starts) else len(run.lines)
        begin = run.lines[first][0]
        end = run.lines[last][0] if last < len(run.lines) else run.wall
        name = STAGE_START.match(run.lines[first][1]).group(1)
        span: dict[str, Any] = {"span": end - begin}
        if marks.get(name):
            at = run.started + begin
            span["marks"] = {phase: t - at for phase, t in marks[name].items()}
            span["segments"] = phase_segments(marks[name], at, run.started + end)
        spans[name] = span
    return run.lines[starts[0]][0], spans


def between(span: dict, first: str, second: str) -> float | None:
    """Seconds from one mark to another within a stage, or None when either is missing."""
    marks = span.get("marks") or {}
    if first in marks and second in marks:
        return marks[second] - marks[first]
    return None


def runner_preparation(span: dict) -> tuple[float, float] | None:
    """``(preparation, wait)``: from the runner's start to its last mark before the first
    cell (its own work while the kernel starts), and from there to the first cell (the
    tracking run, papermill's set-up, and waiting for the kernel); None without marks."""
    marks = span.get("marks") or {}
    names = list(marks)
    if RUNNER_START_MARK not in marks or FIRST_CELL not in marks:
        return None
    before = names[names.index(FIRST_CELL) - 1]
    return marks[before] - marks[RUNNER_START_MARK], marks[FIRST_CELL] - marks[before]


def notebook_spans(result: dict) -> dict[str, dict]:
    """The stages of a run that have phase marks (the notebook stages)."""
    return {name: span for name, span in result["spans"].items() if "segments" in span}


# --------------------------------------------------------------------------- workers


def _render_open_figures() -> None:
    """Draw every open figure to PNG, as the inline backend does after a cell, and close it."""
    import io

    import matplotlib.pyplot as plt

    for number in plt.get_fignums():
        plt.figure(number).savefig(io.BytesIO(), format="png", bbox_inches="tight")
    plt.close("all")


def plain_fetch(root: Path, out: Path) -> dict:
    """The fetch stage: ``fetch_raw`` with the project's params (it checks the schema)."""
    from churnlab.config import get_key, load_params
    from churnlab.fetch import fetch_raw

    params = load_params(root)
    fetch_raw(
        get_key(params, "data.source", "data"),
        get_key(params, "data.sha256", "data"),
        out / get_key(params, "paths.raw", "paths"),
        root,
        schema=get_key(params, "schema", "data"),
    )
    return {}


def notebook_parameters(root: Path, name: str, out: Path) -> dict:
    """The parameters the runner passes to a stage's notebook, paths moved under ``out``."""
    from churnlab.pipeline.binding import bind_parameters, declared_parameters, read_notebook
    from churnlab.pipeline.stages import load_stage

    stage = load_stage(root, name)
    nb = read_notebook(root / stage.notebook)
    params = bind_parameters(stage, declared_parameters(nb, stage.notebook))
    return {
        key: str(out / value) if key.startswith("paths_") else value
        for key, value in params.items()
    }


def run_notebook_in_process(root: Path, name: str, parameters: dict) -> dict:
    """Run a stage's own notebook code in this process: the plain computation.

    The code cells of ``notebooks/*.py`` run in order in one fresh namespace, the bound
    parameters set right after the ``parameters`` cell (where papermill injects them), and
    the open figures drawn to PNG after each cell as the inline backend does. So the plain
    baseline is the notebooks' own code, not a copy of it.

    Returns:
        The notebook's namespace after the last cell.
    """
    import contextlib
    import io

    from IPython.display import display

    from churnlab.pipeline.binding import read_notebook
    from churnlab.pipeline.stages import load_stage

    nb = read_notebook(root / load_stage(root, name).notebook)
    namespace: dict[str, Any] = {"__name__": f"bench_{name}", "display": display}
    with contextlib.redirect_stdout(io.StringIO()):
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            exec(compile(cell.source, f"{name}.py", "exec"), namespace)  # noqa: S102
            if "parameters" in cell.metadata.get("tags", []):
                namespace.update(parameters)
            _render_open_figures()
    return namespace


def notebook_results(name: str, namespace: dict) -> dict:
    """What the benchmark compares with the pipeline's files, from a notebook's namespace."""
    if name == "prepare":
        return dict(namespace["summary"]["rows"])
    if name == "train":
        return {"cv_roc_auc_mean": namespace["cv_metrics"]["roc_auc_mean"]}
    if name == "evaluate":
        return {"roc_auc": namespace["metrics"]["roc_auc"]}
    return {}


def plain_pipeline(root: Path, out: Path) -> dict:
    """Every stage's computation in this one process, writing under ``out``; timed."""
    started = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import pandas  # noqa: F401
    import skops.io  # noqa: F401

    import churnlab.data
    import churnlab.evaluation
    import churnlab.explore
    import churnlab.fetch
    import churnlab.files
    import churnlab.model  # noqa: F401
    from churnlab.pipeline.stages import notebook_stages

    imported = time.perf_counter() - started
    stages = notebook_stages(root)
    parameters = {name: notebook_parameters(root, name, out) for name in stages}
    times = {}
    results: dict[str, Any] = {}
    begin = time.perf_counter()
    results["fetch"] = plain_fetch(root, out)
    times["fetch"] = time.perf_counter() - begin
    print(f"    plain fetch: {times['fetch']:.2f} s", file=sys.stderr, flush=True)
    for name in stages:
        begin = time.perf_counter()
        namespace = run_notebook_in_process(root, name, parameters[name])
        results[name] = notebook_results(name, namespace)
        times[name] = time.perf_counter() - begin
        print(f"    plain {name}: {times[name]:.2f} s", file=sys.stderr, flush=True)
    # The report's computation (bootstrap, segments, figures, pages) on the same outputs: the
    # pipeline's, in this copy, which are equal to the plain ones (checked by the metrics).
    from churnlab.report.pages import build_context, render_pages

    begin = time.perf_counter()
    render_pages(build_context(root))
    times["report"] = time.perf_counter() - begin
    print(f"    plain report: {times['report']:.2f} s", file=sys.stderr, flush=True)
    return {"import": imported, "stages": times, "results": results}


def kernel_ready(root: Path, repeats: int) -> dict:
    """Per notebook stage: seconds from starting its kernel as the runner does (warm-up
    imports queued) to the kernel answering a request queued after them (median of
    ``repeats``): the kernel's side of the overlap with the runner's preparation."""
    from jupyter_client.blocking import BlockingKernelClient

    from churnlab.pipeline.binding import KERNEL_NAME
    from churnlab.pipeline.kernel import StartedKernel
    from churnlab.pipeline.stages import load_stage, notebook_stages

    ready = {}
    for name in notebook_stages(root):
        notebook = root / load_stage(root, name).notebook
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            kernel = StartedKernel.start(KERNEL_NAME, root, notebook)
            client = BlockingKernelClient()
            client.load_connection_info(kernel.manager.get_connection_info())
            client.start_channels(iopub=False, stdin=False, hb=False, control=False)
            try:
                asked = client.execute("pass", silent=True, store_history=False)
                while client.get_shell_msg(timeout=120)["parent_header"].get("msg_id") != asked:
                    pass
                times.append(time.perf_counter() - begin)
            finally:
                client.stop_channels()
                kernel.kill()
        ready[name] = statistics.median(times)
    return ready


# --------------------------------------------------------------------------- measuring


def fresh_copy(root: Path, rows: int | None, template: Any, seed: int, env: dict[str, str]) -> str:
    """Copy the project to ``root`` (with ``rows`` synthetic customers); return the source."""
    root.mkdir(parents=True)
    log(f"copying the project to {root}")
    copy_project(PROJECT, root)
    source = "telco (default)"
    if rows is not None:
        log(f"generating {rows:,} customers (seed {seed})")
        begin = time.perf_counter()
        source = write_customers(root, template, rows, seed)
        point_data_at(root, source)
        size = (root / source).stat().st_size / 1e6
        log(f"wrote {source} ({size:.0f} MB) in {time.perf_counter() - begin:.1f} s")
    # DVC wants an SCM; the synthetic table goes to DVC (below), not to git
    commit_all(root, author="bench", message="benchmark copy", env=env, exclude=(f"/{source}",))
    if rows is not None:
        # as a user does with their own table (docs/own-data.md): DVC versions it, git holds
        # its .dvc file
        subprocess.run(["dvc", "add", "-q", source], cwd=root, env=env, check=True)
        git(root, env, "add", "-A")
        git(root, env, "commit", "-q", "-m", "the synthetic customers, versioned by DVC")
    return source


def timings_file(workdir: Path) -> Path:
    """A fresh file for the runner's marks of one command."""
    handle, name = tempfile.mkstemp(prefix="timings-", suffix=".jsonl", dir=workdir)
    os.close(handle)
    return Path(name)


def marked_run(
    command: list[str], root: Path, env: dict[str, str], workdir: Path, **options: Any
) -> dict:
    """Run a ``dvc`` command with the runner's marks on; its wall time, DVC's start-up
    and the stage spans (:func:`stage_spans`)."""
    path = timings_file(workdir)
    run = stream(command, root, {**env, TIMINGS_ENV: str(path)}, **options)
    startup, spans = stage_spans(run, read_marks(path))
    path.unlink(missing_ok=True)
    return {"wall": run.wall, "startup": startup, "spans": spans}


def git(root: Path, env: dict[str, str], *args: str) -> None:
    """A git command in a project copy, quietly, with no user configuration."""
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c",
         "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
        cwd=root, env=env, check=True, capture_output=True,
    )  # fmt: skip


def back_to_committed(root: Path, env: dict[str, str]) -> None:
    """Put a copy back to its last commit: params and dvc.lock from git, the outputs from
    DVC's cache, no experiments."""
    git(root, env, "reset", "--hard", "-q")
    git(root, env, "clean", "-fdq")  # not -x: the outputs and the tracking store stay
    subprocess.run(["dvc", "checkout", "--force", "-q"], cwd=root, env=env, check=True)
    # fails when there is no experiment to remove: nothing to do then
    subprocess.run(["dvc", "exp", "remove", "-A", "-q"], cwd=root, env=env, capture_output=True)


def measure_data(
    label: str,
    rows: int | None,
    template: Any,
    seed: int,
    workdir: Path,
    env: dict[str, str],
    attempts: int,
    max_wait: float,
) -> dict:
    """Full repro, no-op repro (beside ``dvc status``) and the plain computation for one
    data set.

    Each phase starts on a quiet machine. A full repro or plain run is ended when other
    processes start to use the CPUs (:class:`Watchdog`), or repeated when they used more
    than ``DISTURBED_CORES`` cores, up to ``attempts`` runs (the repro in a fresh copy); the
    last attempt is not watched, and the least disturbed run is kept.
    """
    from churnlab.config import read_yaml

    best: tuple | None = None
    for attempt in range(1, attempts + 1):
        root = workdir / f"project-{label}-{attempt}"
        source = fresh_copy(root, rows, template, seed, env)
        expected = list((read_yaml(root / "dvc.yaml") or {}).get("stages") or {})
        log(f"{label}: full dvc repro (attempt {attempt})")
        try:
            full, _, others = timed_phase(
                lambda root=root, watch=attempt < attempts: marked_run(
                    ["dvc", "repro"], root, env, workdir, watch=watch
                ),
                max_wait,
            )
        except Disturbed as exc:
            log(f"{label}: {exc}")
            shutil.rmtree(root, ignore_errors=True)
            continue
        if sorted(full["spans"]) != sorted(expected):
            raise RuntimeError(
                f"{label}: dvc repro ran {sorted(full['spans'])}, expected {expected}"
            )
        log(f"{label}: full repro {full['wall']:.1f} s; other processes used {others:.2f} cores")
        if best is None or others < best[3]:
            if best is not None:
                shutil.rmtree(best[0], ignore_errors=True)
            best = (root, source, full, others)
        else:
            shutil.rmtree(root, ignore_errors=True)
        if others <= DISTURBED_CORES:
            break
    if best is None:
        raise RuntimeError(f"{label}: every full repro was disturbed by other processes")
    root, source, full, repro_others = best

    def noop_runs() -> dict[str, list[float]]:
        walls, status = [], []
        for _ in range(REPEATS):
            noop = stream(["dvc", "repro"], root, env, echo=False)
            if any(STAGE_START.match(text) for _, text in noop.lines):
                raise RuntimeError(f"{label}: the second dvc repro ran a stage")
            walls.append(noop.wall)
            status.append(stream(["dvc", "status"], root, env, echo=False).wall)
        return {"noop": walls, "status": status}

    log(f"{label}: no-op dvc repro and dvc status x{REPEATS}")
    noops, _, noop_others = timed_phase(noop_runs, max_wait)
    log(f"{label}: no-op {statistics.median(noops['noop']):.2f} s; plain computation")
    plain = None
    for attempt in range(1, attempts + 1):
        out = workdir / f"plain-{label}-{attempt}"
        try:
            run, wall, others = timed_phase(
                lambda out=out, watch=attempt < attempts: run_worker(
                    "plain", root, out, env, watch=watch
                ),
                max_wait,
            )
        except Disturbed as exc:
            log(f"{label}: {exc}")
            continue
        finally:
            shutil.rmtree(out, ignore_errors=True)
        log(
            f"{label}: plain {sum(run['stages'].values()):.1f} s (+ imports "
            f"{run['import']:.1f} s); other processes used {others:.2f} cores"
        )
        if plain is None or others < plain["others"]:
            plain = {**run, "wall": wall, "others": others}
        if others <= DISTURBED_CORES:
            break
    if plain is None:
        raise RuntimeError(f"{label}: every plain run was disturbed by other processes")
    test = json.loads((root / "metrics" / "test.json").read_text())
    cv = json.loads((root / "metrics" / "cv.json").read_text())
    same = (
        abs(test["roc_auc"] - plain["results"]["evaluate"]["roc_auc"]) < 1e-9
        and abs(cv["roc_auc_mean"] - plain["results"]["train"]["cv_roc_auc_mean"]) < 1e-9
    )
    log(f"{label}: same metrics as the pipeline: {same}")
    return {
        "label": label,
        "rows": rows,
        "source": source,
        "repro": full["wall"],
        "dvc_startup": full["startup"],
        "spans": full["spans"],
        "noop": statistics.median(noops["noop"]),
        "noops": noops["noop"],
        "status": statistics.median(noops["status"]),
        "plain": plain,
        "same_metrics": same,
        "test_roc_auc": test["roc_auc"],
        "customers": sum(plain["results"]["prepare"].values()),
        "root": str(root),
        "others": {"repro": repro_others, "noop": noop_others, "plain": plain["others"]},
    }


def shows_result(show: Any, setting: str) -> bool:
    """Whether ``dvc exp show --json`` lists an experiment (not the workspace) whose params
    have the setting's value and which has metrics."""
    path, assignment = setting.split(":", 1)
    key, value = assignment.split("=", 1)

    def matches(entry: dict) -> bool:
        data = entry.get("data")
        if not isinstance(data, dict) or entry.get("rev") == "workspace":
            return False
        found: Any = ((data.get("params") or {}).get(path) or {}).get("data")
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        return found is not None and str(found) == value and bool(data.get("metrics"))

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return matches(node) or any(walk(child) for child in node.values())
        if isinstance(node, list):
            return any(walk(child) for child in node)
        return False

    return walk(show)


def experiment(root: Path, env: dict[str, str], workdir: Path, setting: str) -> dict:
    """``dvc exp run -S setting`` then ``dvc exp show``, timed together and apart.

    Raises:
        RuntimeError: ``dvc exp show`` does not list the experiment with its result.
    """
    begin = time.perf_counter()
    run = marked_run(["dvc", "exp", "run", "-S", setting], root, env, workdir, echo=False)
    shown = time.perf_counter()
    show = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=root, env=env, check=True, capture_output=True
    )
    end = time.perf_counter()
    if not shows_result(json.loads(show.stdout), setting):
        raise RuntimeError(f"dvc exp show does not list the experiment {setting} with metrics")
    return {**run, "total": end - begin, "run": shown - begin, "show": end - shown}


def measure_iteration(
    result: dict, workdir: Path, env: dict[str, str], repeats: int | None, max_wait: float
) -> dict:
    """On the default run's copy, committed: each experiment ``repeats`` times (None: its
    own number for ``--quick``) from the committed state, then every stage forced with
    tracking on and with it off."""
    root = Path(result["root"])
    git(root, env, "add", "-A")
    git(root, env, "commit", "-q", "--allow-empty", "-m", "benchmark: the default run")
    experiments = []
    for label, setting, target, quick_runs in EXPERIMENTS:

        def repeated(
            label: str = label, setting: str = setting, count: int = repeats or quick_runs
        ) -> list[dict]:
            runs = []
            for number in range(1, count + 1):
                back_to_committed(root, env)  # not timed: each run starts from the commit
                log(f"experiment '{label}' ({setting}), run {number}")
                runs.append(experiment(root, env, workdir, setting))
                log(f"experiment '{label}': {runs[-1]['total']:.1f} s")
            return runs

        runs, _, load = timed_phase(repeated, max_wait)
        log(f"experiment '{label}': other processes used {load:.2f} cores")
        experiments.append(
            {
                "label": label,
                "setting": setting,
                "target": target,
                "totals": [r["total"] for r in runs],
                "median": sorted(runs, key=lambda r: r["total"])[len(runs) // 2],
                "others": load,
            }
        )
    tracking = {}
    # "cold": the run starts the project's tracking service (the first run in 10 minutes);
    # "on": the service the run before left waiting (a person's next run); "off": no tracking
    for state in ("cold", "on", "off"):
        back_to_committed(root, env)
        if state == "off":
            set_tracking(root, False)
        if state == "cold":
            stop_tracking_services(root.parent)  # every copy's: a warm interpreter is shared
        log(f"dvc repro --force, tracking {state}")
        run, _, load = timed_phase(
            lambda: marked_run(["dvc", "repro", "--force"], root, env, workdir, echo=False),
            max_wait,
        )
        log(f"tracking {state}: {run['wall']:.1f} s; other processes {load:.2f} cores")
        tracking[state] = {**run, "others": load}
    back_to_committed(root, env)
    import yaml

    settings = yaml.safe_load((root / TRACKING_PARAMS).read_text())["tracking"]
    return {
        "experiments": experiments,
        "tracking": tracking,
        "register_stage": settings.get("register_stage"),
    }


def stop_tracking_services(root: Path) -> None:
    """End the tracking services and warm interpreters waiting for this project's next
    run (the next run is then a person's first in 10 minutes)."""
    import psutil

    for pid in tracking_services(str(root)):
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.terminate()
            process.wait(10)


def set_tracking(root: Path, enabled: bool) -> None:
    """Set ``tracking.enabled`` in a copy's tracking params (not a stage input)."""
    import yaml

    path = root / TRACKING_PARAMS
    params = yaml.safe_load(path.read_text())
    params["tracking"]["enabled"] = enabled
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def measure_components(
    root: Path, workdir: Path, env: dict[str, str], max_wait: float, repeats: int
) -> dict:
    """The parts measured on their own that explain a phase of the run (medians of
    ``repeats``)."""
    parts, _, others = timed_phase(lambda: component_parts(root, workdir, env, repeats), max_wait)
    log(f"components measured; other processes used {others:.2f} cores")
    return {**parts, "others": others, "repeats": repeats}


def component_parts(root: Path, workdir: Path, env: dict[str, str], repeats: int) -> dict:
    """The measurements of :func:`measure_components`."""
    python = sys.executable
    log("components: interpreter start, the CLI's imports, kernel start and warm-up, dvc")
    return {
        "python_start": wall_seconds([python, "-c", "pass"], root, env, repeats),
        # what `churnlab run` imports before the runner's first mark
        "cli_imports": import_seconds(
            python, ["churnlab.cli", "churnlab.pipeline.execute"], root, env, repeats
        ),
        "dvc_version": wall_seconds(["dvc", "--version"], root, env, repeats),
        "kernel_ready": run_worker("kernel", root, workdir / "kernel", env, repeats=repeats),
    }


# --------------------------------------------------------------------------- reporting


def machine() -> dict[str, str]:
    """CPU, cores, RAM, Python, OS, package versions, the project's commit and the date."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if total:
            ram = f"{int(total.group(1)) / 2**20:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=PROJECT, capture_output=True, text=True
    ).stdout.strip()
    versions = []
    for name in VERSIONS:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "RAM": ram,
        "Python": f"{platform.python_version()} ({sys.executable})",
        "OS": platform.platform(),
        "packages": ", ".join(versions),
        "project commit": commit + (" + uncommitted changes" if dirty else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured in this run"
    return "**met**" if value <= target else "**missed**"


def ratio(result: dict) -> float:
    """Full repro time over the plain computation (with its one-off imports)."""
    plain = result["plain"]
    return result["repro"] / (sum(plain["stages"].values()) + plain["import"])


def tracking_added(iteration: dict) -> dict[str, float]:
    """Per stage: wall time with tracking on minus with it off (forced runs)."""
    on, off = iteration["tracking"]["on"]["spans"], iteration["tracking"]["off"]["spans"]
    return {name: on[name]["span"] - off[name]["span"] for name in on if name in off}


def registry_phase(iteration: dict | None) -> float | None:
    """The tracking phase of the stage that registers the model, with tracking on: its
    logging, the model's registration and the promotion decision."""
    if not iteration:
        return None
    span = iteration["tracking"]["on"]["spans"].get(iteration.get("register_stage"), {})
    return between(span, *TRACKING)


def stage_tracking(iteration: dict) -> dict[str, float]:
    """Per stage except the registering one (its own target): what tracking costs it, the
    larger of its span with tracking on minus off and its tracking phase."""
    added = tracking_added(iteration)
    on = iteration["tracking"]["on"]["spans"]
    return {
        name: max(value, between(on[name], *TRACKING) or value)
        for name, value in added.items()
        if name != iteration.get("register_stage")
    }


def targets(results: list[dict], iteration: dict | None) -> list[str]:
    """One line per target of issue 10: the figure, and met or missed."""
    default = results[0]
    lines = [
        f"- full default `dvc repro` ≤ {TARGET_REPRO_S:g} s: {default['repro']:.1f} s — "
        + _verdict(default["repro"], TARGET_REPRO_S)
    ]
    big = [r for r in results if r["rows"] == TARGET_RATIO_ROWS]
    value = ratio(big[0]) if big else None
    lines.append(
        f"- repro / plain ≤ {TARGET_RATIO:g} at {TARGET_RATIO_ROWS:,} customers: "
        + (f"{value:.2f} — " if value is not None else "")
        + _verdict(value, TARGET_RATIO)
    )
    lines.append(
        f"- no-op `dvc repro` ≤ {TARGET_NOOP_S:g} s: "
        + ", ".join(
            f"{r['label']} {r['noop']:.2f} s (`dvc status`, the floor: {r['status']:.2f} s)"
            for r in results
        )
        + " — "
        + _verdict(default["noop"], TARGET_NOOP_S)
    )
    experiments = iteration["experiments"] if iteration else []
    for label, setting, target, _ in EXPERIMENTS:
        found = next((e for e in experiments if e["label"] == label), None)
        figure = found["median"]["total"] if found else None
        lines.append(
            f"- {label} experiment (`dvc exp run -S '{setting}'`, then `dvc exp show`) ≤ "
            f"{target:g} s: "
            + (
                f"{figure:.1f} s (median of {len(found['totals'])}: "
                + ", ".join(f"{t:.1f}" for t in found["totals"])
                + ") — "
                if found
                else ""
            )
            + _verdict(figure, target)
        )
    costs = stage_tracking(iteration) if iteration else {}
    worst = max(costs.items(), key=lambda item: item[1]) if costs else None
    lines.append(
        f"- tracking ≤ {TARGET_TRACKING_S:g} s added to a stage's wall time: "
        + (
            f"worst {worst[0]} {worst[1]:+.2f} s (the larger of on − off and its tracking "
            f"phase; the registering stage, {iteration.get('register_stage')}, under the next "
            "target) — "
            if worst
            else ""
        )
        + _verdict(worst[1] if worst else None, TARGET_TRACKING_S)
    )
    cold = iteration["tracking"].get("cold") if iteration else None
    if cold:
        off = iteration["tracking"]["off"]["spans"]
        first = {
            n: v["span"] - off[n]["span"]
            for n, v in cold["spans"].items()
            if n in off and n != iteration.get("register_stage")
        }
        name, value = max(first.items(), key=lambda item: item[1])
        lines.append(
            f"  - the same, in the run that starts the tracking service (a project's first "
            f"run in 10 minutes): worst {name} {value:+.2f} s — "
            + _verdict(value, TARGET_TRACKING_S)
        )
    registry = registry_phase(iteration)
    added = tracking_added(iteration) if iteration else {}
    register = iteration.get("register_stage") if iteration else None
    lines.append(
        f"- model logging + registration + promotion ≤ {TARGET_REGISTRY_S:g} s: "
        + (
            f"{registry:.2f} s ({register}'s tracking phase; its span on − off "
            f"{_s(added.get(register))} s) — "
            if registry is not None
            else ""
        )
        + _verdict(registry, TARGET_REGISTRY_S)
    )
    return lines


def summary_table(results: list[dict]) -> list[str]:
    lines = [
        "| data | customers | full repro (s) | plain (s) | plain incl. imports (s) | "
        "repro / plain | no-op repro (s) | `dvc status` (s) | same metrics | other load: "
        "repro / no-op / plain (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        plain = sum(r["plain"]["stages"].values())
        lines.append(
            f"| {r['label']} | {r['customers']:,} | {r['repro']:.1f} | {plain:.1f} | "
            f"{plain + r['plain']['import']:.1f} | {ratio(r):.2f} | {r['noop']:.2f} | "
            f"{r['status']:.2f} | {'yes' if r['same_metrics'] else 'NO'} | "
            + " / ".join(f"{r['others'][k]:.2f}" for k in ("repro", "noop", "plain"))
            + " |"
        )
    return lines


def size_table(result: dict) -> list[str]:
    """Per stage: repro span, plain time and the difference (the overhead)."""
    plain = result["plain"]["stages"]
    lines = [
        "| stage | dvc repro (s) | plain (s) | overhead (s) | repro / plain |",
        "|---|---:|---:|---:|---:|",
        f"| dvc start-up | {_s(result['dvc_startup'])} | – | {_s(result['dvc_startup'])} | – |",
    ]
    for name, span in result["spans"].items():
        cost = plain.get(name)
        lines.append(
            f"| {name} | {_s(span['span'])} | {_s(cost)} | "
            f"{_s(span['span'] - cost if cost is not None else None)} | "
            + (f"{span['span'] / cost:.1f} |" if cost else "– |")
        )
    total_plain = sum(plain.values())
    with_imports = total_plain + result["plain"]["import"]
    lines += [
        f"| imports (once, plain only) | – | {_s(result['plain']['import'])} | – | – |",
        f"| **total** | **{_s(result['repro'])}** | **{_s(with_imports)}** | "
        f"**{_s(result['repro'] - with_imports)}** | **{result['repro'] / with_imports:.2f}** |",
    ]
    return lines


def segment_labels(spans: dict[str, dict]) -> list[str]:
    """Every phase label of these stages, in the order the runner gave them."""
    labels: list[str] = []
    for span in spans.values():
        for label, _ in span.get("segments", []):
            if label not in labels:
                labels.append(label)
    return labels


def phase_table(spans: dict[str, dict]) -> list[str]:
    """Each marked stage's span cut at the runner's marks (they add up to the span)."""
    marked = {name: span for name, span in spans.items() if "segments" in span}
    if not marked:
        return ["(no phase marks: the runner wrote none to `CHURNLAB_TIMINGS`)"]
    labels = segment_labels(marked)
    lines = [
        "| stage | span | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * (len(labels) + 1),
    ]
    for name, span in marked.items():
        values = dict(span["segments"])
        lines.append(
            f"| {name} | {_s(span['span'])} | "
            + " | ".join(_s(values.get(label)) for label in labels)
            + " |"
        )
    return lines


def critical_path(span: dict, kernel: float | None) -> str:
    """Which side of the overlap the first cell waited for: the runner's preparation or
    the kernel's start and warm-up (measured alone)."""
    prepared = runner_preparation(span)
    if prepared is None or kernel is None:
        return "–"
    return "kernel" if kernel > prepared[0] else "runner"


def overlap_table(result: dict, parts: dict | None) -> list[str]:
    """The runner's preparation against the kernel's start, and the cells against plain."""
    kernels = (parts or {}).get("kernel_ready") or {}
    plain = result["plain"]["stages"]
    lines = [
        "| stage | runner's preparation | wait at the first cell | kernel start + warm-up "
        "(alone) | critical path | cells | plain | cells − plain | page | tracking | "
        "exit + DVC after |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, span in notebook_spans(result).items():
        prepared = runner_preparation(span) or (None, None)
        cells = between(span, *CELLS)
        after = span["segments"][-1][1]
        lines.append(
            f"| {name} | {_s(prepared[0])} | {_s(prepared[1])} | {_s(kernels.get(name))} | "
            f"{critical_path(span, kernels.get(name))} | {_s(cells)} | {_s(plain.get(name))} | "
            f"{_s(cells - plain[name] if cells is not None and name in plain else None)} | "
            f"{_s(between(span, *PAGE))} | {_s(between(span, *TRACKING))} | {_s(after)} |"
        )
    return lines


def experiments_table(iteration: dict) -> list[str]:
    """The median run of each experiment, split into DVC's start-up, its stages, DVC's own
    work after the last one (in the last span) and ``dvc exp show``."""
    lines = [
        "| experiment | total (s) | runs (s) | DVC start-up | stages (the last one with DVC's "
        "work after it) | `dvc exp show` | other load (cores) |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for found in iteration["experiments"]:
        run = found["median"]
        lines.append(
            f"| {found['label']} | {run['total']:.2f} | "
            + ", ".join(f"{t:.1f}" for t in found["totals"])
            + f" | {run['startup']:.2f} | "
            + ", ".join(f"{n} {s['span']:.2f}" for n, s in run["spans"].items())
            + f" | {run['show']:.2f} | "
            f"{found['others']:.2f} |"
        )
    return lines


def tracking_table(iteration: dict) -> list[str]:
    """Each stage forced with tracking on and off, and its tracking phase from the marks;
    with the service left waiting by the run before (on) and started by the run (cold)."""
    on, off = iteration["tracking"]["on"], iteration["tracking"]["off"]
    cold = iteration["tracking"].get("cold", {"spans": {}, "wall": None})
    added = tracking_added(iteration)
    lines = [
        "| stage | tracking on (s) | tracking off (s) | added (s) | tracking phase on (s) | "
        "tracking phase off (s) | on, service started by the run (s) | added then (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, span in on["spans"].items():
        other = off["spans"].get(name, {})
        first = cold["spans"].get(name, {}).get("span")
        first_added = None if first is None or "span" not in other else first - other["span"]
        lines.append(
            f"| {name} | {_s(span['span'])} | {_s(other.get('span'))} | "
            f"{_s(added.get(name))} | {_s(between(span, *TRACKING))} | "
            f"{_s(between(other, *TRACKING))} | {_s(first)} | {_s(first_added)} |"
        )
    cold_wall = cold["wall"]
    lines.append(
        f"| **whole repro** | **{on['wall']:.2f}** | **{off['wall']:.2f}** | "
        f"**{on['wall'] - off['wall']:.2f}** | | | **{_s(cold_wall)}** | "
        f"**{_s(None if cold_wall is None else cold_wall - off['wall'])}** |"
    )
    return lines


def phase_totals(spans: dict[str, dict]) -> list[tuple[str, float]]:
    """Each phase summed over the marked stages, largest first."""
    totals: dict[str, float] = {}
    for span in spans.values():
        for label, seconds in span.get("segments", []):
            totals[label] = totals.get(label, 0.0) + seconds
    return sorted(totals.items(), key=lambda item: -item[1])


def describe(label: str) -> str:
    """A phase label with what happens in it, when known."""
    first, _, second = label.partition(" → ")
    note = PHASE_NOTES.get((first, second))
    if label == BEFORE_PROCESS:
        note = "DVC checking the stage and spawning its command"
    elif label.endswith(AFTER_LAST):
        note = "the process exiting, DVC hashing and caching the outputs, writing dvc.lock"
    return f"*{label}*" + (f" ({note})" if note else "")


def where_time_goes(results: list[dict], parts: dict | None, iteration: dict | None) -> list[str]:
    """The figures above, read: where each target's time goes, in sentences."""
    default = results[0]
    spans = default["spans"]
    marked = notebook_spans(default)
    unmarked = {n: s for n, s in spans.items() if n not in marked}
    plain = default["plain"]["stages"]
    lines = [
        f"- **Full default repro ({default['repro']:.1f} s, target {TARGET_REPRO_S:g} s)**: "
        f"DVC's start-up {default['dvc_startup']:.2f} s; notebook stages "
        f"{sum(s['span'] for s in marked.values()):.1f} s "
        f"(their cells {sum(between(s, *CELLS) or 0 for s in marked.values()):.1f} s, plain "
        f"{sum(plain.get(n, 0) for n in marked):.1f} s); "
        + "; ".join(
            f"{n} {s['span']:.2f} s (plain {_s(plain.get(n))} s)" for n, s in unmarked.items()
        )
        + ".",
    ]
    totals = phase_totals(marked)
    if totals:
        whole = sum(seconds for _, seconds in totals)
        lines.append(
            "- **The notebook stages' phases, summed over the stages, largest first**: "
            + "; ".join(
                f"{describe(label)} {seconds:.2f} s ({seconds / whole:.0%})"
                for label, seconds in totals
            )
            + "."
        )
    kernels = (parts or {}).get("kernel_ready") or {}
    if marked and kernels:
        paths = []
        for name, span in marked.items():
            prepared = runner_preparation(span)
            if prepared is None or name not in kernels:
                continue
            paths.append(
                f"{name}: runner {prepared[0]:.2f} s, kernel {kernels[name]:.2f} s → "
                f"{critical_path(span, kernels[name])} (then {prepared[1]:.2f} s to the first cell)"
            )
        if paths:
            lines.append(
                "- **Before the first cell, the runner's preparation and the kernel's start + "
                "warm-up overlap**; the longer is on the critical path: " + "; ".join(paths) + "."
            )
    if parts:
        lines.append(
            f"- **Process start → runner start**: a fresh interpreter starts in "
            f"{parts['python_start']:.2f} s and imports what `churnlab run` needs before its "
            f"first mark (`churnlab.cli`, `churnlab.pipeline.execute`) in "
            f"{parts['cli_imports']:.2f} s (measured alone)."
        )
    lines.append(
        f"- **No-op repro ({default['noop']:.2f} s, target {TARGET_NOOP_S:g} s)**: DVC's own "
        f"`dvc status` (the same dependency and params checks, nothing run) takes "
        f"{default['status']:.2f} s"
        + (f" and `dvc --version` {parts['dvc_version']:.2f} s" if parts else "")
        + f"; the no-op repro is {default['noop'] - default['status']:+.2f} s from that floor."
    )
    if iteration:
        for found in iteration["experiments"]:
            run = found["median"]
            biggest = phase_totals(notebook_spans(run))[:3]
            lines.append(
                f"- **{found['label'].capitalize()} experiment ({run['total']:.1f} s, target "
                f"{found['target']:g} s)**: DVC's start-up {run['startup']:.2f} s, stages "
                + ", ".join(f"{n} {s['span']:.2f} s" for n, s in run["spans"].items())
                + f" (the last with DVC's work after it), `dvc exp show` {run['show']:.2f} s"
                + (
                    "; its notebook stages' largest phases: "
                    + ", ".join(f"{describe(label)} {seconds:.2f} s" for label, seconds in biggest)
                    if biggest
                    else ""
                )
                + "."
            )
        added = tracking_added(iteration)
        registry = registry_phase(iteration)
        whole_on = iteration["tracking"]["on"]["wall"]
        whole_off = iteration["tracking"]["off"]["wall"]
        lines.append(
            f"- **Tracking (target {TARGET_TRACKING_S:g} s per stage)**: forced runs, on − "
            "off: "
            + ", ".join(f"{n} {v:+.2f} s" for n, v in added.items())
            + f"; whole repro {whole_on - whole_off:+.2f} s. "
            f"The model's logging, registration and promotion (the registering stage's tracking "
            f"phase): {_s(registry)} s (target {TARGET_REGISTRY_S:g} s)."
        )
    for r in results[1:]:
        extra = r["repro"] - sum(r["plain"]["stages"].values()) - r["plain"]["import"]
        r_marked = notebook_spans(r)
        cells = sum(between(s, *CELLS) or 0 for s in r_marked.values())
        r_plain = sum(r["plain"]["stages"].get(n, 0) for n in r_marked)
        biggest = phase_totals(r_marked)[:4]
        lines.append(
            f"- **{r['label']}**: the pipeline takes {extra:.0f} s more than the plain run "
            f"(ratio {ratio(r):.2f}, target {TARGET_RATIO:g} at {TARGET_RATIO_ROWS:,}); the "
            f"notebook stages' cells take {cells:.1f} s against {r_plain:.1f} s plain "
            f"({cells - r_plain:+.1f} s); their largest phases: "
            + ", ".join(f"{describe(label)} {seconds:.2f} s" for label, seconds in biggest)
            + "; "
            + ", ".join(
                f"{n} {s['span']:.2f} s (plain {_s(r['plain']['stages'].get(n))} s)"
                for n, s in r["spans"].items()
                if n not in r_marked
            )
            + "."
        )
    return lines


def report(
    results: list[dict],
    parts: dict | None,
    iteration: dict | None,
    info: dict[str, str],
    argv: list[str],
) -> str:
    """The whole report as Markdown."""
    out = [
        "# Benchmark: `dvc repro` against the plain computation, and the experiment loop",
        "",
        f"Made by `{' '.join(['python', 'bench/run.py', *argv])}`.",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {key}: {value}" for key, value in info.items()]
    out += ["", "## Targets", "", *targets(results, iteration), "", "## Summary", ""]
    out += summary_table(results)
    for r in results:
        out += [
            "",
            f"## {r['label']}: per stage",
            "",
            f"Data: {r['source']}; test ROC AUC {r['test_roc_auc']:.4f}; no-op repro runs "
            + ", ".join(f"{v:.2f}" for v in r["noops"])
            + " s.",
            "",
            *size_table(r),
            "",
            "Each notebook stage's span cut at the runner's phase marks, in the real run "
            "(seconds; the phases add up to the span):",
            "",
            *phase_table(r["spans"]),
            "",
            "Before the first cell, and after it (seconds; *cells* against the notebook's "
            "plain computation):",
            "",
            *overlap_table(r, parts if r is results[0] else None),
        ]
    if iteration:
        out += [
            "",
            "## Experiments (default data)",
            "",
            *experiments_table(iteration),
            "",
            "Phases of the median run's notebook stages (seconds):",
        ]
        for found in iteration["experiments"]:
            out += ["", f"*{found['label']}*:", "", *phase_table(found["median"]["spans"])]
        out += [
            "",
            "## Tracking on and off (default data, `dvc repro --force`)",
            "",
            *tracking_table(iteration),
        ]
    out += [
        "",
        "## Where the time goes",
        "",
        *where_time_goes(results, parts, iteration),
        "",
        "## Method",
        "",
        "- Each data set runs in a fresh temporary copy of the project (git-tracked and "
        "untracked-but-not-ignored files, then `git init` and a commit); the project's "
        "own workspace is not touched. The package itself is the one installed in the "
        "venv (editable: the working tree's `src/`).",
        "- Stage spans come from timestamping DVC's output lines: a stage runs from DVC's "
        "`Running stage` line to the next one, so start-up and stages add up to the wall "
        f"time. With `{TIMINGS_ENV}` set, each `churnlab run STAGE` process appends its phase "
        "marks (wall-clock, in the order they happen; the first is the process's start, from "
        "`/proc`); the benchmark cuts the stage's span at them: *DVC → process start* is DVC "
        "spawning the command, the last mark → DVC's next line is the process exiting and "
        "DVC's work after the stage (hashing, caching, `dvc.lock`).",
        "- *runner's preparation*: the runner's start to its last mark before the first cell; "
        "*wait at the first cell*: from there to the first cell (the tracking run, the output "
        "guard, papermill's set-up, and waiting for the kernel). *kernel start + warm-up "
        "(alone)*: the kernel started as the runner starts it (its notebook's top-level "
        "imports queued) until it answers a request queued after them, measured on its own; "
        "the *critical path* is the kernel when that is longer than the runner's "
        "preparation.",
        "- *plain* runs each notebook's own code cells (with the parameters the runner binds, "
        "its figures drawn to PNG as the inline backend does) in one fresh process, `fetch_raw` "
        "and the report's computation; its imports are timed once and shown apart. *cells* "
        "(first cell → notebook done) is compared with it. *repro / plain* = full repro ÷ "
        "(plain stages + imports).",
        "- Experiments: the default run's copy is committed (its `dvc.lock` and metrics); each "
        "experiment run starts from that commit (`git reset --hard`, `git clean`, `dvc checkout "
        "--force`, `dvc exp remove -A`, not timed) and is timed from the start of `dvc exp run "
        "-S ...` until `dvc exp show --json` has returned and lists it with the set value and "
        "metrics. Every stage has `persist` outputs, which DVC's run-cache skips, so a "
        "repeat re-runs its stages.",
        "- Tracking: the same copy, every stage forced (`dvc repro --force`) with "
        f"`{TRACKING_PARAMS}` as committed, then with `tracking.enabled: false` (not a stage "
        "input); *added* is the difference of a stage's spans. The *tracking phase* is the "
        "runner's *page written → recorded*.",
        "- Synthetic customers: `bench/synth.py generate_customers` (rows of the real "
        "table drawn with replacement, stratified on the target, numeric columns "
        "jittered within the schema ranges, fresh ids), written as CSV into the copy, "
        "with `data.source` pointing at it and `data.sha256: null`.",
        "- Each phase (full repro, no-op repros, plain run, each experiment's runs, each "
        "tracking run, "
        f"component measurements) starts once the CPUs are quiet (under {QUIET_SHARE:.0%} busy "
        f"over {QUIET_WINDOW_S:g} s). *other load* is the CPU time that processes outside the "
        "benchmark used during the phase, divided by its wall time. A full repro or plain "
        f"run is ended and repeated when other processes use more than {WATCH_CORES:g} "
        f"cores for {WATCH_TIMES * WATCH_S:g} s, or repeated when it had more than "
        f"{DISTURBED_CORES:g} cores of other load (the last attempt is not ended; the "
        "least disturbed run is kept)."
        + (f" Component measurements: {parts['others']:.2f} cores of other load." if parts else ""),
        f"- Medians of {REPEATS} runs: no-op repro, `dvc status`"
        + (
            f"; of {parts.get('repeats', REPEATS)}: interpreter start, import times, kernel "
            "start + warm-up, `dvc --version`"
            if parts
            else ""
        )
        + ". Tracking on and off: one forced run each.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        metavar="N",
        help="synthetic customer counts (default: 100000 1000000)",
    )
    parser.add_argument("--quick", action="store_true", help="default data only")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic customers"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "RESULTS.md",
        help="where the report goes (default bench/RESULTS.md)",
    )
    parser.add_argument(
        "--exp-repeats",
        type=int,
        metavar="N",
        help=f"runs of each experiment, median reported (default {REPEATS}; with --quick "
        + ", ".join(f"{e[0]} {e[3]}" for e in EXPERIMENTS)
        + "; 0: no experiments, and no tracking on/off runs either)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="runs of a phase that other processes disturbed (default 3)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="how long to wait for a quiet machine before a phase (900)",
    )
    parser.add_argument(
        "--raw", type=Path, metavar="FILE", help="also save the measurements as JSON"
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="FILE",
        help="only write the report from measurements saved with --raw",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--worker", choices=["plain", "kernel"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# Other benchmarks keep their sections in the same file between markers (bench/monitor.py)
_KEPT_SECTION = re.compile(r"<!-- (\w+) -->\n.*?<!-- /\1 -->", re.S)


def write_keeping_sections(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, keeping the marked sections other benchmarks wrote there."""
    old = path.read_text() if path.exists() else ""
    blocks = [match.group(0) for match in _KEPT_SECTION.finditer(old)]
    path.write_text(text.rstrip("\n") + "".join(f"\n\n{block}" for block in blocks) + "\n")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        worker = {
            "plain": lambda: plain_pipeline(args.root, args.out),
            "kernel": lambda: kernel_ready(args.root, args.repeats),
        }[args.worker]
        print(json.dumps(worker()))
        return 0
    if args.report_only:
        saved = json.loads(args.report_only.read_text())
        text = report(
            saved["results"],
            saved["parts"],
            saved.get("iteration"),
            saved["machine"],
            saved["argv"],
        )
        write_keeping_sections(args.output, text)
        print(text)
        return 0
    env = bench_env(Path(sys.executable).parent)
    sizes = [] if args.quick else args.sizes
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="churnlab-bench-"))
    log(f"working in {workdir}; data: default" + "".join(f", {n:,}" for n in sizes))
    try:
        results = [
            measure_data(
                "default", None, None, args.seed, workdir, env, args.attempts, args.max_wait
            )
        ]
        root = Path(results[0]["root"])
        # --quick keeps to a few minutes: the parts measured alone once each
        parts = measure_components(root, workdir, env, args.max_wait, 1 if args.quick else REPEATS)
        iteration = None
        repeats = args.exp_repeats
        if repeats is None and not args.quick:
            repeats = REPEATS
        if repeats != 0:
            iteration = measure_iteration(results[0], workdir, env, repeats, args.max_wait)
        if sizes:
            from churnlab.data import read_table

            template = read_table(root / "data" / "raw" / "churn.csv")
        for rows in sizes:
            label = f"{rows // 1000}k" if rows < 1_000_000 else f"{rows / 1e6:g}M"
            results.append(
                measure_data(
                    label, rows, template, args.seed, workdir, env, args.attempts, args.max_wait
                )
            )
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            stop_tracking_services(workdir)  # the copies' services and warm interpreters
            shutil.rmtree(workdir, ignore_errors=True)
    info = machine()
    info["benchmark's own run"] = f"{time.perf_counter() - started:.0f} s"
    if args.raw:
        args.raw.write_text(
            json.dumps(
                {
                    "results": results,
                    "parts": parts,
                    "iteration": iteration,
                    "machine": info,
                    "argv": argv,
                },
                indent=1,
            )
        )
    text = report(results, parts, iteration, info, argv)
    write_keeping_sections(args.output, text)
    print(text)
    log(f"wrote {args.output} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
