"""Benchmark of the HTTP service (`churnlab serve`) against issue 13's targets.

On a project whose pipeline has run (a champion in its registry), with the server pinned to
one core (``taskset``) and Debian's ``hey`` load generator on the other, over loopback:

1. single-customer requests at 200 a second for ``--seconds`` (60): p50 <= 5 ms,
   p99 <= 25 ms, no errors;
2. ``--large`` (200) requests of 1,000 customers, one after the other: p99 <= 150 ms;
3. side by side, the same champion served by ``mlflow models serve`` (one worker, the same
   core): the most single-customer requests a second each answers with ``--connections``
   (8) connections for ``--burst`` (20) seconds; goal: churnlab at least 2x.

Each measurement waits (up to ``--max-wait`` seconds) for the machine's 1-minute load to fall
under ``--max-load`` and reports the load it had. Prints the figures and writes them into
``bench/RESULTS.md`` between the serve markers::

    .venv/bin/python bench/serve.py                         # full counts
    .venv/bin/python bench/serve.py --seconds 10 --large 50 --burst 5
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from results import write_section  # bench/ is the script's folder, first on sys.path

from churnlab.config import get_key, load_params

PROJECT = Path(__file__).resolve().parent.parent
SERVER_CPU, LOAD_CPU = "0", "1"


def log(message: str) -> None:
    print(f"[bench serve] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait until the 1-minute load is under ``max_load`` (at most ``max_wait`` s); return it."""
    deadline = time.monotonic() + max_wait
    while load_average() > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return load_average()


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited ({process.returncode}) before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


@contextmanager
def server(command: list[str], ready_url: str, cwd: Path, env: dict, log_path: Path):
    """A server process pinned to SERVER_CPU, stopped with SIGTERM (its process group)."""
    with log_path.open("w") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *command],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(ready_url, process)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its descendants (``mlflow models
    serve`` runs its server as a child), from /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        ticks = int(fields[11]) + int(fields[12])
        stats[int(entry.name)] = (int(fields[1]), ticks / os.sysconf("SC_CLK_TCK"))
    tree, total, grew = {pid}, 0.0, True
    while grew:
        grown = {p for p, (parent, _) in stats.items() if parent in tree} | tree
        grew, tree = grown != tree, grown
    for member in tree:
        total += stats.get(member, (0, 0.0))[1]
    return total


def hey_on(process: subprocess.Popen, url: str, body: Path, *options: str) -> dict:
    """hey against a server process, with the server's CPU time per answered request: the
    figure other processes on its core disturb least."""
    before = cpu_seconds(process.pid)
    result = hey(url, body, *options)
    used = cpu_seconds(process.pid) - before
    result["cpu_per_request"] = used / result["requests"] if result["requests"] else float("nan")
    return result


def hey(url: str, body: Path, *options: str) -> dict:
    """Run hey on LOAD_CPU; per-request latencies (s) and status codes from its CSV."""
    command = ["taskset", "-c", LOAD_CPU, "hey", *options, "-m", "POST"]
    command += ["-T", "application/json", "-D", str(body), "-o", "csv", url]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    latencies = np.array([float(r["response-time"]) for r in rows])
    statuses = [int(r["status-code"]) for r in rows]
    offsets = np.array([float(r["offset"]) for r in rows])
    span = float(offsets.max() - offsets.min() + latencies[offsets.argmax()]) if rows else 0.0
    gaps = np.diff(np.sort(offsets))
    return {
        # hey's workers (-c) each tick at -q a second, all started together: their requests
        # leave at the same moment and queue behind each other at a one-core server
        "together": float(np.mean(gaps < 0.0005)) if len(gaps) else 0.0,
        "requests": len(rows),
        "errors": sum(s != 200 for s in statuses),
        "p50": float(np.percentile(latencies, 50)) if rows else float("nan"),
        "p99": float(np.percentile(latencies, 99)) if rows else float("nan"),
        "rate": len(rows) / span if span else 0.0,
    }


def customers(root: Path, params: dict, count: int) -> list[dict]:
    """Customers of the project's test split, as callers send them (the schema's columns)."""
    schema = params["schema"]
    test = pd.read_parquet(root / get_key(params, "paths.test", "params/paths.yaml"))
    rows = test.sample(n=count, replace=count > len(test), random_state=0)
    return [
        {
            **{name: float(row[name]) for name in schema["numeric"]},
            **{name: str(row[name]) for name in schema["categorical"]},
        }
        for _, row in rows.iterrows()
    ]


def measure(args) -> dict:
    root = args.project.resolve()
    params = load_params(root)
    work = Path(tempfile.mkdtemp(prefix="churnlab-bench-serve-"))
    one, many = customers(root, params, 1)[0], customers(root, params, 1000)
    (work / "one.json").write_text(json.dumps(one))
    (work / "many.json").write_text(json.dumps(many))
    (work / "mlflow.json").write_text(json.dumps({"dataframe_records": [one]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["DO_NOT_TRACK"] = "1"
    bin_dir = Path(sys.executable).parent
    # `mlflow models serve` starts `uvicorn` by name: the project's, whatever PATH says
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    results: dict = {"loads": {}}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    churnlab = [str(bin_dir / "churnlab"), "serve", "--port", str(port)]
    with server(churnlab, f"{url}/ready", root, env, work / "serve.log") as process:
        model = httpx.get(f"{url}/model").json()
        results["model"] = f"{model['name']} version {model['version']}"
        hey(f"{url}/predict", work / "one.json", "-z", "3s", "-c", "2")  # warm
        results["loads"]["steady"] = wait_for_quiet(args.max_load, args.max_wait)
        log(f"single customers, 200/s for {args.seconds} s")
        results["steady"] = hey_on(
            process,
            f"{url}/predict",
            work / "one.json",
            "-z",
            f"{args.seconds}s",
            "-c",
            "4",
            "-q",
            "50",
        )
        results["loads"]["large"] = wait_for_quiet(args.max_load, args.max_wait)
        log(f"{args.large} requests of 1,000 customers")
        results["large"] = hey_on(
            process, f"{url}/predict", work / "many.json", "-n", str(args.large), "-c", "1"
        )
        results["loads"]["churnlab_burst"] = wait_for_quiet(args.max_load, args.max_wait)
        log(f"churnlab: most requests a second, {args.connections} connections")
        results["churnlab_burst"] = hey_on(
            process,
            f"{url}/predict",
            work / "one.json",
            "-z",
            f"{args.burst}s",
            "-c",
            str(args.connections),
        )
    name = get_key(params, "tracking.registered_model", "params/tracking.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
    mlflow += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with server(mlflow, f"{url}/ping", root, {**env, **store}, work / "mlflow.log") as process:
        hey(f"{url}/invocations", work / "mlflow.json", "-z", "3s", "-c", "2")  # warm
        results["loads"]["mlflow_burst"] = wait_for_quiet(args.max_load, args.max_wait)
        log(f"mlflow models serve: most requests a second, {args.connections} connections")
        results["mlflow_burst"] = hey_on(
            process,
            f"{url}/invocations",
            work / "mlflow.json",
            "-z",
            f"{args.burst}s",
            "-c",
            str(args.connections),
        )
    shutil.rmtree(work, ignore_errors=True)
    return results


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(results: dict, args) -> str:
    steady, large = results["steady"], results["large"]
    ours, theirs = results["churnlab_burst"], results["mlflow_burst"]
    ratio = ours["rate"] / theirs["rate"] if theirs["rate"] else float("inf")
    loads = results["loads"]
    worst = max(loads.values())
    quiet = (
        f"1-minute load at most {worst:.2f} at the start of each measurement"
        if worst <= args.max_load
        else f"busy machine: 1-minute load up to {worst:.2f} at the start of a measurement "
        f"(other agents' work; waited up to {args.max_wait:.0f} s for it to fall under "
        f"{args.max_load:g}), so the figures are pessimistic"
    )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## HTTP service (bench/serve.py)",
        "",
        f"{now}, {platform.node()}, {os.cpu_count()} CPUs; {quiet}. `churnlab serve` "
        f"({results['model']}) on CPU {SERVER_CPU}, `hey` on CPU {LOAD_CPU}, loopback, "
        "keep-alive connections.",
        "",
        "| figure | measured | target |",
        "| --- | --- | --- |",
        f"| single customer, 200 requests/s for {args.seconds} s ({steady['requests']} "
        f"requests): p50 / p99 / errors | {ms(steady['p50'])} / {ms(steady['p99'])} / "
        f"{steady['errors']} | <= 5 ms / <= 25 ms / 0 |",
        f"| share of those requests sent within 0.5 ms of another (hey's 4 workers tick in "
        f"step while answers come before the next tick: such a burst is answered one after "
        f"the other, so the p50 is near 2.5 times the server's time per request) | "
        f"{steady['together']:.0%} | |",
        f"| the server's CPU time per single-customer request (so at most "
        f"{1 / steady['cpu_per_request']:.0f} requests/s on a core of its own) | "
        f"{ms(steady['cpu_per_request'])} | |",
        f"| 1,000 customers per request ({large['requests']} requests, one at a time): "
        f"p50 / p99 / errors | {ms(large['p50'])} / {ms(large['p99'])} / {large['errors']} "
        f"| p99 <= 150 ms |",
        f"| the server's CPU time per 1,000-customer request | {ms(large['cpu_per_request'])} | |",
        f"| most single-customer requests/s, {args.connections} connections, {args.burst} s: "
        f"churnlab serve | {ours['rate']:.0f}/s (p99 {ms(ours['p99'])}, "
        f"{ours['errors']} errors) | |",
        f"| the same, `mlflow models serve` (1 worker, same core, same champion, "
        f"dataframe_records) | {theirs['rate']:.0f}/s (p99 {ms(theirs['p99'])}, "
        f"{theirs['errors']} errors) | |",
        f"| churnlab / mlflow throughput | {ratio:.1f}x | >= 2x |",
        f"| server CPU time per single-customer request: churnlab / mlflow | "
        f"{ms(ours['cpu_per_request'])} / {ms(theirs['cpu_per_request'])} "
        f"({theirs['cpu_per_request'] / ours['cpu_per_request']:.1f}x) | |",
        "",
        "Loads at the start of each measurement: "
        + ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
        + ".",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--large", type=int, default=200)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=300)
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    for tool in ("taskset", "hey"):
        if not shutil.which(tool):
            raise SystemExit(
                f"{tool} not found: apt-get install {'hey' if tool == 'hey' else 'util-linux'}"
            )
    text = report(measure(args), args)
    print(text)
    write_section("serve", text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
