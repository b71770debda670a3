"""Where a single-customer ``POST /predict`` spends its time, part by part (issue 13).

On a project whose pipeline has run (the champion in its registry, or ``--model FILE``),
for ``--requests`` (2,000) requests of one customer:

1. in process, each part of the handler timed with marks around it (this thread's CPU
   time, ``time.thread_time``; ``--clock wall``: ``perf_counter``): the
   JSON body parsed, the customer checked against the schema (the service's own rules, no
   pydantic), the model's input matrix built (numpy, no pandas), the probability from the
   trees, the Prometheus series recorded, the answer encoded as JSON;
2. beside them, what the other ways of scoring one customer cost: the estimator's own
   ``predict_proba`` (one Python call per tree) with one OpenMP thread and with two, and
   the Pipeline on a one-row pandas DataFrame; and the thread-pool hop a synchronous (``def``)
   endpoint would pay, which the ``async def`` endpoint does not;
3. the whole app (FastAPI, the metrics middleware, the handler) called as ASGI in the
   process: no socket, no HTTP parsing;
4. ``churnlab serve`` over loopback (server on CPU 0, this client on CPU 1, one keep-alive
   connection, one request at a time): the client's latency and the server's CPU time per
   request; its difference with 3 is uvicorn's HTTP parsing, the socket and the event loop.

Medians over the requests. Prints the table and writes it into ``bench/RESULTS.md`` between
the serve-parts markers::

    .venv/bin/python bench/serve_parts.py
    .venv/bin/python bench/serve_parts.py --requests 500 --results /tmp/r.md
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from results import write_section  # bench/ is the script's folder, first on sys.path
from threadpoolctl import threadpool_limits

from churnlab.config import get_key, load_params
from churnlab.serving.app import Service, create_app
from churnlab.serving.metrics import ServiceMetrics
from churnlab.serving.models import limit_threads, load_served_model
from churnlab.serving.requests import RequestRules, customers_table, parse_json
from churnlab.serving.settings import serve_settings

PROJECT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
# the in-process parts: this thread's CPU time by default, which the other processes of a
# shared machine disturb far less than the wall clock (--clock wall for perf_counter)
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def log(message: str) -> None:
    print(f"[bench serve-parts] {message}", file=sys.stderr, flush=True)


def one_customer(root: Path, params: dict) -> dict:
    """A customer of the test split as a caller sends it (the schema's fields)."""
    schema = params["schema"]
    row = pd.read_parquet(root / get_key(params, "paths.test", "params/paths.yaml")).iloc[0]
    return {
        **{name: float(row[name]) for name in schema["numeric"]},
        **{name: str(row[name]) for name in schema["categorical"]},
    }


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(call, count: int) -> float:
    """Median microseconds of ``call()`` over ``count`` calls (after a few to warm up)."""
    for _ in range(20):
        call()
    samples = []
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
    return median_us(samples)


def handler_parts(model, rules: RequestRules, body: bytes, count: int) -> dict[str, float]:
    """The handler's steps as app.py runs them, each between two clock marks."""
    metrics = ServiceMetrics()
    names = ("parse", "validate", "matrix", "trees", "metrics", "respond")
    trees = getattr(model.fast, "trees", None)  # None: before the flat trees (a comparison)
    samples: dict[str, list[float]] = {name: [] for name in (*names, "total")}
    for index in range(count + 20):
        marks = [clock()]
        payload = parse_json(body)
        marks.append(clock())
        columns, ids, _ = customers_table(payload, rules)
        marks.append(clock())
        matrix = model.fast.matrix(columns)
        marks.append(clock())
        if trees is not None:
            scores = trees.probabilities(matrix)
        else:
            scores = model.fast.estimator.predict_proba(matrix)[:, 1]
        marks.append(clock())
        metrics.observe_predictions(model.version, scores, model.threshold)
        metrics.observe_request("/predict", 200, marks[-1] - marks[0])
        marks.append(clock())
        predictions = [
            {
                rules.id_column: customer_id,
                "probability": score,
                "decision": int(score >= model.threshold),
                "model_version": model.version,
            }
            for customer_id, score in zip(ids, scores.tolist(), strict=True)
        ]
        answer = {"model": {"name": model.name, "version": model.version}}
        json.dumps({**answer, "threshold": model.threshold, "predictions": predictions})
        marks.append(clock())
        if index < 20:  # warm-up
            continue
        for name, start, end in zip(names, marks, marks[1:], strict=False):
            samples[name].append(end - start)
        samples["total"].append(marks[-1] - marks[0])
    return {name: median_us(values) for name, values in samples.items()}


def alternatives(model, rules: RequestRules, body: bytes, count: int) -> dict[str, float]:
    """What the other ways of scoring one customer cost, and a thread-pool hop."""
    import anyio.to_thread

    columns, _, _ = customers_table(parse_json(body), rules)
    matrix = model.fast.matrix(columns)
    estimator = model.fast.estimator
    out = {}
    for threads in (1, 2):
        with threadpool_limits(threads):
            out[f"estimator_{threads}"] = timed(lambda: estimator.predict_proba(matrix), count)
    out["pipeline"] = timed(lambda: model.pipeline_scores(columns), count // 4)

    async def hops() -> list[float]:
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await anyio.to_thread.run_sync(lambda: None)
            samples.append(time.perf_counter() - start)
        return samples

    out["thread_hop"] = median_us(asyncio.run(hops()))
    return out


def asgi_app(model, rules: RequestRules, settings, body: bytes, count: int) -> float:
    """Median microseconds of one POST /predict through the ASGI app, in process."""
    service = Service(
        load=lambda: model,
        identity=lambda: model.identity,
        rules=rules,
        settings=settings,
        metrics=ServiceMetrics(),
    )
    service.model = model  # as the loader thread sets it (the lifespan does not run here)
    app = create_app(service)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }

    async def one() -> int:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = []

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        return status[0]

    async def all_of_them() -> list[float]:
        samples = []
        for index in range(count + 20):
            start = clock()
            status = await one()
            if status != 200:
                raise SystemExit(f"the app answered {status} in process")
            if index >= 20:
                samples.append(clock() - start)
        return samples

    return median_us(asyncio.run(all_of_them()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def over_http(root: Path, model_arg: str, body: bytes, count: int) -> dict[str, float]:
    """`churnlab serve` on CPU 0, requests one at a time from CPU 1 on one connection."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "churnlab"), "serve", "--port", str(port)]
    command += ["--model", model_arg]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(SERVER_CPU), *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    logfile = Path(tempfile.mkdtemp(prefix="churnlab-serve-parts-")) / "serve.log"
    with logfile.open("w") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"churnlab serve did not get ready: {logfile.read_text()}")
            time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port)
        headers = {"Content-Type": "application/json"}
        samples = []
        before = None
        for index in range(count + 50):
            if index == 50:
                before = cpu_seconds(server.pid)
            start = time.perf_counter()
            connection.request("POST", "/predict", body, headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"/predict answered {response.status}")
            if index >= 50:
                samples.append(time.perf_counter() - start)
        used = cpu_seconds(server.pid) - before
        connection.close()
        scoring = next(
            (line for line in logfile.read_text().splitlines() if "scored with" in line), ""
        )
        return {
            "latency": median_us(samples),
            "cpu": used / count * 1e6,
            "scoring": scoring.split("scored with ")[-1],
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def report(parts, other, app_us, http, model, count: int, load: float, kind: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    scoring = parts["matrix"] + parts["trees"]
    handler = parts["total"]
    flat = getattr(model.fast, "trees", None) is not None
    rows = [
        ("parse the JSON body (`json.loads`)", parts["parse"]),
        (
            "check the customer against the schema (the service's rules, no pydantic)",
            parts["validate"],
        ),
        (
            "build the model's input row (numpy from the fitted encoders, no pandas)",
            parts["matrix"],
        ),
        (
            "the probability: "
            + ("flat trees, all 200 at once in numpy" if flat else "the estimator"),
            parts["trees"],
        ),
        ("record the Prometheus series (predictions, score histogram, request)", parts["metrics"]),
        ("build and encode the JSON answer", parts["respond"]),
        ("**the handler's work, in all**", handler),
        (
            "FastAPI routing, the middleware, the Response (the ASGI app in process minus the "
            "handler)",
            app_us - handler,
        ),
        (
            "uvicorn: HTTP parsing, the socket, the event loop (server CPU per request minus "
            "the ASGI app)",
            http["cpu"] - app_us,
        ),
        ("**server CPU per request over loopback** (`/proc`, one request at a time)", http["cpu"]),
    ]
    lines = [
        "## Where a single-customer request's time goes (bench/serve_parts.py)",
        "",
        f"{now}, {platform.node()}, {os.cpu_count()} CPUs, 1-minute load {load:.2f} at the "
        f"start (the machine was shared with other agents); {model.name} version "
        f"{model.version}; medians of {count} requests of one customer; one OpenMP thread "
        "(as `churnlab serve` sets); in process, "
        + ("the thread's CPU time" if kind == "cpu" else "wall time (perf_counter)")
        + "; over loopback, the server's CPU time (`/proc`) and the client's wall time.",
        "",
        "| part | µs |",
        "| --- | ---: |",
        *(f"| {name} | {value:.0f} |" for name, value in rows),
        f"| client latency over loopback, one request at a time (server: {http['scoring']}) | "
        f"{http['latency']:.0f} |",
        "",
        "The alternatives, one customer each:",
        "",
        "| scoring one customer | µs |",
        "| --- | ---: |",
        f"| numpy input + {'flat trees' if flat else 'the estimator'} (the service's way, "
        f"as above) | {scoring:.0f} |",
        f"| numpy input + the estimator's `predict_proba` (a Python call per tree), 1 OpenMP "
        f"thread | {parts['matrix'] + other['estimator_1']:.0f} |",
        f"| the same, 2 OpenMP threads (a thread team woken for every tree) | "
        f"{parts['matrix'] + other['estimator_2']:.0f} |",
        f"| the Pipeline on a one-row pandas DataFrame (ColumnTransformer's checks) | "
        f"{other['pipeline']:.0f} |",
        f"| the thread-pool hop a `def` endpoint would add (`anyio.to_thread`; the endpoint is "
        f"`async def`, so it is not paid) | {other['thread_hop']:.0f} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--model", default="champion", help='"champion" or a .skops file')
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    root = args.project.resolve()
    limit_threads()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CPU:
        os.sched_setaffinity(0, {CLIENT_CPU})
    load = os.getloadavg()[0]
    params = load_params(root)
    settings = serve_settings(params, {}, {"model": args.model})
    rules = RequestRules.from_params(params, settings.max_customers)
    model = load_served_model(root, settings, rules.features)
    if model.fast is None:
        raise SystemExit("this model is scored by its Pipeline: there are no parts to time")
    body = json.dumps(one_customer(root, params)).encode()
    log(f"the handler's parts, {args.requests} requests")
    parts = handler_parts(model, rules, body, args.requests)
    log("the ASGI app in process")
    app_us = asgi_app(model, rules, settings, body, args.requests)
    log("the alternatives")  # last in process: two OpenMP threads leave a thread team behind
    other = alternatives(model, rules, body, args.requests)
    log("churnlab serve over loopback")
    http = over_http(root, args.model, body, args.requests)
    text = report(parts, other, app_us, http, model, args.requests, load, args.clock)
    print(text)
    write_section("serve-parts", text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
