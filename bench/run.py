"""Benchmark: the DVC pipeline against the same computation as plain function calls.

For the default data (and, unless ``--quick``, for synthetic tables of ``--sizes`` customers
made by :func:`synth.generate_customers` (bench/synth.py)) the script

1. copies the project (git-tracked and untracked-but-not-ignored files) into a temporary
   folder, makes it a git repository and runs the full ``dvc repro`` there, timing every
   stage from DVC's and the runner's own progress lines;
2. runs the no-op ``dvc repro`` three times (median);
3. runs the four notebooks' own code cells, with the parameters the runner binds, in one
   fresh Python process, timed per stage (the physical limit: no kernel, no papermill, no
   DVC, imports paid once);
4. measures where the notebook-stage overhead goes: interpreter and CLI start-up, kernel
   start-up (an empty notebook through papermill), the imports the notebooks make, the HTML
   export and DVC's own work (hashing and caching outputs, the lock file);

then prints the figures and writes them, with the machine they came from, to
``bench/RESULTS.md``. Run it with the project's Python (``make bench``)::

    .venv/bin/python bench/run.py                  # default data, 100k and 1M customers
    .venv/bin/python bench/run.py --quick          # default data only
    .venv/bin/python bench/run.py --sizes 100000   # default data and 100k customers

The project's own workspace is never touched: everything runs in temporary copies.
"""

from __future__ import annotations

import argparse
import ast
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
TARGET_NOOP_S = 1.0
TARGET_OVERHEAD_S = 1.5
TARGET_RATIO = 1.2
TARGET_RATIO_ROWS = 1_000_000
SYNTH_DIR = "synth"
QUIET_SHARE = 0.1  # the machine counts as quiet below this share of all CPUs busy
QUIET_WINDOW_S = 5.0
DISTURBED_CORES = 0.1  # other processes using more than this many cores disturb a phase
WATCH_S = 5.0  # a watched command is ended when other processes use more than
WATCH_CORES = 0.3  # WATCH_CORES cores in WATCH_TIMES windows of WATCH_S seconds in a row
WATCH_TIMES = 2
MUTED_LINES = ("Kernel is running over TCP without encryption",)
VERSIONS = (
    "dvc",
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

PART_NAMES = (
    "CLI start-up",
    "kernel start",
    "kernel imports",
    "papermill per cell",
    "HTML export",
    "DVC after the stage",
)

STAGE_START = re.compile(r"^Running stage '([^']+)'")
RUNNER_START = re.compile(r"^\[([\w-]+)\] running ")
RUNNER_DONE = re.compile(r"^\[([\w-]+)\] done in ([\d.]+) s")


class Disturbed(Exception):
    """A watched command was ended because other processes started to use the CPUs."""


@dataclass(frozen=True)
class Run:
    """One timed command: wall time and every output line with its time since the start."""

    wall: float
    lines: list[tuple[float, str]]


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
    return Run(wall, lines)


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


def notebook_imports(script: Path) -> list[str]:
    """The top-level modules a notebook script imports (its ``import`` statements)."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.append(node.module)
    return sorted(set(modules))


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
    return sum(
        cpu - before.get(pid, (0, 0.0))[1]
        for pid, (parent, cpu) in after.items()
        if pid not in ours and parent != 2 and pid != 2
    )


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
    kind: str, root: Path, out: Path, env: dict[str, str], watch: bool = False, cells: int = 1
) -> dict:
    """Run one measurement in a fresh interpreter (this script with ``--worker``).

    Raises:
        Disturbed: ``watch`` is on and other processes loaded the CPUs.
        RuntimeError: the worker failed.
    """
    out.mkdir(parents=True, exist_ok=True)
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", kind, "--root", str(root), "--out", str(out)]
    command += ["--cells", str(cells)]
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


# --------------------------------------------------------------------------- parsing repro


def stage_spans(run: Run) -> tuple[float, dict[str, dict]]:
    """Split a ``dvc repro`` run into DVC start-up and one span per stage.

    A stage's span runs from DVC's ``Running stage`` line to the next one (the last to the
    end of the run), so the spans and the start-up add up to the wall time. Notebook stages
    are split further by the runner's lines: ``cli`` (to ``[stage] running``: interpreter,
    imports, reading the notebook), ``runner`` (papermill, kernel, HTML export, writes) and
    ``after`` (process exit, then DVC hashing and caching the outputs, the lock file).
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
        span = {"span": end - begin}
        segment = run.lines[first:last]
        running = next((t for t, text in segment if RUNNER_START.match(text)), None)
        done = next((t for t, text in segment if RUNNER_DONE.match(text)), None)
        if running is not None and done is not None:
            span.update({"cli": running - begin, "runner": done - running, "after": end - done})
        spans[name] = span
    return run.lines[starts[0]][0], spans


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


def kernel_startup(out: Path, cells: int) -> dict:
    """Import papermill, then run empty notebooks on the project's kernel (medians).

    One notebook has one cell, the other ``cells`` cells; both are saved after every cell
    as the runner does, so the difference is papermill's cost per cell.
    """
    started = time.perf_counter()
    import nbformat
    import papermill

    from churnlab.pipeline.binding import KERNEL_NAME

    imported = time.perf_counter() - started

    def empty(count: int) -> Any:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("pass") for _ in range(count)]
        for cell in nb.cells:
            cell.metadata["tags"] = []
        nb.metadata["kernelspec"] = {
            "name": KERNEL_NAME,
            "display_name": KERNEL_NAME,
            "language": "python",
        }
        return nb

    medians = {}
    for count in (1, cells):
        times = []
        for number in range(REPEATS):
            begin = time.perf_counter()
            papermill.execute_notebook(
                empty(count),
                str(out / f"empty-{count}-{number}.ipynb"),
                kernel_name=KERNEL_NAME,
                language="python",
                cwd=str(out),
                progress_bar=False,
                request_save_on_cell_execute=True,
            )
            times.append(time.perf_counter() - begin)
        medians[count] = statistics.median(times)
    return {
        "papermill_import": imported,
        "empty_notebook": medians[1],
        "cells": cells,
        "per_cell": (medians[cells] - medians[1]) / max(cells - 1, 1),
    }


def html_export(root: Path) -> dict:
    """Time the runner's HTML export of each executed notebook of the copy.

    Like the runner process, papermill is imported first; then nbconvert's import, the
    first export in the process (template set-up) and each stage's export are timed.
    """
    import nbformat
    import papermill  # noqa: F401

    from churnlab.pipeline.stages import load_stage, notebook_stages

    started = time.perf_counter()
    import nbconvert  # noqa: F401

    from churnlab.pipeline.pages import to_html

    imported = time.perf_counter() - started
    stages = notebook_stages(root)
    notebooks = {
        name: nbformat.read(root / load_stage(root, name).executed_path, as_version=4)
        for name in stages
    }
    begin = time.perf_counter()
    to_html(notebooks[stages[0]])
    first = time.perf_counter() - begin
    times = {}
    for name, nb in notebooks.items():
        begin = time.perf_counter()
        to_html(nb)
        times[name] = time.perf_counter() - begin
    return {"nbconvert_import": imported, "first_setup": first - times[stages[0]], "export": times}


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
    # DVC wants an SCM; the synthetic tables stay out of git (too big, and regenerated)
    commit_all(root, author="bench", message="benchmark copy", env=env, exclude=(f"/{SYNTH_DIR}/",))
    return source


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
    """Full repro, no-op repro and the plain computation for one data set.

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
                lambda root=root, watch=attempt < attempts: stream(
                    ["dvc", "repro"], root, env, watch=watch
                ),
                max_wait,
            )
        except Disturbed as exc:
            log(f"{label}: {exc}")
            shutil.rmtree(root, ignore_errors=True)
            continue
        startup, spans = stage_spans(full)
        if sorted(spans) != sorted(expected):
            raise RuntimeError(f"{label}: dvc repro ran {sorted(spans)}, expected {expected}")
        log(f"{label}: full repro {full.wall:.1f} s; other processes used {others:.2f} cores")
        if best is None or others < best[3]:
            if best is not None:
                shutil.rmtree(best[0], ignore_errors=True)
            best = (root, source, full, others)
        else:
            shutil.rmtree(root, ignore_errors=True)
        if others <= DISTURBED_CORES:
            break
    root, source, full, repro_others = best
    startup, spans = stage_spans(full)

    def noop_runs() -> list[float]:
        walls = []
        for _ in range(REPEATS):
            noop = stream(["dvc", "repro"], root, env, echo=False)
            if any(STAGE_START.match(text) for _, text in noop.lines):
                raise RuntimeError(f"{label}: the second dvc repro ran a stage")
            walls.append(noop.wall)
        return walls

    log(f"{label}: no-op dvc repro x{REPEATS}")
    noops, _, noop_others = timed_phase(noop_runs, max_wait)
    log(f"{label}: no-op {statistics.median(noops):.2f} s; plain computation")
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
        "repro": full.wall,
        "dvc_startup": startup,
        "spans": spans,
        "noop": statistics.median(noops),
        "noops": noops,
        "plain": plain,
        "same_metrics": same,
        "test_roc_auc": test["roc_auc"],
        "customers": sum(plain["results"]["prepare"].values()),
        "root": str(root),
        "others": {"repro": repro_others, "noop": noop_others, "plain": plain["others"]},
    }


def measure_components(root: Path, workdir: Path, env: dict[str, str], max_wait: float) -> dict:
    """Where a notebook stage's overhead goes, each part measured on its own."""
    parts, _, others = timed_phase(lambda: component_parts(root, workdir, env), max_wait)
    log(f"components measured; other processes used {others:.2f} cores")
    return {**parts, "others": others}


def component_parts(root: Path, workdir: Path, env: dict[str, str]) -> dict:
    """The measurements of :func:`measure_components`."""
    from churnlab.pipeline.binding import read_notebook
    from churnlab.pipeline.stages import load_stage, notebook_stages

    python = sys.executable
    log("components: interpreter start, imports, kernel start, HTML export, DVC start-up")
    parts: dict[str, Any] = {
        "python_start": wall_seconds([python, "-c", "pass"], root, env, REPEATS),
        "cli_imports": import_seconds(
            python, ["churnlab.pipeline.execute", "papermill", "jupytext"], root, env, REPEATS
        ),
        "dvc_version": wall_seconds(["dvc", "--version"], root, env, REPEATS),
        "dvc_status": wall_seconds(["dvc", "status"], root, env, REPEATS),
        "pandas_sklearn_import": import_seconds(python, ["pandas", "sklearn"], root, env, REPEATS),
        "jsonschema_import": import_seconds(python, ["jsonschema"], root, env, REPEATS),
        "data_import": import_seconds(python, ["churnlab.data"], root, env, REPEATS),
        "skops_import": import_seconds(
            python, ["skops.io"], root, env, REPEATS, preload=("pandas", "sklearn")
        ),
    }
    parts["kernel_imports"] = {}
    parts["kernel_import_modules"] = {}
    for name in notebook_stages(root):
        modules = notebook_imports(root / load_stage(root, name).notebook)
        parts["kernel_import_modules"][name] = modules
        parts["kernel_imports"][name] = import_seconds(python, modules, root, env, REPEATS)
    parts["notebook_cells"] = {
        name: len(read_notebook(root / load_stage(root, name).notebook).cells)
        for name in notebook_stages(root)
    }
    cells = max(parts["notebook_cells"].values())
    parts.update(run_worker("kernel", root, workdir / "kernel", env, cells=cells))
    parts["html"] = run_worker("html", root, workdir / "html", env)
    return parts


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


def size_table(result: dict) -> list[str]:
    """Per stage: repro span, plain time and the difference (the overhead)."""
    plain = result["plain"]["stages"]
    lines = [
        "| stage | dvc repro (s) | plain (s) | overhead (s) | repro / plain |",
        "|---|---:|---:|---:|---:|",
        f"| dvc start-up | {_s(result['dvc_startup'])} | – | {_s(result['dvc_startup'])} | – |",
    ]
    for name, span in result["spans"].items():
        cost = plain[name]
        lines.append(
            f"| {name} | {_s(span['span'])} | {_s(cost)} | {_s(span['span'] - cost)} "
            f"| {span['span'] / cost:.1f} |"
        )
    total_plain = sum(plain.values())
    with_imports = total_plain + result["plain"]["import"]
    lines += [
        f"| imports (once, plain only) | – | {_s(result['plain']['import'])} | – | – |",
        f"| **total** | **{_s(result['repro'])}** | **{_s(with_imports)}** | "
        f"**{_s(result['repro'] - with_imports)}** | **{result['repro'] / with_imports:.2f}** |",
    ]
    return lines


def stage_parts(name: str, span: dict, parts: dict) -> dict[str, float]:
    """The measured parts of one notebook stage's overhead (seconds)."""
    html = parts["html"]
    values = (
        span["cli"],
        parts["empty_notebook"],
        parts["kernel_imports"][name],
        max(parts["per_cell"], 0.0) * parts["notebook_cells"][name],
        html["nbconvert_import"] + html["first_setup"] + html["export"][name],
        span["after"],
    )
    return dict(zip(PART_NAMES, values, strict=True))


def rests(result: dict, parts: dict) -> dict[str, float]:
    """Per notebook stage: the overhead that the measured parts do not explain."""
    return {
        name: span["span"]
        - result["plain"]["stages"][name]
        - sum(stage_parts(name, span, parts).values())
        for name, span in result["spans"].items()
        if "cli" in span
    }


def breakdown_table(result: dict, parts: dict) -> list[str]:
    """Each notebook stage's overhead split into measured parts."""
    names = PART_NAMES
    lines = [
        "| stage | overhead | " + " | ".join(names) + " | rest |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    rest = rests(result, parts)
    for name, span in result["spans"].items():
        if "cli" not in span:
            continue
        overhead = span["span"] - result["plain"]["stages"][name]
        values = stage_parts(name, span, parts).values()
        lines.append(
            f"| {name} | {_s(overhead)} | "
            + " | ".join(_s(v) for v in values)
            + f" | {_s(rest[name])} |"
        )
    return lines


def fixed_cost(result: dict, parts: dict) -> float:
    """Mean cost of a notebook stage that does not depend on its computation."""
    return statistics.mean(
        sum(stage_parts(name, span, parts).values())
        for name, span in result["spans"].items()
        if "cli" in span
    )


def overheads(result: dict) -> dict[str, float]:
    """Overhead per notebook stage: repro span minus plain time."""
    return {
        name: span["span"] - result["plain"]["stages"][name]
        for name, span in result["spans"].items()
        if "cli" in span
    }


def ratio(result: dict) -> float:
    """Full repro time over the plain computation (with its one-off imports)."""
    plain = result["plain"]
    return result["repro"] / (sum(plain["stages"].values()) + plain["import"])


def targets(results: list[dict]) -> list[str]:
    """One line per target: the figure, and met or missed."""
    default = results[0]
    worst = max(max(overheads(r).values()) for r in results)
    lines = [
        f"- no-op `dvc repro` ≤ {TARGET_NOOP_S:g} s: "
        + ", ".join(f"{r['label']} {r['noop']:.2f} s" for r in results)
        + f" — **{'met' if default['noop'] <= TARGET_NOOP_S else 'missed'}**",
        f"- overhead ≤ {TARGET_OVERHEAD_S:g} s per notebook stage: worst "
        f"{worst:.2f} s — **{'met' if worst <= TARGET_OVERHEAD_S else 'missed'}**",
    ]
    big = [r for r in results if r["rows"] == TARGET_RATIO_ROWS]
    if big:
        value = ratio(big[0])
        lines.append(
            f"- repro / plain ≤ {TARGET_RATIO:g} at {TARGET_RATIO_ROWS:,} customers: "
            f"{value:.2f} — **{'met' if value <= TARGET_RATIO else 'missed'}**"
        )
    else:
        lines.append(
            f"- repro / plain ≤ {TARGET_RATIO:g} at {TARGET_RATIO_ROWS:,} customers: "
            "not measured in this run"
        )
    return lines


def where_time_goes(results: list[dict], parts: dict) -> list[str]:
    """The measured explanation of the overhead, in sentences with numbers."""
    default = results[0]
    html = parts["html"]
    spans = [s for s in default["spans"].values() if "cli" in s]
    cli = statistics.mean(s["cli"] for s in spans)
    after = statistics.mean(s["after"] for s in spans)
    imports = parts["kernel_imports"]
    lines = [
        f"- **No-op repro ({default['noop']:.2f} s)**: starting the `dvc` CLI alone "
        f"(`dvc --version`) takes {parts['dvc_version']:.2f} s and `dvc status` (the same "
        f"dependency and params checks, nothing run) {parts['dvc_status']:.2f} s, so the "
        "no-op time is DVC's own start-up and checking, not churnlab code.",
        f"- **CLI start-up ({cli:.2f} s per stage on average)**: from DVC's `Running stage` to "
        f"the runner's first line. A fresh interpreter starts in {parts['python_start']:.2f} s; "
        f"importing `churnlab.pipeline.execute`, `papermill` and `jupytext` takes "
        f"{parts['cli_imports']:.2f} s (papermill imports nbformat → jsonschema, and "
        f"`import jsonschema` alone takes {parts['jsonschema_import']:.2f} s).",
        f"- **Kernel start-up ({parts['empty_notebook']:.2f} s)**: an empty notebook run "
        f"through papermill on the `churnlab` kernel, papermill already imported.",
        "- **Imports inside the kernel** (each notebook's import statements, fresh "
        "interpreter): "
        + ", ".join(f"{n} {v:.2f} s" for n, v in imports.items())
        + f"; `import pandas, sklearn` alone takes {parts['pandas_sklearn_import']:.2f} s. "
        "The plain run pays this once "
        f"({default['plain']['import']:.2f} s), the pipeline once per notebook stage.",
        f"- **HTML export**: importing nbconvert after papermill {html['nbconvert_import']:.2f} s, "
        f"setting up the exporter (first export in a process) {html['first_setup']:.2f} s, "
        "exporting: " + ", ".join(f"{n} {v:.2f} s" for n, v in html["export"].items()) + ".",
        f"- **DVC after each stage ({after:.2f} s on average on the default data)**: the "
        "runner process exiting, then DVC hashing the outputs, copying them into its cache "
        "and writing `dvc.lock`. By data size: "
        + "; ".join(
            f"{r['label']} "
            + ", ".join(f"{n} {s['after']:.2f} s" for n, s in r["spans"].items() if "after" in s)
            for r in results
        )
        + ".",
        f"- **Papermill per cell ({parts['per_cell'] * 1000:.0f} ms)**: an empty notebook of "
        f"{parts['cells']} cells against one of 1 cell, saved after every cell as the runner "
        "does; times the notebook's number of cells"
        + (
            " (counted as 0: too small to tell from the spread of kernel start-up)."
            if parts["per_cell"] <= 0
            else "."
        ),
        "- **rest**: what the parts measured on their own do not explain: imports a notebook "
        "makes later, inside package functions (`import skops.io` after pandas and sklearn: "
        f"{parts['skops_import']:.2f} s, in train and evaluate), rendering the displayed "
        "tables and figures into the notebook, papermill injecting the parameters, "
        "scrubbing and writing the executed notebook, the spread of kernel start-up; and "
        "what grows with the data in a fresh kernel process and not in the one plain "
        "process (memory taken anew, caches cold). It can be negative: parts measured on "
        "their own do not add up exactly.",
        f"- **fetch**: `churnlab fetch` validates the data against the schema before "
        f"writing it, so it imports `churnlab.data` (pandas, pandera, scikit-learn: "
        f"{parts['data_import']:.2f} s in a fresh interpreter) besides the runner: "
        + "; ".join(
            f"{r['label']} {r['spans']['fetch']['span']:.2f} s against "
            f"{r['plain']['stages']['fetch']:.2f} s plain"
            for r in results
            if "fetch" in r["spans"] and "fetch" in r["plain"]["stages"]
        )
        + ".",
        f"- **In sum**: a notebook stage costs about {fixed_cost(default, parts):.1f} s on "
        "top of its computation before anything scales with the data (the parts above "
        "without *rest*, default data), which is "
        f"{fixed_cost(default, parts) / TARGET_OVERHEAD_S:.0f} times the "
        f"{TARGET_OVERHEAD_S:g} s target; the largest parts are the imports paid again in "
        "every kernel and the CLI's own imports.",
    ]
    for r in results[1:]:
        extra = r["repro"] - sum(r["plain"]["stages"].values()) - r["plain"]["import"]
        lines.append(
            f"- **{r['label']}**: the pipeline takes {extra:.0f} s more than the plain run "
            f"(ratio {ratio(r):.2f}); the *rest* of the notebook stages adds up to "
            f"{sum(rests(r, parts).values()):.1f} s of it (default data: "
            f"{sum(rests(default, parts).values()):.1f} s)."
        )
    return lines


def report(results: list[dict], parts: dict, info: dict[str, str], argv: list[str]) -> str:
    """The whole report as Markdown."""
    out = [
        "# Benchmark: `dvc repro` against the plain computation",
        "",
        f"Made by `{' '.join(['python', 'bench/run.py', *argv])}`.",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {key}: {value}" for key, value in info.items()]
    out += [
        "",
        "## Targets",
        "",
        *targets(results),
        "",
        "## Summary",
        "",
        "| data | customers | full repro (s) | plain (s) | plain incl. imports (s) | "
        "repro / plain | no-op repro (s) | same metrics | other load: repro / no-op / plain "
        "(cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        plain = sum(r["plain"]["stages"].values())
        out.append(
            f"| {r['label']} | {r['customers']:,} | {r['repro']:.1f} | {plain:.1f} | "
            f"{plain + r['plain']['import']:.1f} | {ratio(r):.2f} | {r['noop']:.2f} | "
            f"{'yes' if r['same_metrics'] else 'NO'} | "
            + " / ".join(f"{r['others'][k]:.2f}" for k in ("repro", "noop", "plain"))
            + " |"
        )
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
            "Overhead of each notebook stage, split into measured parts (seconds):",
            "",
            *breakdown_table(r, parts),
        ]
    out += [
        "",
        "## Where the time goes",
        "",
        *where_time_goes(results, parts),
        "",
        "## Method",
        "",
        "- Each data set runs in a fresh temporary copy of the project (git-tracked and "
        "untracked-but-not-ignored files, then `git init` and a commit); the project's "
        "own workspace is not touched. The package itself is the one installed in the "
        "venv (editable: the working tree's `src/`).",
        "- Stage times of `dvc repro` come from timestamping its output lines: a stage "
        "runs from DVC's `Running stage` line to the next one, so start-up and stages "
        "add up to the wall time. *CLI start-up* ends at the runner's `[stage] running` "
        "line, *DVC after the stage* starts at its `[stage] done` line.",
        "- *plain* runs the churnlab calls each notebook makes (including its figures, "
        "drawn to PNG as the inline backend does) in one fresh process; its imports are "
        "timed once and shown apart. *overhead* = repro span − plain time of the stage. "
        "*repro / plain* = full repro ÷ (plain stages + imports).",
        "- Synthetic customers: `bench/synth.py generate_customers` (rows of the real "
        "table drawn with replacement, stratified on the target, numeric columns "
        "jittered within the schema ranges, fresh ids), written as CSV into the copy, "
        "with `data.source` pointing at it and `data.sha256: null`.",
        "- Each phase (full repro, no-op repros, plain run, component measurements) "
        f"starts once the CPUs are quiet (under {QUIET_SHARE:.0%} busy over "
        f"{QUIET_WINDOW_S:g} s). *other load* is the CPU time that processes outside the "
        "benchmark used during the phase, divided by its wall time. A full repro or plain "
        f"run is ended and repeated when other processes use more than {WATCH_CORES:g} "
        f"cores for {WATCH_TIMES * WATCH_S:g} s, or repeated when it had more than "
        f"{DISTURBED_CORES:g} cores of other load (the last attempt is not ended; the "
        "least disturbed run is kept). Component measurements: "
        f"{parts['others']:.2f} cores of other load.",
        f"- Medians of {REPEATS} runs: no-op repro, interpreter start, import times, "
        "empty-notebook kernel runs, `dvc --version`, `dvc status`.",
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
    parser.add_argument("--worker", choices=["plain", "kernel", "html"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cells", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        worker = {
            "plain": lambda: plain_pipeline(args.root, args.out),
            "kernel": lambda: kernel_startup(args.out, args.cells),
            "html": lambda: html_export(args.root),
        }[args.worker]
        print(json.dumps(worker()))
        return 0
    if args.report_only:
        saved = json.loads(args.report_only.read_text())
        text = report(saved["results"], saved["parts"], saved["machine"], saved["argv"])
        args.output.write_text(text)
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
        parts = measure_components(Path(results[0]["root"]), workdir, env, args.max_wait)
        from churnlab.data import read_table

        template = read_table(Path(results[0]["root"]) / "data" / "raw" / "churn.csv")
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
            shutil.rmtree(workdir, ignore_errors=True)
    info = machine()
    if args.raw:
        args.raw.write_text(
            json.dumps(
                {"results": results, "parts": parts, "machine": info, "argv": argv}, indent=1
            )
        )
    text = report(results, parts, info, argv)
    args.output.write_text(text)
    print(text)
    log(f"wrote {args.output} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
