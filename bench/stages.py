"""Benchmark: the two stages that are commands, not notebooks (fetch, report), and no-op DVC.

In a project copy after a finished run (``--project``, or one made here: a copy of this
project and a full ``dvc repro``), the script prints, as medians of ``--repeats`` runs:

1. the wall time of ``bin/churnlab fetch`` and ``bin/churnlab report`` as DVC runs them;
2. where that time goes, from the same command run in a fresh interpreter whose functions are
   wrapped with timers (interpreter start, the handler's imports, params checks, opening the
   MLflow store, the stage's own work and its parts, the rest: the stage's tracking run,
   the output guard);
3. the no-op ``dvc repro`` beside ``dvc status`` (DVC's own floor: it reads the same files).

The machine may be shared: the CPU seconds of each part are printed beside its wall time.
Run it with the project's Python::

    .venv/bin/python bench/stages.py                      # builds a project copy first
    .venv/bin/python bench/stages.py --project /tmp/copy  # a copy after `dvc repro`
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# the modules each command's handler imports (src/churnlab/cli.py), in a fresh interpreter
HANDLER_MODULES = {
    "fetch": [
        "churnlab.cli",
        "churnlab.fetch",
        "churnlab.param_rules",
        "churnlab.pipeline.stages",
        "churnlab.split",
        "churnlab.pipeline.guard",
        "churnlab.tracking.runs",
    ],
    "report": [
        "churnlab.cli",
        "churnlab.param_rules",
        "churnlab.pipeline.stages",
        "churnlab.report.pages",
        "churnlab.pipeline.guard",
        "churnlab.tracking.runs",
    ],
}
# the functions timed inside each command: (module, attribute), shown under the attribute
TIMED = {
    "fetch": [
        ("churnlab.pipeline.stages", "check_unread_params"),
        ("churnlab.param_rules", "check_params"),
        ("churnlab.fetch", "fetch_raw"),
        ("churnlab.data", "validate_table"),
        ("churnlab.split", "check_usable"),
    ],
    "report": [
        ("churnlab.pipeline.stages", "check_unread_params"),
        ("churnlab.param_rules", "check_params"),
        ("churnlab.report.pages", "build_reports"),
        ("churnlab.report.pages", "bootstrap_intervals"),
        ("churnlab.report.pages", "segment_performance"),
        ("churnlab.report.pages", "plot_tables"),
        ("churnlab.report.pages", "figures"),
        ("churnlab.report.pages", "render_pages"),
    ],
}


def bench_env() -> dict[str, str]:
    """The project's venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    return env


def timed_run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (the process and its children) of one command."""
    before = os.times()
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {cwd}:\n{proc.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def _timer(function, name: str, spent: dict[str, list[float]]):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals = spent.setdefault(name, [0.0, 0.0])
            totals[0] += time.perf_counter() - wall
            totals[1] += time.process_time() - cpu

    return timed


def measure_parts(command: str) -> None:
    """In this fresh interpreter: run ``churnlab COMMAND`` with timers; print JSON."""
    import importlib

    spent: dict[str, list[float]] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for module in HANDLER_MODULES[command]:
        importlib.import_module(module)
    spent["imports"] = [time.perf_counter() - wall, time.process_time() - cpu]
    for module, name in TIMED[command]:
        owner = importlib.import_module(module)
        setattr(owner, name, _timer(getattr(owner, name), name, spent))
    runs = importlib.import_module("churnlab.tracking.runs")
    runs.Tracker.open = classmethod(
        _timer(runs.Tracker.open.__func__, "open the MLflow store", spent)
    )
    cli = importlib.import_module("churnlab.cli")
    wall, cpu = time.perf_counter(), time.process_time()
    if cli.main([command]) != 0:
        raise SystemExit(f"churnlab {command} failed")
    spent["handler"] = [time.perf_counter() - wall, time.process_time() - cpu]
    print(json.dumps(spent))


def parts(command: str, root: Path, env: dict[str, str], repeats: int) -> dict[str, tuple]:
    """Median wall and CPU seconds of each part, and of a bare interpreter's start."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, __file__, "--parts", command],
            cwd=root,
            env={**env, "DVC_STAGE": command},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"parts of {command} failed:\n{proc.stderr[-2000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    starts = [timed_run([sys.executable, "-c", "pass"], root, env) for _ in range(repeats)]
    medians = {"interpreter start": _median_pair(starts)}
    for name in runs[0]:
        medians[name] = _median_pair([run.get(name, [0.0, 0.0]) for run in runs])
    return medians


def _median_pair(pairs) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def walls(command: list[str], root: Path, env: dict[str, str], repeats: int) -> tuple:
    return _median_pair([timed_run(command, root, env) for _ in range(repeats)])


def _has_module(name: str) -> str:
    import importlib.util

    return "yes" if importlib.util.find_spec(name) else "no (pip install ruamel.yaml.clib)"


def build_project(target: Path, env: dict[str, str]) -> Path:
    """A copy of this project after one full ``dvc repro`` (minutes)."""
    from churnlab.pipeline.workspace import commit_all, copy_project

    print(f"copying the project to {target} and running dvc repro", file=sys.stderr)
    target.mkdir(parents=True)
    copy_project(PROJECT, target)
    commit_all(target, author="bench", message="benchmark copy", env=env)
    subprocess.run(["dvc", "repro", "-q"], cwd=target, env=env, check=True)
    return target


def show(title: str, rows: dict[str, tuple]) -> None:
    print(title)
    for name, (wall, cpu) in rows.items():
        print(f"  {name:<34} {wall:6.2f} s wall  {cpu:6.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project copy after a finished run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", choices=sorted(HANDLER_MODULES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.parts:
        measure_parts(args.parts)
        return
    env = bench_env()
    root = args.project or build_project(Path(tempfile.mkdtemp()) / "project", env)
    root = root.resolve()
    load = os.getloadavg()[0]
    print(f"project {root}; medians of {args.repeats}; load average {load:.2f} at the start")
    print(f"ruamel.yaml's C parser (DVC reads its YAML with it): {_has_module('_ruamel_yaml')}")
    for command in ("fetch", "report"):
        total = walls(["bin/churnlab", command], root, {**env, "DVC_STAGE": command}, args.repeats)
        measured = parts(command, root, env, args.repeats)
        handler = measured.pop("handler")
        inside = ("check_unread_params", "check_params", "open the MLflow store")
        work = "fetch_raw" if command == "fetch" else "build_reports"
        rest = handler[0] - sum(measured[n][0] for n in (*inside, work) if n in measured)
        rest_cpu = handler[1] - sum(measured[n][1] for n in (*inside, work) if n in measured)
        measured["the rest (tracking run, guard)"] = (rest, rest_cpu)
        show(f"churnlab {command}: {total[0]:.2f} s wall, {total[1]:.2f} s CPU", measured)
    repro = walls(["dvc", "repro"], root, env, args.repeats)
    status = walls(["dvc", "status"], root, env, args.repeats)
    show("no-op DVC", {"dvc repro (no-op)": repro, "dvc status (the floor)": status})
    print(f"load average {os.getloadavg()[0]:.2f} at the end (2 cores)")


if __name__ == "__main__":
    main()
