"""Benchmark of batch scoring (``churnlab score``) against the model's plain predict_proba.

On a project whose pipeline has run (a champion in its registry), for ``--rows`` synthetic
customers (bench/synth.py: rows of the raw table drawn with replacement, numbers jittered,
fresh ids; the target column kept, as in a labelled file) written once as CSV and as Parquet:

1. end to end in process: ``churnlab.serving.score.score_file`` (read, validate each row,
   score, write the scores and the rejects atomically), CSV to CSV and Parquet to Parquet;
2. its phases on their own, on the CSV: read, validate (``check_rows``), predict, encode and
   write, to show where the time goes;
3. the limit: ``model.predict_proba`` on the same customers already typed in memory;
4. ``churnlab score`` as a command on the CSV (start-up and the champion from the registry
   included), once.

Medians of ``--repeats``; customers per second = rows / seconds. Prints the figures and
writes them into ``bench/RESULTS.md`` between the score markers::

    .venv/bin/python bench/score.py                        # 1,000,000 customers
    .venv/bin/python bench/score.py --rows 100000 --repeats 1 --results /tmp/r.md

The data and outputs go to a temporary folder; the project is only read.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from results import write_section  # bench/ is the script's folder
from synth import generate_customers  # bench/ is the script's folder, so first on sys.path

from churnlab.config import get_key, load_params
from churnlab.data import TableSpec, read_table
from churnlab.files import write_atomic_all
from churnlab.monitoring.champion import load_champion
from churnlab.serving.rows import check_rows
from churnlab.serving.score import (
    ScoreSettings,
    ScoringModel,
    encode,
    read_customers,
    score_file,
)

PROJECT = Path(__file__).resolve().parent.parent
TARGET = 100_000  # customers per second, end to end (issue 13)


CPU = {}  # label -> median CPU seconds of this process (every thread), beside the wall time


def timed(action, repeats: int, label: str = "") -> tuple[float, object]:
    """The median wall time of ``repeats`` calls, and the last call's result.

    The median CPU time goes to ``CPU[label]``: on a machine shared with other work the
    wall time grows with the others' load, the CPU time much less.
    """
    times, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = action()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU[label] = statistics.median(cpu)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--note", default="shared with other work", help="the machine's load")
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    root = args.project.resolve()
    params = load_params(root)
    schema = get_key(params, "schema", "params/data.yaml")
    spec = TableSpec.from_params(schema)
    settings = ScoreSettings.from_params(params)
    fill = get_key(params, "prepare", "params/prepare.yaml").get("fill_missing")
    template = read_table(root / get_key(params, "paths.raw", "params/paths.yaml"))
    work = Path(tempfile.mkdtemp(prefix="churnlab-bench-score-"))
    try:
        table = generate_customers(
            template, args.rows, args.seed, spec.id_column, spec.target, schema["numeric"]
        )
        csv, parquet = work / "customers.csv", work / "customers.parquet"
        table.to_csv(csv, index=False)
        table.to_parquet(parquet, index=False)
        del table
        start = time.perf_counter()
        model = ScoringModel.from_champion(load_champion(root))
        loading = time.perf_counter() - start
        figures = {}
        for name, source, output in [
            ("csv", csv, work / "scores.csv"),
            ("parquet", parquet, work / "scores.parquet"),
        ]:
            rejects = output.with_name(f"scores.rejects{output.suffix}")
            seconds, counts = timed(
                lambda s=source, o=output, r=rejects: score_file(
                    s, o, r, spec, lambda: model, settings, fill
                ),
                args.repeats,
                name,
            )
            figures[name] = seconds
            print(f"end to end {name}: {seconds:.2f} s, {counts}", file=sys.stderr)
        phases = {}
        phases["read"], raw = timed(lambda: read_customers(csv), args.repeats)
        phases["validate"], checked = timed(lambda: check_rows(raw, spec, "csv"), args.repeats)
        typed = checked.valid.fillna({k: float(v) for k, v in (fill or {}).items()})
        phases["predict"], probabilities = timed(lambda: model.probabilities(typed), args.repeats)
        scored = table_of(typed, spec, probabilities, model)
        phases["encode and write"], _ = timed(
            lambda: write_atomic_all(
                {
                    work / "p.csv": encode(scored, work / "p.csv"),
                    work / "p.rejects.csv": encode(checked.rejects, work / "p.rejects.csv"),
                }
            ),
            args.repeats,
        )
        from churnlab.model import model_input

        inputs = model_input(typed, model.numeric, model.categorical)
        plain, _ = timed(lambda: model.model.predict_proba(inputs), args.repeats, "plain")
        churnlab = str(Path(sys.executable).with_name("churnlab"))
        start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [churnlab, "score", str(csv), str(work / "cli.csv")],
            cwd=root,
            check=True,
            capture_output=True,
        )
        command = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU["command"] = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    threads = os.environ.get("OMP_NUM_THREADS", "unset (all cores)")
    lines = [
        "## Batch scoring (bench/score.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs "
        f"({args.note}); OMP_NUM_THREADS {threads}; champion {model.label}; "
        f"{args.rows:,} synthetic customers (bench/synth.py, target column kept); median of "
        f"{args.repeats}.",
        "",
        "| figure | wall s | customers / s (wall) | CPU s | customers / CPU s | target |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        row(
            "end to end, CSV -> CSV (read, validate, score, write both files)",
            figures["csv"],
            CPU["csv"],
            args.rows,
            f">= {TARGET:,} / s",
        ),
        row(
            "end to end, Parquet -> Parquet",
            figures["parquet"],
            CPU["parquet"],
            args.rows,
            f">= {TARGET:,} / s",
        ),
        row(
            "the limit: `model.predict_proba` on the typed frame in memory",
            plain,
            CPU["plain"],
            args.rows,
            "",
        ),
        row(
            "`churnlab score` as a command, CSV (start-up, champion from the registry), once",
            command,
            CPU["command"],
            args.rows,
            "",
        ),
        f"| loading the champion from the registry (once, in process) | {loading:.1f} | | | | |",
        "",
        "Phases of the CSV run, each on its own (seconds): "
        + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        + ".",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("score", text, args.results)
    return 0


def row(label: str, wall: float, cpu: float, rows: int, target: str) -> str:
    return (
        f"| {label} | {wall:.1f} | {rows / wall:,.0f} | {cpu:.1f} | {rows / cpu:,.0f} | {target} |"
    )


def table_of(typed, spec, probabilities, model):
    """The scored table as ``score_frame`` builds it (for timing the write on its own)."""
    import pandas as pd

    return pd.DataFrame(
        {
            spec.id_column: typed[spec.id_column].astype("str").to_numpy(),
            "probability": probabilities,
            "decision": (probabilities >= model.threshold).astype("int8"),
            "model_version": pd.array([model.version] * len(typed), dtype="str"),
        }
    )


if __name__ == "__main__":
    sys.exit(main())
