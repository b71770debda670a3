"""Starting the real HTTP service (`churnlab serve` under uvicorn) for a test."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from churnlab.config import load_params
from churnlab.data import read_table

from conftest import free_port, run, tool_env

START_SECONDS = 180  # importing MLflow and loading the champion on a busy 2-core machine


@dataclass
class Service:
    """A running `churnlab serve` process and what it printed."""

    url: str
    process: subprocess.Popen
    log: Path
    ready_seen: list[tuple[int, int]] = field(default_factory=list)  # (/health, /ready)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kwargs})

    def output(self) -> str:
        return self.log.read_text()

    def signal(self, number: int) -> None:
        self.process.send_signal(number)


def http_status(client: httpx.Client, path: str) -> int:
    """The status ``path`` answers with; 0 when nothing answers."""
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0


@contextlib.contextmanager
def running_service(
    project: Path, log: Path, *args: str, env: dict | None = None, wait: bool = True
) -> Iterator[Service]:
    """`churnlab serve` on a free loopback port of ``project``; stopped with SIGTERM.

    Args:
        wait: wait for ``/ready``; while waiting, every ``(/health, /ready)`` status pair
            seen is kept in ``ready_seen``.
    """
    port = free_port()
    environment = {**tool_env(), **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen(
            ["churnlab", "serve", "--port", str(port), *args],
            cwd=project,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", process, log)
    try:
        if wait:
            deadline = time.monotonic() + START_SECONDS
            with service.client(timeout=5) as client:
                while True:
                    seen = (http_status(client, "/health"), http_status(client, "/ready"))
                    service.ready_seen.append(seen)
                    if seen[1] == 200:
                        break
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"churnlab serve did not get ready:\n{service.output()}"
                        )
                    time.sleep(0.05)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def raw_customers(project: Path, rows: int) -> tuple[pd.DataFrame, list[dict]]:
    """The first ``rows`` customers of the project's raw file, one of them with a blank
    number (filled as prepare fills it), as read (text) and as a caller sends them (numbers
    as JSON numbers, null for a blank, categories as text, the id)."""
    params = load_params(project)
    schema = params["schema"]
    raw = read_table(project / params["paths"]["raw"]).drop(columns=schema["target"])
    blank = raw[list(schema["numeric"])].isna().any(axis=1) | raw[list(schema["numeric"])].apply(
        lambda column: column.str.strip() == ""
    ).any(axis=1)
    chosen = pd.concat([raw[~blank].head(rows - 1), raw[blank].head(1)], ignore_index=True)
    customers = []
    for _, row in chosen.iterrows():
        customer = {schema["id_column"]: row[schema["id_column"]]}
        for name in schema["numeric"]:
            text = row[name]
            customer[name] = float(text) if isinstance(text, str) and text.strip() else None
        customer.update({name: row[name] for name in schema["categorical"]})
        customers.append(customer)
    return chosen, customers


def batch_scores(project: Path, customers: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """``churnlab score`` of these customers (a CSV file) with the project's champion."""
    customers.to_csv(folder / "customers.csv", index=False)
    run(["churnlab", "score", str(folder / "customers.csv"), str(folder / "scores.parquet")],
        project)  # fmt: skip
    return pd.read_parquet(folder / "scores.parquet")


def assert_same_scores(batch: pd.DataFrame, answer: dict, id_column: str, where: str) -> None:
    """The customers of a /predict answer have the batch file's very probabilities (to the
    bit) and decisions, in the same order."""
    predictions = answer["predictions"]
    assert [p[id_column] for p in predictions] == batch[id_column].astype(str).tolist(), where
    probabilities = np.array([p["probability"] for p in predictions])
    assert np.array_equal(probabilities, batch["probability"].to_numpy()), where
    assert [p["decision"] for p in predictions] == batch["decision"].tolist(), where
