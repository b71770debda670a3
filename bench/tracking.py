"""Benchmark: what MLflow tracking adds to a stage, part by part.

In copies of a project after a full ``dvc repro`` (``--project``; by default one is made in a
temporary folder: a copy of the work tree, ``git init``, ``dvc repro``) the script measures,
each in fresh processes and as the median of ``--repeats`` runs:

1. ``import churnlab.pipeline.execute`` (the runner's start-up) and which heavy libraries it
   pulls in;
2. in one process per repeat: ``Tracker.open``; per stage the start of its run, ``record_stage``
   and the end of its run; for the register stage the parts of the model logging,
   registration and promotion decision; and the tracking time left on the stage's critical
   path when the tracker is opened in the background while the notebook runs (simulated by
   ``--notebook-s`` seconds of waiting, one fresh process per stage), when the package has
   that API;
3. ``churnlab run STAGE`` with tracking on and off (``CHURNLAB_TRACKING=off``): the wall time
   tracking adds to a whole stage, and the CPU time of the runner and its kernel (on a
   machine other processes keep busy, background work costs wall time too);
4. what a stage's tracking costs in CPU in one fresh process, step by step (``import
   mlflow``, creating the client and its store, a run, its params, metrics and artifact);
5. with ``--repro``: ``dvc repro --force`` of the whole pipeline, per stage (DVC's
   ``Running stage`` lines), with tracking through the pipeline run's tracking service,
   with each stage recording in its own process (``CHURNLAB_TRACKING_SERVICE=off``: the
   way before the service) and with tracking off, back to back, ``--repeats`` rounds.

Run it with the project's Python; ``PYTHONPATH=OTHER/src`` measures another checkout's
package (the before of a change)::

    .venv/bin/python bench/tracking.py --project /tmp/pipeline-copy
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section  # bench/ is the script's folder, first on sys.path

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "bench" / "RESULTS.md"
HEAVY = ("pandas", "sklearn", "pandera", "mlflow", "skops", "sqlalchemy")
STAGES = ("explore", "prepare", "train", "evaluate")

IMPORT_PROBE = """
import sys, time, json
started = time.perf_counter()
import churnlab.pipeline.execute
took = time.perf_counter() - started
print(json.dumps({"s": took, "heavy": [m for m in %r if m in sys.modules]}))
"""

# One process: the tracker, each stage's run and the register stage's parts, timed by
# wrapping the functions that do the work (whichever of them the code under test calls).
TRACKING_PROBE = """
import contextlib, functools, importlib, json, sys, time
from pathlib import Path

root, stages, notebook_s = Path(sys.argv[1]), sys.argv[2].split(","), float(sys.argv[3])
parts = {}

def wrap(module_name, attribute, label):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    original = getattr(module, attribute, None)
    if original is None:
        return
    @functools.wraps(original)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            parts[label] = parts.get(label, 0.0) + time.perf_counter() - started
    setattr(module, attribute, timed)

from churnlab.pipeline.stages import load_stage
from churnlab.tracking import runs

figures = {}
started = time.perf_counter()
tracker = runs.Tracker.open(root)
figures["Tracker.open"] = time.perf_counter() - started
for module, attribute, label in [
    ("churnlab.model", "load_model", "load the challenger (skops file)"),
    ("churnlab.tracking.runs", "load_model", "load the challenger (skops file)"),
    ("churnlab.tracking.registry", "_compare_with_champion", "compare with the champion"),
    ("churnlab.tracking.registry", "read_champion", "read the champion (store, skops)"),
    ("churnlab.tracking.registry", "_log_model", "log the model"),
    ("mlflow.sklearn", "log_model", "log the model"),
    ("mlflow.sklearn", "save_model", "write the MLflow model (save_model)"),
    ("mlflow.models.utils", "_validate_serving_input", "load it back (pyfunc validation)"),
    ("mlflow", "register_model", "register the version"),
    ("churnlab.tracking.registry", "_register", "register the version"),
    ("churnlab.tracking.registry", "log_and_promote", "log_and_promote (all)"),
]:
    wrap(module, attribute, label)
for name in stages:
    stage = load_stage(root, name)
    parts.clear()
    t0 = time.perf_counter()
    with runs.tracked_stage(root, stage, tracker) as run:
        t1 = time.perf_counter()
        runs.record_stage(run, root, stage)
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    figures[f"{name}: start of its run"] = t1 - t0
    figures[f"{name}: record_stage"] = t2 - t1
    figures[f"{name}: end of its run"] = t3 - t2
    for label, seconds in parts.items():
        figures[f"{name}:   {label}"] = seconds

print(json.dumps(figures))
"""

# A fresh process for one stage as the runner runs it: the tracker opened in the background at
# the stage's start, the notebook (here: a wait) meanwhile, then the stage's run recorded and
# ended. Prints how long the background work took and what is left after the notebook.
BACKGROUND_PROBE = """
import json, sys, threading, time
from pathlib import Path

started = time.perf_counter()
from churnlab.pipeline.stages import load_stage
from churnlab.tracking import runs

root, name, notebook_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
stage = load_stage(root, name)
finished = []
with runs.tracked_stage(root, stage, runs.Tracker.open_in_background(root)) as pending:
    threading.Thread(
        target=lambda: (pending.value_or_none(), finished.append(time.perf_counter()))
    ).start()
    time.sleep(notebook_s)
    after_notebook = time.perf_counter()
    run = pending.result()
    waited = time.perf_counter() - after_notebook
    runs.record_stage(run, root, stage)
ended = time.perf_counter()
print(json.dumps({
    f"{name}: background work (cold process)": finished[0] - started,
    f"{name}: after the notebook, waiting for it": waited,
    f"{name}: after the notebook, in all (critical path)": ended - after_notebook,
}))
"""


# One fresh process, against a project's store: the CPU (and wall) seconds of each step of a
# stage's tracking when it is done in the stage's own process.
STORE_PROBE = """
import json, sys, tempfile, time
from pathlib import Path

uri, steps = sys.argv[1], {}
def step(label, work):
    wall, cpu = time.perf_counter(), time.process_time()
    value = work()
    steps[label] = [time.process_time() - cpu, time.perf_counter() - wall]
    return value

step("import mlflow", lambda: __import__("mlflow"))
import mlflow
from mlflow.entities import Metric, Param
client = step(
    "MlflowClient + store (SQLAlchemy models, engine, alembic schema check)",
    lambda: (lambda c: (c, c.get_experiment_by_name("churnlab")))(mlflow.MlflowClient(uri))[0],
)
experiment = client.get_experiment_by_name("churnlab").experiment_id
step("search RUNNING runs (stale ones)", lambda: client.search_runs(
    [experiment], "attributes.status = 'RUNNING'", max_results=1000))
run = step("create a run", lambda: client.create_run(experiment, tags={"bench": "1"})).info.run_id
step("log 60 params", lambda: client.log_batch(
    run, params=[Param(f"p{i}", str(i)) for i in range(60)]))
step("log 40 metrics", lambda: client.log_batch(
    run, metrics=[Metric(f"m{i}", float(i), 0, 0) for i in range(40)]))
with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
    handle.write("{}")
    handle.flush()
    step("log an artifact", lambda: client.log_artifact(run, handle.name))
step("end the run", lambda: client.set_terminated(run, "FINISHED"))
print(json.dumps(steps))
"""

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def forced_repro(project: Path, env: dict) -> tuple[float, dict[str, float]]:
    """``dvc repro --force``: its wall time and each stage's span (from DVC's ``Running
    stage`` line to the next one, the last to the end)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro", "--force"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = STAGE_LINE.match(line)
        if found:
            lines.append((found.group(1), time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit(
            "dvc repro --force failed:\n"
            + "".join(line for line in lines if isinstance(line, str))[-3000:]
        )
    ended = time.perf_counter()
    marks = [item for item in lines if isinstance(item, tuple)]
    spans = {
        name: (marks[i + 1][1] if i + 1 < len(marks) else ended) - at
        for i, (name, at) in enumerate(marks)
    }
    return ended - started, spans


def compare_repros(project: Path, env: dict, repeats: int) -> None:
    """Forced repros with the tracking service, without it (each stage in its own process)
    and with tracking off, interleaved: medians per stage."""
    modes = {
        "service": {"CHURNLAB_TRACKING_SERVICE": "on"},
        "own process": {"CHURNLAB_TRACKING_SERVICE": "off"},
        "off": {"CHURNLAB_TRACKING": "off"},
    }
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    spans: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, extra in modes.items():
            wall, span = forced_repro(project, {**env, **extra})
            walls[mode].append(wall)
            spans[mode].append(span)
            print(f"  ({mode}: {wall:.1f} s; load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    table = {mode: median_table(samples) for mode, samples in spans.items()}
    print(f"`dvc repro --force`, per stage (median of {repeats}, seconds; added = on - off):\n")
    print("| stage | service | own process | off | added, service | added, own process |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [*table["off"], "whole repro"]
    for name in rows:
        if name == "whole repro":
            values = {mode: statistics.median(walls[mode]) for mode in modes}
        else:
            values = {mode: table[mode].get(name, float("nan")) for mode in modes}
        service, own, off = values["service"], values["own process"], values["off"]
        print(
            f"| {name} | {service:.2f} | {own:.2f} | {off:.2f} | {service - off:+.2f} "
            f"| {own - off:+.2f} |"
        )


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def make_project(folder: Path) -> Path:
    """A copy of the work tree after a full default ``dvc repro``."""
    from churnlab.pipeline.workspace import commit_all, copy_project

    copy_project(PROJECT, folder)
    commit_all(folder, author="bench", message="copy")
    run(["dvc", "repro"], folder)
    return folder


def fresh_copy(project: Path, scratch: Path, index: int) -> Path:
    target = scratch / f"copy{index}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(project, target, symlinks=True)
    return target


def median_table(samples: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for sample in samples for k in sample))
    return {k: statistics.median(s[k] for s in samples if k in s) for k in keys}


class Tee(io.StringIO):
    """Standard output, also kept for the results file."""

    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        sys.__stdout__.flush()
        return super().write(text)


def main() -> None:
    tee = Tee()
    with contextlib.redirect_stdout(tee):
        args = measure()
    if args.write:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        title = (
            "Tracking service against tracking in each stage's process"
            if args.repro
            else "Tracking: where a stage's tracking time goes"
        )
        figures = tee.getvalue().strip()
        text = (
            f"## {title} (bench/tracking.py)\n\n"
            f"{when}, {os.cpu_count()} CPUs shared with other work (load average at the end "
            f"{load}); `python bench/tracking.py {shlex.join(sys.argv[1:])}`.\n\n"
            + (figures if args.repro else f"```\n{figures}\n```")  # a table, or text
        )
        write_section("tracking" + ("-repro" if args.repro else ""), text, RESULTS)


def measure() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project copy after a full dvc repro")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--notebook-s", type=float, default=5.0)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument(
        "--end-to-end", default="explore,evaluate", help="stages run with tracking on and off"
    )
    parser.add_argument(
        "--repro",
        action="store_true",
        help="only the forced repros: tracking service, own process, off (step 5)",
    )
    parser.add_argument("--write", action="store_true", help=f"write the figures into {RESULTS}")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory(prefix="churnlab-bench-tracking-") as tmp:
        scratch = Path(tmp)
        project = args.project or make_project(scratch / "project")
        if args.repro:
            compare_repros(project, env, args.repeats)
            return args

        samples = []
        uri = f"sqlite:///{(project / 'mlflow.db').resolve()}"
        for _ in range(args.repeats):
            out = run([sys.executable, "-c", STORE_PROBE, uri], PROJECT, env).stdout
            samples.append(json.loads(out.strip().splitlines()[-1]))
        print(
            f"a stage's tracking in its own fresh process, existing store "
            f"(median of {args.repeats}; CPU s, wall s):"
        )
        steps = {
            k: [statistics.median(s[k][i] for s in samples) for i in (0, 1)] for k in samples[0]
        }
        for label, (cpu, wall) in steps.items():
            print(f"  {label:<70} {cpu:5.2f} {wall:6.2f}")
        total = [sum(v[i] for v in steps.values()) for i in (0, 1)]
        print(f"  {'in all':<70} {total[0]:5.2f} {total[1]:6.2f}\n")

        imports = []
        for _ in range(args.repeats):
            out = run([sys.executable, "-c", IMPORT_PROBE % (HEAVY,)], PROJECT, env).stdout
            imports.append(json.loads(out.strip().splitlines()[-1]))
        print(
            f"import churnlab.pipeline.execute: "
            f"{statistics.median(i['s'] for i in imports):.2f} s "
            f"(heavy libraries loaded: {', '.join(imports[0]['heavy']) or 'none'})"
        )

        samples = []
        for index in range(args.repeats):
            copy = fresh_copy(project, scratch, index)
            probe = [sys.executable, "-c", TRACKING_PROBE, str(copy), args.stages]
            out = run([*probe, str(args.notebook_s)], copy, env).stdout
            samples.append(json.loads(out.strip().splitlines()[-1]))
        print(f"\nin one process, tracker opened at once (median of {args.repeats}, seconds):")
        for label, seconds in median_table(samples).items():
            print(f"  {label:<58} {seconds:6.2f}")

        if (
            "open_in_background"
            in run(
                [sys.executable, "-c", "import churnlab.tracking.runs as r; print(dir(r.Tracker))"],
                PROJECT,
                env,
            ).stdout
        ):
            samples = []
            for index in range(args.repeats):
                copy = fresh_copy(project, scratch, index)
                sample = {}
                for stage in args.stages.split(","):
                    probe = [sys.executable, "-c", BACKGROUND_PROBE, str(copy), stage]
                    out = run([*probe, str(args.notebook_s)], copy, env).stdout
                    sample.update(json.loads(out.strip().splitlines()[-1]))
                samples.append(sample)
            print(
                f"\none fresh process per stage, tracker opened in the background, notebook "
                f"simulated by {args.notebook_s:g} s (median of {args.repeats}, seconds):"
            )
            for label, seconds in median_table(samples).items():
                print(f"  {label:<58} {seconds:6.2f}")

        stages = [s for s in args.end_to_end.split(",") if s]
        if stages:
            print(f"\n`churnlab run STAGE`, wall time (median of {args.repeats}, seconds):")
            copy = fresh_copy(project, scratch, args.repeats)
            for stage in stages:
                times: dict[str, list[float]] = {"on": [], "off": []}
                cpu: dict[str, list[float]] = {"on": [], "off": []}
                for _ in range(args.repeats):
                    for mode in ("on", "off"):
                        stage_env = dict(env)
                        if mode == "off":
                            stage_env["CHURNLAB_TRACKING"] = "off"
                        used = resource.getrusage(resource.RUSAGE_CHILDREN)
                        started = time.perf_counter()
                        run(["churnlab", "run", stage], copy, stage_env)
                        times[mode].append(time.perf_counter() - started)
                        now = resource.getrusage(resource.RUSAGE_CHILDREN)
                        cpu[mode].append(
                            now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
                        )
                on, off = (statistics.median(times[m]) for m in ("on", "off"))
                cpu_on, cpu_off = (statistics.median(cpu[m]) for m in ("on", "off"))
                print(
                    f"  {stage:<10} tracking on {on:6.2f}   off {off:6.2f}   added {on - off:+6.2f}"
                    f"   (CPU s, runner and kernel: on {cpu_on:6.2f}   off {cpu_off:6.2f})"
                )
    return args


if __name__ == "__main__":
    main()
