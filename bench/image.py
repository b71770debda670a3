"""Benchmark of the service's container image: its size against the 600 MB budget, what takes
the room, and the time from `run` to a ready service (/ready answers 200).

Needs the image (`make image`). With ``--builds`` also the CI set-up's dependency stage
(`make image-deps`) built from nothing (``--no-cache``) and again from its cache. Prints the
figures and writes them into bench/RESULTS.md between the image markers::

    .venv/bin/python bench/image.py                    # churnlab:latest, 3 starts
    .venv/bin/python bench/image.py --builds           # and the dependency stage's build times
    .venv/bin/python bench/image.py --image churnlab:test --repeats 5 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
BASE_IMAGE = "churnlab-base:bookworm"
BUDGET_MB = 600
SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages"


def engine() -> tuple[list[str], dict]:
    """docker when its daemon answers, else podman with the project's settings."""
    env = dict(os.environ)
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return [docker], env
    env["CONTAINERS_CONF"] = str(ROOT / "deploy" / "containers.conf")
    return ["podman"], env


def call(command: list[str], env: dict, *args: str) -> str:
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, check=True
    ).stdout


def size_mb(command, env, image: str) -> float:
    return int(call(command, env, "image", "inspect", "--format", "{{.Size}}", image)) / 1e6


def largest_packages(command, env, image: str, count: int = 6) -> list[tuple[str, float]]:
    """The biggest folders of the image's venv, in MB."""
    out = call(command, env, "run", "--rm", image, "sh", "-c", f"du -sk {SITE_PACKAGES}/*")
    sizes = []
    for line in out.splitlines():
        kilobytes, path = line.split("\t")
        sizes.append((Path(path).name, int(kilobytes) / 1024))
    return sorted(sizes, key=lambda item: -item[1])[:count]


def seconds_to_ready(command, env, image: str, limit: float = 120) -> float:
    """From `run -d` to the first 200 of /ready, the container removed afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = f"churnlab-bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        call(
            command,
            env,
            *("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"),
            *("-p", f"127.0.0.1:{port}:8000", image),
        )
        while time.perf_counter() - start < limit:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"churnlab: error: {image}: not ready within {limit:.0f} s")
    finally:
        subprocess.run([*command, "rm", "-f", name], capture_output=True, env=env)


def builder_seconds(command, env, cold: bool) -> float:
    """One build of the Dockerfile's builder stage, from nothing or from the cache."""
    ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
    args = ["build", "-q", "--target", "builder", "-t", "churnlab-builder:bench"]
    args += ["--no-cache"] if cold else []
    args += ["--secret", f"id=ca_bundle,src={ca_bundle}"] if Path(ca_bundle).is_file() else []
    args += ["--format", "docker"] if command[0].endswith("podman") else []
    start = time.perf_counter()
    call(command, env, *args, str(ROOT))
    return time.perf_counter() - start


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def report(image: str, figures: dict, engine_name: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    biggest = ", ".join(f"{name} {mb:.0f}" for name, mb in figures["largest"])
    starts = ", ".join(f"{s:.1f}" for s in figures["starts"])
    builds = "".join(
        f"| dependency stage (`make image-deps`) built {how} | {seconds:.0f} s | |\n"
        for how, seconds in figures.get("builds", {}).items()
    )
    return f"""<!-- image -->
## Container image (bench/image.py)

{now}, {platform.node()}, {engine_name}, {figures["load"]} (the machine was shared with
other agents: start times are distorted upwards).

| figure | measured | target |
| --- | --- | --- |
| image `{image}` | {figures["size"]:.0f} MB | <= {BUDGET_MB} MB |
| of which the base (`{BASE_IMAGE}`: Debian minbase, python3) | {figures["base"]:.0f} MB | |
| largest packages in the venv (MB) | {biggest} | |
| `run` to `/ready` (median of {len(figures["starts"])}: {starts} s) | \
{statistics.median(figures["starts"]):.1f} s | |
{builds}<!-- /image -->
"""


def write_section(text: str) -> None:
    """Replace the image section of bench/RESULTS.md (or add it), keeping everything else."""
    old = RESULTS.read_text()
    pattern = re.compile(r"<!-- image -->\n.*?<!-- /image -->\n?", re.S)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else f"{old.rstrip()}\n\n{text}"
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="churnlab:latest")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--builds", action="store_true", help="time the dependency stage too")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    command, env = engine()
    figures = {
        "size": size_mb(command, env, args.image),
        "base": size_mb(command, env, BASE_IMAGE),
        "largest": largest_packages(command, env, args.image),
        "starts": [seconds_to_ready(command, env, args.image) for _ in range(args.repeats)],
        "load": load_note(),
    }
    if args.builds:
        figures["builds"] = {
            "from nothing": builder_seconds(command, env, cold=True),
            "again (cached)": builder_seconds(command, env, cold=False),
        }
        call(command, env, "rmi", "churnlab-builder:bench")
    text = report(args.image, figures, Path(command[0]).name)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
