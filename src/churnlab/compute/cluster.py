"""Where the heavy work runs: this process, or a Dask cluster (``params/compute.yaml``).

``ComputeSettings.load`` reads the ``compute`` section after the environment
(``CHURNLAB_DASK_SCHEDULER`` wins over ``compute.scheduler``). ``connect`` is the one way to
reach a cluster: it connects to the scheduler at the address, or starts a ``LocalCluster``
bound to 127.0.0.1 when there is none, and always stops what it started. It fails with one
line naming the address before any caller has moved an output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnlab.errors import ChurnlabError

COMPUTE_FILE = "params/compute.yaml"
SCHEDULER_VARIABLE = "CHURNLAB_DASK_SCHEDULER"
PROBE_TIMEOUT = 5.0  # seconds for the first TCP connection (a filtered port hangs)
# Seconds for Dask's handshake once the port has answered the probe. A scheduler on a busy
# machine (two cores at load 10) can take seconds to answer; the earlier limit of 10 s made
# the command fail before judging anything, as if no scheduler were there.
HANDSHAKE_TIMEOUT = 60.0
# a job whose every worker has stayed paused (out of memory) this long stops with one error;
# a local cluster's workers never pause (WORKER_CONFIG), a team's scheduler's may
PAUSED_LIMIT_S = 120.0
_WATCH_S = 2.0


@dataclass(frozen=True)
class ComputeSettings:
    """The ``compute`` section of params/compute.yaml (checked by churnlab.param_rules)."""

    engine: str
    scheduler: str | None
    workers: int
    memory_per_worker: str
    partition_rows: int | None  # None where it is not read (the train stage)

    @classmethod
    def from_section(
        cls, section: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> ComputeSettings:
        """From the section's values; ``CHURNLAB_DASK_SCHEDULER`` overrides the address."""
        environ = os.environ if environ is None else environ
        scheduler = environ.get(SCHEDULER_VARIABLE, "").strip() or section["scheduler"]
        return cls(
            engine=section["engine"],
            scheduler=scheduler,
            workers=int(section["workers"]),
            memory_per_worker=str(section["memory_per_worker"]),
            partition_rows=section.get("partition_rows"),
        )

    @classmethod
    def load(cls, root: Path, environ: Mapping[str, str] | None = None) -> ComputeSettings:
        from churnlab.config import get_key, load_params

        return cls.from_section(get_key(load_params(root), "compute", COMPUTE_FILE), environ)

    @property
    def on_cluster(self) -> bool:
        return self.engine == "dask"


class Silent(Exception):
    """The scheduler's port accepted a connection but sent no Dask handshake in time."""


def _probe(address: str) -> str | None:
    """Why the scheduler's address does not answer now, or None when it does.

    Over plain TCP a Dask scheduler speaks first: it sends its handshake as soon as it
    accepts a connection. ``distributed.Client`` waits for that handshake without a time
    limit, so a port that accepts and stays silent would hang the command; here it is waited
    for ``HANDSHAKE_TIMEOUT`` seconds (a scheduler on a busy machine is slow, not absent).

    Raises:
        Silent: the port accepted the connection and sent nothing.
    """
    import socket

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return None  # other transports: let the client try
        host, port = parse_host_port(location, 8786)  # Dask's default port
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as connection:
            if scheme == "tls":
                return None  # TLS: the client speaks first
            connection.settimeout(HANDSHAKE_TIMEOUT)
            try:
                first = connection.recv(1)
            except TimeoutError:
                raise Silent() from None
            return None if first else "the connection was closed at once"
    except (OSError, ValueError, TypeError) as exc:
        return str(exc) or type(exc).__name__


# The environment of a worker process. A worker runs one task per thread, one thread per core
# it is given; a task in scikit-learn would otherwise start one OpenMP thread per core of the
# machine (HistGradientBoosting) and BLAS threads too: two workers on two cores would run four
# threads and go slower than one. One library thread per task thread keeps a worker per core,
# whatever ``nthreads``. Dask's nanny sets the same by default
# (``distributed.nanny.pre-spawn-environ``); said here so that a changed default cannot
# oversubscribe the cores. Results do not depend on it (HistGradientBoosting's fits are the
# same on any number of threads; tests/test_dask.py checks).
LIBRARY_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# A local worker never pauses: distributed pauses a worker above 80% of its memory until
# spilling frees some, but churnlab's tasks hold their memory while they run and keep
# nothing to spill, so a paused worker whose memory stays between 80% and 95% (where the
# nanny kills it) waits for ever, and the job with it. Unpaused, a task either finishes or
# takes its worker over 95%, and after ``allowed-failures`` workers the job fails in one line.
# (a dotted key: a nested dict would replace the workers' whole "distributed" section)
WORKER_CONFIG = {"distributed.worker.memory.pause": False}


def _where(settings: ComputeSettings) -> str:
    if os.environ.get(SCHEDULER_VARIABLE, "").strip():
        return f"{SCHEDULER_VARIABLE} (environment)"
    return f"{COMPUTE_FILE}: compute.scheduler"


@contextmanager
def connect(settings: ComputeSettings) -> Iterator[Any]:
    """A ``distributed.Client`` for the settings' cluster, closed (and stopped) on exit.

    With an address: connect to that scheduler. Without one: start a ``LocalCluster`` of
    ``workers`` processes (one thread each, ``memory_per_worker`` each) on 127.0.0.1, which is
    stopped on exit whatever happens inside.

    Raises:
        ChurnlabError: the scheduler cannot be reached (naming the address and where it was
            set), or the local cluster cannot start.
    """
    from distributed import Client, LocalCluster

    if settings.scheduler:

        def unreachable(reason: str) -> ChurnlabError:
            return ChurnlabError(
                f"{_where(settings)}: expected a Dask scheduler at {settings.scheduler}, "
                f"found none answering ({reason}): start one (`dask scheduler --host "
                "127.0.0.1`, then `dask worker ADDRESS`), fix the address, or set "
                "compute.scheduler to null for a local cluster"
            )

        def silent(reason: str) -> ChurnlabError:
            return ChurnlabError(
                f"{_where(settings)}: expected a Dask scheduler at {settings.scheduler}: its "
                f"port answers, but no Dask handshake came in {HANDSHAKE_TIMEOUT:g} s "
                f"({reason}): is that port a Dask scheduler's (`dask scheduler`), and is its "
                "machine not overloaded? Fix the address, or try again"
            )

        # a refused port fails at once here; the client itself would retry until its timeout
        try:
            problem = _probe(settings.scheduler)
        except Silent:
            raise silent("nothing sent") from None
        if problem:
            raise unreachable(problem)
        try:
            client = Client(
                settings.scheduler, timeout=f"{HANDSHAKE_TIMEOUT:g}s", set_as_default=False
            )
        except (OSError, TimeoutError, ValueError) as exc:
            raise silent(type(exc).__name__) from None
        try:
            yield client
        finally:
            client.close()
        return
    try:
        cluster = LocalCluster(
            n_workers=settings.workers,
            threads_per_worker=1,
            memory_limit=settings.memory_per_worker,
            host="127.0.0.1",
            dashboard_address=None,
            processes=True,
            env=LIBRARY_THREADS,
            config=WORKER_CONFIG,
        )
    except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
        # RuntimeError: distributed's "Nanny failed to start" when a worker process does not
        # come up in time (seen on a machine busy with other work)
        raise ChurnlabError(
            f"{COMPUTE_FILE}: compute: a local Dask cluster of {settings.workers} workers "
            f"({settings.memory_per_worker} each) could not start: {exc}: try again when the "
            "machine is less busy, or lower compute.workers"
        ) from None
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _same(value: Any) -> Any:
    return value


def share(client: Any, values: list, name: str) -> list:
    """Futures of ``values`` (the table spec, a model, a small table) for every task of a job.

    Each value is a task of its own in the job's graph, not data scattered to the workers:
    the workers that need it fetch it from the one that holds it, and when that worker dies
    the scheduler computes it again from the graph. ``client.scatter(broadcast=True)`` was
    used before: its replication loops for ever when a copy goes missing while it runs (a
    worker restarted, or an earlier job's copy of the same content, under the same hashed
    key, being released), and the command hung. The keys here are new for every job.
    """
    import uuid

    import dask

    token = uuid.uuid4().hex[:8]
    # the values travel in the graph on purpose: once per job, not once per task
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "4GiB"}):
        return [
            client.submit(_same, value, key=f"churnlab-{name}-{token}-{k}", pure=False)
            for k, value in enumerate(values)
        ]


def gather(client: Any, futures: list, settings: ComputeSettings, what: str) -> list:
    """The results of ``futures``, in order; a task that killed its workers is one error.

    A worker that dies mid-job (killed, or out of memory) is not an error: the scheduler runs
    its tasks again on another worker, and a task gives the same result wherever it runs.
    Only a task that took down ``distributed.scheduler.allowed-failures`` workers fails, or a
    job whose every worker stayed paused for memory ``PAUSED_LIMIT_S`` (it would wait for ever).

    Raises:
        ChurnlabError: that task, in one line naming ``compute.memory_per_worker``; a job
            the cluster gave up on (its futures cancelled: the scheduler restarted, this
            client's connection lost, data the job needed lost); or what a task raised
            itself (a ``ChurnlabError`` passes through unchanged).
    """
    import time
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    try:
        paused_since, looked = None, time.monotonic()
        while not all(future.done() for future in futures):  # done: a result or an error
            time.sleep(0.05)
            if time.monotonic() - looked < _WATCH_S:
                continue
            looked = time.monotonic()
            if not _every_worker_paused(client):
                paused_since = None
            elif paused_since is None:
                paused_since = time.monotonic()
            elif time.monotonic() - paused_since > PAUSED_LIMIT_S:
                raise ChurnlabError(
                    f"{COMPUTE_FILE}: compute.memory_per_worker: {what} stopped on the Dask "
                    f"cluster: every worker has been paused for {PAUSED_LIMIT_S:g} s, over "
                    "distributed.worker.memory.pause of its memory, and the job waits for "
                    "memory that its running tasks hold: give workers more memory or lower "
                    "compute.partition_rows; no output was written"
                )
        return client.gather(futures)
    except KilledWorker as exc:
        raise worker_failure(exc, settings, what) from None
    except CancelledError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChurnlabError(
            f"{_where(settings) if settings.scheduler else COMPUTE_FILE}: {what} stopped: the "
            f"Dask cluster cancelled the job ({reason}): the scheduler restarted, the "
            "connection to it was lost, or data the job needed was lost with a worker; run "
            "the command again; no output was written"
        ) from None
    finally:
        for future in futures:
            future.release()


def _every_worker_paused(client: Any) -> bool:
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    return bool(workers) and all(w.get("status") == "paused" for w in workers)


def worker_failure(exc: BaseException, settings: ComputeSettings, what: str) -> ChurnlabError:
    """The one-line error for a job the cluster could not finish (a worker died on it)."""
    return ChurnlabError(
        f"{COMPUTE_FILE}: compute.memory_per_worker: {what} failed on the Dask cluster: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; a worker died "
        f"on the same task again and again, usually out of memory (each has "
        f"{settings.memory_per_worker}): give workers more memory or lower "
        "compute.partition_rows; no output was written"
    )
