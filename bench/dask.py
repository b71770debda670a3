# ruff: noqa: E402 (the import path is fixed before the imports)
"""Benchmark of scale-out on Dask: 10 million customers generated, scored and monitored.

On a project whose pipeline has run (a champion in its registry), with a ``LocalCluster``
that churnlab starts (``compute.workers`` workers, one thread each), into a temporary folder:

1. ``--customers`` (10,000,000) customers of one month generated as a partitioned Parquet
   dataset (``compute.partition_rows`` per part) on the cluster; then judged by the monitor
   on the cluster (read, quality, drift, champion scores, performance with labels);
2. the same judgement in plain pandas in one process (the whole month read into one frame),
   unless ``--no-plain``; wall time and peak memory of both (the resident memory of this
   process and every process under it, the workers too, sampled every 0.2 s);
3. scoring throughput (customers per second: read a part, type it, score it with the
   champion) here, on 1 worker and on 2 workers, over ``--score-customers`` of the month;
4. search: 16 candidates x 3 folds of gradient boosting on ``--search-rows`` customers of
   the month, on 2 workers against 1 (wall time, same ranking).

Prints the figures and writes them into ``bench/RESULTS.md`` between the dask markers::

    .venv/bin/python bench/dask.py                 # 10M, plain run, search on 1M
    .venv/bin/python bench/dask.py --customers 1000000 --search-rows 100000
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the dask package: with bench/ first on the import path (as Python
# puts a script's folder), `import dask` would find this file, here and in the workers.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))  # last: bench/results.py, after dask

import argparse
import os
import platform
import tempfile
import threading
import time
from datetime import UTC, datetime

import pandas as pd
import psutil
from results import write_section  # bench/, put last on sys.path above

from churnlab.compute.cluster import ComputeSettings, connect, gather
from churnlab.compute.generate import MonthPlan, generate_month
from churnlab.compute.monitor import summarise_part
from churnlab.config import get_key, load_params
from churnlab.data import TableSpec, read_table, validate_table
from churnlab.monitoring.months import month_parts
from churnlab.monitoring.simulate import scenarios_from_params
from churnlab.monitoring.verdict import Monitor

PROJECT = Path(__file__).resolve().parent.parent
MONTH = "2027-01"


class PeakMemory:
    """The peak resident memory of this process and all its descendants (workers too)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def measure(job):
    """(result, seconds, peak bytes) of ``job()``."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = job()
        seconds = time.perf_counter() - started
    return result, seconds, memory.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--customers", type=int, default=10_000_000)
    parser.add_argument("--score-customers", type=int, default=2_000_000)
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--no-plain", action="store_true", help="skip the one-process run")
    parser.add_argument("--no-search", action="store_true")
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    root = args.project.resolve()
    params = load_params(root)
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    compute = ComputeSettings.load(root, environ={})
    compute = ComputeSettings(
        "dask", None, compute.workers, compute.memory_per_worker, compute.partition_rows
    )
    raw_path = root / get_key(params, "paths.raw", "params/paths.yaml")
    raw = read_table(raw_path)
    typed = validate_table(raw, spec, str(raw_path))
    simulate = get_key(params, "monitor.simulate", "params/monitor.yaml")
    scenarios = scenarios_from_params(simulate.get("scenarios") or [], spec)
    plan = MonthPlan(MONTH, args.customers, compute.partition_rows, int(simulate["seed"]))
    load = os.getloadavg()
    lines = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    monitor = Monitor.open(root)
    with tempfile.TemporaryDirectory(prefix="churnlab-dask-") as temp:
        folder = Path(temp)
        targets = (folder / "batches" / f"{MONTH}.parquet", folder / "labels" / f"{MONTH}.parquet")
        for target in targets:
            target.parent.mkdir(parents=True)
        rows = []
        with connect(compute) as client:
            count, seconds, peak = measure(
                lambda: generate_month(raw, typed, spec, scenarios, plan, targets, client, compute)
            )
            rows.append(("generate, Dask, 2 workers", count, seconds, peak))
            parts = [str(p) for p in month_parts(targets[0])]
            print(f"generated {count} customers in {len(parts)} parts: {seconds:.1f} s")

            def judge_on_cluster():
                from churnlab.compute.monitor import combine_parts

                shared = client.scatter(
                    [spec, dict(monitor.fill_missing), monitor.champion, None], broadcast=True
                )
                futures = client.map(
                    summarise_part, parts, *[[s] * len(parts) for s in shared], pure=False
                )
                quality, columns = combine_parts(gather(client, futures, compute, "bench"))
                return monitor.judge_columns(MONTH, quality, columns)

            cluster_verdict, seconds, peak = measure(judge_on_cluster)
            rows.append(("monitor, Dask, 2 workers", count, seconds, peak))
            print(f"judged on the cluster: {seconds:.1f} s, peak {_gib(peak)}")

            score_parts = parts[: max(1, args.score_customers // plan.partition_rows)]
            scored = sum(len(pd.read_parquet(p, columns=[spec.id_column])) for p in score_parts)

            def score(part: str, champion, spec) -> int:
                from churnlab.monitoring.quality import type_month

                frame = type_month(read_table(Path(part)), spec)
                return int(len(champion.scores(frame)))

            throughput = {}

            def cluster_seconds(client) -> float:
                """Wall seconds to score every part on the cluster's workers (map and gather)."""
                return measure(
                    lambda: client.gather(
                        client.map(
                            score, score_parts, champion=monitor.champion, spec=spec, pure=False
                        )
                    )
                )[1]

            _, seconds, _ = measure(lambda: [score(p, monitor.champion, spec) for p in score_parts])
            throughput["here (one process)"] = scored / seconds
            throughput["Dask, 2 workers"] = scored / cluster_seconds(client)
        one = ComputeSettings("dask", None, 1, compute.memory_per_worker, compute.partition_rows)
        with connect(one) as client:
            throughput["Dask, 1 worker"] = scored / cluster_seconds(client)
        if not args.no_plain:

            def plain():
                from churnlab.monitoring.months import read_month

                return monitor.judge(MONTH, read_month(targets[0]), None)

            try:
                plain_verdict, seconds, peak = measure(plain)
                rows.append(("monitor, plain pandas, one process", count, seconds, peak))
                same = plain_verdict == cluster_verdict
            except MemoryError:
                rows.append(("monitor, plain pandas, one process", count, float("nan"), 0))
                same = None
        search = None
        if not args.no_search:
            search = bench_search(targets[0], args.search_rows, compute, spec, monitor.fill_missing)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    say("## Scale-out on Dask (bench/dask.py)\n")
    say(
        f"{stamp}, {platform.node() or 'vm'}, {os.cpu_count()} CPUs, "
        f"{_gib(psutil.virtual_memory().total)} memory; load average before "
        f"{load[0]:.2f} (the machine was shared with other agents: times are distorted); "
        f"LocalCluster of {compute.workers} workers x 1 thread, {compute.memory_per_worker} "
        f"each; {plan.partitions} partitions of {plan.partition_rows} customers.\n"
    )
    say("| job | customers | wall time | peak memory (all processes) |")
    say("| --- | --- | --- | --- |")
    for name, n, seconds, peak in rows:
        say(f"| {name} | {n:,} | {seconds:.1f} s | {_gib(peak)} |")
    if not args.no_plain:
        say(f"\nVerdict on the cluster identical to the plain run: {same}.\n")
    say("| scoring throughput (read, type, score) | customers per second |")
    say("| --- | --- |")
    for name, rate in throughput.items():
        say(f"| {name} | {rate:,.0f} |")
    if search:
        say(
            f"\nSearch, 16 candidates x 3 folds of gradient boosting on {args.search_rows:,} "
            f"customers: 1 worker {search['one']:.1f} s, 2 workers {search['two']:.1f} s "
            f"(speed-up {search['one'] / search['two']:.2f}x); same ranking: "
            f"{search['same']}."
        )
    write_section("dask", "\n".join(lines), args.results)
    return 0


def bench_search(dataset: Path, rows: int, compute, spec, fill_missing: dict) -> dict:
    """16 candidates x 3 folds on 1 worker, then on 2: wall times, same ranking."""
    from churnlab.data import TARGET_COLUMN
    from churnlab.monitoring.quality import type_month
    from churnlab.search import search_candidates, search_hyperparameters

    parts, frames = month_parts(dataset), []
    labels_folder = dataset.parent.parent / "labels" / dataset.name
    for part in parts:
        frames.append(type_month(read_table(part), spec))
        if sum(len(f) for f in frames) >= rows:
            break
    month = pd.concat(frames, ignore_index=True).iloc[:rows]
    labels = pd.concat(read_table(p) for p in month_parts(labels_folder)[: len(frames)])
    churned = labels.set_index(spec.id_column)[spec.target].eq(spec.positive_label)
    month[TARGET_COLUMN] = churned.reindex(month[spec.id_column]).to_numpy().astype(int)
    month = month.fillna({k: float(v) for k, v in fill_missing.items() if k in month})
    numeric, categorical = list(spec.numeric), list(spec.categorical)
    space = {
        "learning_rate": [0.05, 0.1],
        "max_leaf_nodes": [15, 31],
        "min_samples_leaf": [20, 40],
        "l2_regularization": [0.0, 1.0],
    }
    candidates = search_candidates(space, "grid", 16, 0)
    base = {"max_iter": 100}
    args = (
        month,
        numeric,
        categorical,
        TARGET_COLUMN,
        "gradient_boosting",
        base,
        candidates,
        3,
        42,
    )
    found, times = {}, {}
    for workers in (1, 2):
        settings = ComputeSettings("dask", None, workers, compute.memory_per_worker, None)
        with connect(settings) as client:
            started = time.perf_counter()
            found[workers] = search_hyperparameters(*args, client=client)
            times[workers] = time.perf_counter() - started
    ranks = [[c["rank"] for c in found[w]["candidates"]] for w in (1, 2)]
    return {"one": times[1], "two": times[2], "same": ranks[0] == ranks[1]}


if __name__ == "__main__":
    raise SystemExit(main())
