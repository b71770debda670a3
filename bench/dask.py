# ruff: noqa: E402 (the import path is fixed before the imports)
"""Benchmark of scale-out on Dask: 10 million customers generated, scored and monitored.

On a project whose pipeline has run (a champion in its registry), with a ``LocalCluster``
that churnlab starts (``compute.workers`` workers, one thread each), into a temporary folder:

1. ``--customers`` (10,000,000) customers of one month generated as a partitioned Parquet
   dataset (``compute.partition_rows`` per part) on the cluster; then judged by the monitor
   on the cluster (read, quality, drift, champion scores, performance with labels);
2. the same judgement in plain pandas in one process (the whole month read into one frame),
   unless ``--no-plain``, in a child process limited to ``--plain-memory`` of address space
   (a ``MemoryError`` there is recorded as the plain run not fitting, instead of pushing
   the machine's other processes out of memory); wall time and peak memory of both (the
   resident memory of this process and every process under it, the workers too, sampled
   every 0.2 s);
3. scoring throughput (customers per second: read a part, type it, score it with the
   champion) here (its OpenMP threads, then one), on 1 worker and on 2 workers, over
   ``--score-customers`` of the month;
4. search: 16 candidates x 3 folds of gradient boosting (``--search-iterations``) on
   ``--search-rows`` customers of the month, here and on 2 workers against 1 (wall time,
   same ranking), after an estimate from one fit.

Every worker runs one thread and its numeric libraries (OpenMP, BLAS) one thread each (the
nanny's environment; churnlab.compute.cluster asks for it): a worker per core, no
oversubscription. Before the parallel jobs, the speed-up the machine offers two processes
at that moment is measured with two busy loops (``ceiling``): on cores shared with other
work, 2 workers cannot beat it.

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
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import threading
import time
from datetime import UTC, datetime

import pandas as pd
import psutil
from results import write_section  # bench/, put last on sys.path above

from churnlab.compute.cluster import ComputeSettings, connect, gather, share
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


def _omp_threads() -> int:
    """The OpenMP threads scikit-learn uses in this process (``OMP_NUM_THREADS`` or cores)."""
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return _openmp_effective_n_threads()


def _busy(seconds: float) -> int:
    """Count for ``seconds`` of wall time (the ceiling's work)."""
    end, count = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        count += 1
    return count


def parallel_ceiling(seconds: float = 3.0) -> float:
    """The speed-up two processes get over one on this machine now (2.0 on two free cores).

    One busy loop alone, then two at once, for the same wall time: the ratio of the work done.
    """
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        alone = pool.apply(_busy, (seconds,))
    with context.Pool(2) as pool:
        together = sum(pool.map(_busy, [seconds, seconds]))
    return together / alone


def _fit_once(model, features, labels) -> float:
    from sklearn.base import clone
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        started = time.perf_counter()
        clone(model).fit(features, labels)
        return time.perf_counter() - started


def fits_at_once(model, features, labels, processes: int) -> float:
    """Wall time of ``processes`` identical fits run at once, one per forked process: with
    the busy-loop ceiling, what the cores give this work (memory bandwidth and caches are
    shared too), whatever schedules it."""
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        started = time.perf_counter()
        pool.starmap(_fit_once, [(model, features, labels)] * processes)
        return time.perf_counter() - started


def _plain_child(job, limit: int, connection) -> None:
    """Run ``job()`` under an address-space limit; send ("ok", result) or the failure."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        connection.send(("ok", job()))
    except MemoryError as exc:
        connection.send(("MemoryError", f"{type(exc).__name__}: {exc}"[:200]))


def run_limited(job, limit: int):
    """(status, result or reason) of ``job()`` in a forked child limited to ``limit`` bytes."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_plain_child, args=(job, limit, sender))
    child.start()
    sender.close()
    try:
        status, value = receiver.recv()
    except EOFError:
        status, value = "killed", f"the child ended with exit code {child.exitcode}"
    child.join()
    return status, value


def _size(text: str) -> int:
    units = {"GiB": 2**30, "MiB": 2**20}
    return int(float(text[:-3]) * units[text[-3:]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--customers", type=int, default=10_000_000)
    parser.add_argument("--score-customers", type=int, default=2_000_000)
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--search-iterations", type=int, default=100)
    parser.add_argument("--no-plain", action="store_true", help="skip the one-process run")
    parser.add_argument("--plain-memory", default="16GiB", help="the plain run's limit")
    parser.add_argument("--no-search", action="store_true")
    parser.add_argument("--search-only", action="store_true", help="generate, then search")
    parser.add_argument("--estimate-only", action="store_true", help="the search's estimate")
    parser.add_argument(
        "--no-search-here", action="store_true", help="the search on 1 and 2 workers only"
    )
    parser.add_argument("--no-score", action="store_true", help="no end-to-end scoring")
    parser.add_argument(
        "--fit-ceiling", action="store_true", help="also time two fits at once (processes)"
    )
    parser.add_argument(
        "--search-workers", default="1,2", help="the worker counts to search on, e.g. 2"
    )
    parser.add_argument(
        "--search-memory", default=None, help="memory per worker for the search (e.g. 8GiB)"
    )
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
    customers = args.search_rows if args.search_only or args.estimate_only else args.customers
    plan = MonthPlan(MONTH, customers, compute.partition_rows, int(simulate["seed"]))
    load = os.getloadavg()
    lines = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    monitor = Monitor.open(root)
    rows, throughput, search, plain_failure, same = [], {}, None, None, None
    score_failure, same_scores = None, None
    with tempfile.TemporaryDirectory(prefix="churnlab-dask-") as temp:
        folder = Path(temp)
        targets = (folder / "batches" / f"{MONTH}.parquet", folder / "labels" / f"{MONTH}.parquet")
        for target in targets:
            target.parent.mkdir(parents=True)
        with connect(compute) as client:
            count, seconds, peak = measure(
                lambda: generate_month(raw, typed, spec, scenarios, plan, targets, client, compute)
            )
            rows.append(("generate, Dask, 2 workers", count, seconds, peak))
            parts = [str(p) for p in month_parts(targets[0])]
            print(f"generated {count} customers in {len(parts)} parts: {seconds:.1f} s")
            if not (args.search_only or args.estimate_only):
                cluster_verdict, seconds, peak = measure(
                    lambda: judge_on_cluster(client, compute, monitor, spec, parts)
                )
                rows.append(("monitor, Dask, 2 workers", count, seconds, peak))
                print(f"judged on the cluster: {seconds:.1f} s, peak {_gib(peak)}", flush=True)
                if not args.no_score:
                    scoring = ScoreJob(root, params, spec, monitor, folder, targets[0])
                    counts, seconds, peak = measure(lambda: scoring.on_cluster(client, compute))
                    rows.append(
                        ("score, Dask, 2 workers (read, check, score, write)", count, seconds, peak)
                    )
                    print(
                        f"scored on the cluster: {counts} in {seconds:.1f} s, peak {_gib(peak)}",
                        flush=True,
                    )
                ceiling = parallel_ceiling()
                throughput = bench_scoring(client, compute, monitor, spec, parts, args)
        if not (args.search_only or args.estimate_only or args.no_plain):

            def plain():
                from churnlab.monitoring.months import read_month

                return monitor.judge(MONTH, read_month(targets[0]), None)

            (status, value), seconds, peak = measure(
                lambda: run_limited(plain, _size(args.plain_memory))
            )
            if status == "ok":
                rows.append(("monitor, plain pandas, one process", count, seconds, peak))
                # the verdict crossed a pipe as JSON-like data: compare it as JSON
                same = json.dumps(value, sort_keys=True) == json.dumps(
                    cluster_verdict, sort_keys=True
                )
            else:
                plain_failure = (status, value, seconds, peak)
                print(f"plain run: {status}: {value} after {seconds:.1f} s", flush=True)
            if not args.no_score:
                (status, value), seconds, peak = measure(
                    lambda: run_limited(scoring.plain, _size(args.plain_memory))
                )
                if status == "ok":
                    rows.append(("score, plain pandas, one process", count, seconds, peak))
                    same_scores = scoring.same_bytes()
                    print(
                        f"scored plainly: {value} in {seconds:.1f} s; same bytes as "
                        f"the cluster's: {same_scores}",
                        flush=True,
                    )
                else:
                    score_failure = (status, value, seconds, peak)
                    print(f"plain scoring: {status}: {value} after {seconds:.1f} s", flush=True)
        if not args.no_search:
            search = bench_search(targets[0], args, compute, spec, monitor.fill_missing)
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
    for job, failure, same_result, what in (
        ("Plain run", plain_failure, same, "Verdict"),
        ("Plain scoring", score_failure, same_scores, "Scores and rejects written"),
    ):
        if failure:
            status, reason, seconds, peak = failure
            say(
                f"\n{job}, limited to {args.plain_memory} of address space: {status} after "
                f"{seconds:.1f} s at {_gib(peak)} resident ({reason})."
            )
        elif same_result is not None:
            say(f"\n{what} on the cluster identical to the plain run's: {same_result}.\n")
    if throughput:
        say(f"\nTwo-process ceiling before scoring: {ceiling:.2f}x.\n")
        say("| scoring throughput (read, type, score) | customers per second |")
        say("| --- | --- |")
        for name, rate in throughput.items():
            say(f"| {name} | {rate:,.0f} |")
    if search:
        say(
            f"\nSearch, 16 candidates x 3 folds of gradient boosting "
            f"({args.search_iterations} iterations) on {args.search_rows:,} customers; one fit "
            f"{search['fit']:.1f} s, estimated {search['estimate']:.0f} s on 1 worker; "
            f"two-process ceiling {search['ceiling']:.2f}x"
        )
        if "one" in search:
            here = search.get("here")
            say(
                (
                    f"here (one process, {_omp_threads()} OpenMP threads) {here:.1f} s, "
                    if here
                    else ""
                )
                + "1 worker "
                f"{search['one']:.1f} s, 2 workers {search['two']:.1f} s (speed-up "
                f"{search['one'] / search['two']:.2f}x); same ranking: {search['same']}."
            )
    write_section("dask", "\n".join(lines), args.results)
    return 0


def judge_on_cluster(client, compute, monitor, spec, parts: list[str]) -> dict:
    """The verdict of the month's parts, summarised on the workers, judged here."""
    from churnlab.compute.monitor import combine_parts

    shared = share(client, [spec, dict(monitor.fill_missing), monitor.champion, None], "bench")
    futures = client.map(summarise_part, parts, *[[s] * len(parts) for s in shared], pure=False)
    quality, columns = combine_parts(gather(client, futures, compute, "bench"))
    return monitor.judge_columns(MONTH, quality, columns)


def _score(part: str, champion, spec) -> int:
    """Read a part, type it, score it (a task): its number of customers."""
    from churnlab.monitoring.quality import type_month

    frame = type_month(read_table(Path(part)), spec)
    return int(len(champion.scores(frame)))


def bench_scoring(client, compute, monitor, spec, parts: list[str], args) -> dict:
    """Customers per second: here (as many threads as allowed; one), on 2 workers, on 1."""
    from threadpoolctl import threadpool_limits

    score_parts = parts[: max(1, args.score_customers // compute.partition_rows)]
    scored = sum(len(pd.read_parquet(p, columns=[spec.id_column])) for p in score_parts)

    def on(client) -> float:
        # the champion and the spec go to each worker once, not with every task
        champion, spec_ = share(client, [monitor.champion, spec], "bench")
        client.gather([champion, spec_])  # on a worker before the clock starts, as scattered
        futures = client.map(_score, score_parts, champion=champion, spec=spec_, pure=False)
        return scored / measure(lambda: client.gather(futures))[1]

    rates = {}
    rates[f"here (one process, {_omp_threads()} OpenMP threads)"] = (
        scored / measure(lambda: [_score(p, monitor.champion, spec) for p in score_parts])[1]
    )
    with threadpool_limits(1):
        rates["here (one process, one thread)"] = (
            scored / measure(lambda: [_score(p, monitor.champion, spec) for p in score_parts])[1]
        )
    rates["Dask, 2 workers"] = on(client)
    one = ComputeSettings("dask", None, 1, compute.memory_per_worker, compute.partition_rows)
    with connect(one) as single:
        rates["Dask, 1 worker"] = on(single)
    return rates


def bench_search(dataset: Path, args, compute, spec, fill_missing: dict) -> dict:
    """16 candidates x 3 folds: an estimate from one fit, then here, on 1 worker and on 2."""
    from threadpoolctl import threadpool_limits

    from churnlab.data import TARGET_COLUMN
    from churnlab.model import build_model, model_input
    from churnlab.monitoring.quality import type_month
    from churnlab.search import search_candidates, search_hyperparameters

    rows = args.search_rows
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
    base = {"max_iter": args.search_iterations}
    found, times = {}, {}
    # one fit of a fold's size (2/3 of the rows), one thread as on a worker: the estimate
    fold = month.iloc[: len(month) * 2 // 3]
    model = build_model(
        numeric, categorical, "gradient_boosting", 42, gradient_boosting={**base, **candidates[0]}
    )
    with threadpool_limits(1):
        started = time.perf_counter()
        model.fit(model_input(fold, numeric, categorical), fold[TARGET_COLUMN].to_numpy())
        fit = time.perf_counter() - started
    result = {"fit": fit, "estimate": fit * 48, "ceiling": parallel_ceiling()}
    print(
        f"one fit {fit:.1f} s: 48 fits about {fit * 48:.0f} s on 1 worker, "
        f"{fit * 24:.0f} s on 2; two-process ceiling now {result['ceiling']:.2f}x",
        flush=True,
    )
    if args.fit_ceiling:
        features = model_input(fold, numeric, categorical)
        pair = fits_at_once(model, features, fold[TARGET_COLUMN].to_numpy(), 2)
        result["fit_ceiling"] = 2 * fit / pair
        print(
            f"two fits at once, one per process, one thread each: {pair:.1f} s against "
            f"{fit:.1f} s for one alone: the speed-up two workers can reach on this search "
            f"here is {result['fit_ceiling']:.2f}x",
            flush=True,
        )
    if args.estimate_only:
        return result
    search_args = (
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
    if not args.no_search_here:
        started = time.perf_counter()
        found[0] = search_hyperparameters(*search_args)
        times[0] = time.perf_counter() - started
        print(f"here: {times[0]:.1f} s", flush=True)
    memory = args.search_memory or compute.memory_per_worker
    for workers in [int(w) for w in args.search_workers.split(",")]:
        settings = ComputeSettings("dask", None, workers, memory, None)
        with connect(settings) as client:
            started = time.perf_counter()
            found[workers] = search_hyperparameters(*search_args, client=client)
            times[workers] = time.perf_counter() - started
        print(f"{workers} worker(s): {times[workers]:.1f} s", flush=True)
    same = all(found[k] == found[2] for k in found)
    if 1 not in times:
        return {**result, "here": times.get(0), "two": times[2], "same": same, "found": found[2]}
    ranked = sorted(found[2]["candidates"], key=lambda c: c["rank"])
    print(
        "ranking (2 workers): "
        + "; ".join(f"{c['rank']}. {c['params']} {c['roc_auc_mean']:.6f}" for c in ranked[:3])
        + "; ...",
        flush=True,
    )
    return {**result, "here": times.get(0), "one": times[1], "two": times[2], "same": same}


class ScoreJob:
    """``churnlab score`` of the whole month with the champion: on the cluster (the workers
    read the parts) and plainly (``score_file``: the month read into one frame here)."""

    def __init__(self, root, params, spec, monitor, folder: Path, dataset: Path):
        from churnlab.serving.score import ScoreSettings, ScoringModel

        self.spec, self.dataset = spec, dataset
        self.settings = ScoreSettings.from_params(params)
        self.model = ScoringModel.from_champion(monitor.champion, "champion")
        self.fill_missing = dict(monitor.fill_missing)
        self.out = {k: folder / k for k in ("cluster", "plain")}
        for path in self.out.values():
            path.mkdir()

    def on_cluster(self, client, compute) -> dict:
        from churnlab.compute.score import score_on_cluster

        out = self.out["cluster"]
        return score_on_cluster(
            self.dataset,
            out / "scores.parquet",
            out / "rejects.parquet",
            self.spec,
            self.model,
            self.settings,
            self.fill_missing,
            client,
            compute,
        )

    def plain(self) -> dict:
        from churnlab.compute.score import read_input
        from churnlab.serving.score import score_file

        out = self.out["plain"]
        return score_file(
            self.dataset,
            out / "scores.parquet",
            out / "rejects.parquet",
            self.spec,
            lambda: self.model,
            self.settings,
            self.fill_missing,
            raw=read_input(self.dataset),
        )

    def same_bytes(self) -> bool:
        return all(
            (self.out["cluster"] / name).read_bytes() == (self.out["plain"] / name).read_bytes()
            for name in ("scores.parquet", "rejects.parquet")
        )


if __name__ == "__main__":
    raise SystemExit(main())
