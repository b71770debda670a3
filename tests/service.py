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

from conftest import free_port, tool_env

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


def _status(client: httpx.Client, path: str) -> int:
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
                    seen = (_status(client, "/health"), _status(client, "/ready"))
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
