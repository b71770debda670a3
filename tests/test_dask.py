"""churnlab on real Dask clusters: a scheduler and two workers started with Dask's own command
line (``dask scheduler --host 127.0.0.1``, ``dask worker --nthreads 1``), and a LocalCluster
that churnlab starts and stops. Each job gives the same bytes as the local run: the
partitioned generator, the monitor's verdict, the hyper-parameter search; and the failures:
a worker killed mid-job (retried, same bytes), an unreachable scheduler (one line naming the
address, nothing written), a worker out of memory (one line, no partial output)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnlab.compute.cluster import ComputeSettings, connect, share
from churnlab.compute.generate import PART, MonthPlan, _drop_leftovers, generate_month
from churnlab.data import TableSpec, read_table, validate_table
from churnlab.errors import ChurnlabError
from churnlab.monitoring.simulate import scenarios_from_params

from conftest import (
    ROOT,
    assert_one_clean_error,
    committed_copy,
    free_port,
    run,
    set_param,
    tool_env,
)

pytestmark = pytest.mark.pipeline

BIN = ROOT / ".venv" / "bin"
MONTH = "2026-06"  # a month with a numeric shift in the default scenarios


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    # its own session: stopping it reaches the nanny's worker process too
    return subprocess.Popen(
        cmd,
        env=tool_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> str:
    """The address of a real scheduler with two one-thread workers (all stopped afterwards)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    started = [
        _start(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            folder / "scheduler.log",
        )
    ]
    try:
        for name in ("w1", "w2"):
            started.append(
                _start(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                        "--memory-limit",
                        "2GiB",
                        "--name",
                        name,
                    ],
                    folder / f"{name}.log",
                )
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(started):
            _stop(process)


@pytest.fixture(scope="module")
def project(tmp_path_factory, pipeline_project) -> Path:
    """A copy of the default run: raw data, champion; no batches of its own."""
    target = committed_copy(pipeline_project, tmp_path_factory.mktemp("dask") / "project")
    for folder in ("monitoring", "data/batches", "data/labels"):
        shutil.rmtree(target / folder, ignore_errors=True)
    set_param(target, "params/compute.yaml", "compute.partition_rows", 1000)
    # the verdicts only need to agree: fewer draws and a smaller importance keep it quick
    set_param(target, "params/monitor.yaml", "monitor.chunks", 50)
    set_param(target, "params/monitor.yaml", "monitor.importance_repeats", 1)
    set_param(target, "params/monitor.yaml", "monitor.importance_max_rows", 300)
    return target


@pytest.fixture(scope="module")
def drawing(project):
    """What the generator draws from: the raw table, typed, its spec and the scenarios."""
    from churnlab.config import load_params

    params = load_params(project)
    spec = TableSpec.from_params(params["schema"])
    raw = read_table(project / "data/raw/churn.csv")
    typed = validate_table(raw, spec, "data/raw/churn.csv")
    return raw, typed, spec, scenarios_from_params(params["monitor"]["simulate"]["scenarios"], spec)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _generate(drawing, plan: MonthPlan, folder: Path, client=None, settings=None) -> dict:
    targets = (
        folder / "batches" / f"{plan.month}.parquet",
        folder / "labels" / f"{plan.month}.parquet",
    )
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    assert generate_month(*drawing, plan, targets, client, settings) == plan.customers
    return {t.parent.name: _digests(t) for t in targets}


def _settings(**changes) -> ComputeSettings:
    base = {
        "engine": "dask",
        "scheduler": None,
        "workers": 1,
        "memory_per_worker": "1GiB",
        "partition_rows": 1000,
    }
    return ComputeSettings.from_section({**base, **changes}, environ={})


def test_settings_the_environment_names_the_scheduler():
    section = {
        "engine": "dask",
        "scheduler": None,
        "workers": 2,
        "memory_per_worker": "1GiB",
        "partition_rows": 1000,
    }
    assert ComputeSettings.from_section(section, environ={}).scheduler is None
    environ = {"CHURNLAB_DASK_SCHEDULER": "tcp://10.1.2.3:8786"}
    assert ComputeSettings.from_section(section, environ).scheduler == "tcp://10.1.2.3:8786"


def _hold_memory_up_to(fraction: float, limit: int) -> int:
    """On a worker: allocate (and keep) what brings its process to ``fraction`` of ``limit``."""
    import psutil

    global _HELD
    grow = int(fraction * limit) - psutil.Process().memory_info().rss
    _HELD = np.ones(max(grow, 0), dtype=np.uint8)  # touched pages: resident
    return psutil.Process().memory_info().rss


def test_a_local_worker_between_pause_and_kill_goes_on_working():
    """distributed pauses a worker above 80% of its memory until spilling frees some; a
    churnlab task keeps nothing to spill, so a paused worker would wait for ever. A local
    cluster's worker at 88% still runs the next task."""
    from dask.utils import parse_bytes

    settings = _settings(memory_per_worker="400MiB")
    limit = parse_bytes(settings.memory_per_worker)
    with connect(settings) as client:
        resident = client.submit(_hold_memory_up_to, 0.88, limit, pure=False).result(60)
        assert 0.8 * limit < resident < 0.95 * limit
        time.sleep(1)  # the memory monitor looks every 100 ms
        assert client.submit(sum, [1, 2], pure=False).result(30) == 3


def test_a_job_whose_every_worker_stays_paused_is_one_line(monkeypatch):
    """A team's scheduler whose workers do pause: a job that waits on a worker paused for
    memory its own earlier task holds stops after PAUSED_LIMIT_S with one line."""
    from dask.utils import parse_bytes
    from distributed import LocalCluster

    from churnlab.compute import cluster as cluster_module

    monkeypatch.setattr(cluster_module, "PAUSED_LIMIT_S", 3.0)
    limit = parse_bytes("400MiB")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, memory_limit=limit, dashboard_address=None
    ) as theirs:
        settings = _settings(scheduler=theirs.scheduler_address, memory_per_worker="400MiB")
        with connect(settings) as client:
            client.submit(_hold_memory_up_to, 0.88, limit, pure=False).result(60)
            deadline = time.monotonic() + 30
            while not cluster_module._every_worker_paused(client):  # its monitor's next look
                assert time.monotonic() < deadline, "the worker never paused"
                time.sleep(0.1)
            future = client.submit(sum, [1, 2], pure=False)
            with pytest.raises(ChurnlabError) as failure:
                cluster_module.gather(client, [future], settings, "judging 2026-01")
    message = str(failure.value)
    assert message.startswith("params/compute.yaml: compute.memory_per_worker: judging 2026-01")
    assert "paused for 3 s" in message and "\n" not in message


def test_the_same_month_from_any_number_of_workers(drawing, scheduler, tmp_path):
    """Here, on two workers of a hand-started cluster, on a LocalCluster of one: same bytes;
    another seed gives other bytes; ids run across partitions."""
    plan = MonthPlan(MONTH, 3500, 1000, seed=2026)
    here = _generate(drawing, plan, tmp_path / "here")
    assert len(here["batches"]) == 4
    with connect(_settings(scheduler=scheduler)) as client:
        assert _generate(drawing, plan, tmp_path / "two", client, _settings()) == here
        # one OpenMP thread per task thread (OpenMP reads it when it starts)
        assert set(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == {"1"}
    with connect(_settings(workers=1)) as client:  # churnlab's own LocalCluster
        assert _generate(drawing, plan, tmp_path / "local", client, _settings()) == here
        assert set(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == {"1"}
    other = _generate(drawing, MonthPlan(MONTH, 3500, 1000, seed=7), tmp_path / "other")
    assert other["batches"] != here["batches"]
    month = pd.read_parquet(tmp_path / "here" / "batches" / f"{MONTH}.parquet")
    assert len(month) == 3500 and month["customerID"].is_unique
    assert month["customerID"].iloc[-1] == f"{MONTH}-003500"
    assert not any(p.name.startswith(".") for p in (tmp_path / "two" / "batches").iterdir())


def test_a_worker_killed_mid_job_changes_nothing(drawing, scheduler, tmp_path):
    """SIGKILL to a worker process while partitions are drawn: its tasks run again
    elsewhere (the nanny restarts it), and the month has the same bytes as here."""
    import threading

    plan = MonthPlan(MONTH, 40_000, 1000, seed=11)
    here = _generate(drawing, plan, tmp_path / "here")
    with connect(_settings(scheduler=scheduler)) as client:
        pids = client.run(os.getpid)
        killed = []

        def kill_when_started() -> None:
            staging = tmp_path / "cluster" / "batches"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                parts = [p for d in staging.glob(".*partial*") for p in d.glob("part-*")]
                if len(parts) >= 2:
                    pid = next(iter(pids.values()))
                    os.kill(pid, signal.SIGKILL)  # a worker process this test's fixture started
                    killed.append(pid)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        found = _generate(drawing, plan, tmp_path / "cluster", client, _settings())
        killer.join()
        assert killed, "no worker was killed while the job ran"
        assert found == here
        _wait_for_replacement(client, killed[0])


def _wait_for_replacement(client, killed: int) -> None:
    """The nanny brings a killed worker back: wait for the new process, not for the
    scheduler to count two (it may still count the dead one), or the next test meets a dead
    worker."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        alive = client.run(os.getpid, on_error="ignore").values()
        if len(alive) == 2 and killed not in alive:
            return
        time.sleep(0.5)
    raise AssertionError(f"the killed worker was not replaced: {sorted(alive)}")


def test_a_shared_value_outlives_the_worker_that_held_it(scheduler):
    """What every task of a job needs (a model, the table spec) is a task of the job's graph:
    when the worker holding it dies, the scheduler makes it again and the job goes on; the
    same value shared by two jobs has two keys, so one job's release never takes the
    other's. (``scatter(broadcast=True)`` hung on a copy gone missing.)"""
    values = pd.Series(np.arange(10_000), name="v")
    with connect(_settings(scheduler=scheduler)) as client:
        [first] = share(client, [values], "test")
        [second] = share(client, [values], "test")
        assert first.key != second.key
        assert client.submit(len, first, pure=False).result(timeout=60) == 10_000
        holder = client.who_has([first])[first.key][0]
        pid = client.run(os.getpid, workers=[holder])[holder]
        del second
        os.kill(pid, signal.SIGKILL)  # a worker process this test's fixture started
        total = client.submit(lambda s: int(s.sum()), first, pure=False)
        assert total.result(timeout=120) == int(values.sum())
        _wait_for_replacement(client, pid)


def test_a_job_whose_data_was_lost_is_one_line(scheduler):
    """Data scattered the plain way (no copy in the graph) dies with the worker holding it,
    and the cluster cancels the tasks that needed it: one line naming the job and the
    scheduler's setting, not a traceback."""
    from churnlab.compute.cluster import gather

    settings = _settings(scheduler=scheduler)
    with connect(settings) as client:
        [lost] = client.scatter([pd.Series(np.arange(1000))], hash=False)
        holder = client.who_has([lost])[lost.key][0]
        pid = client.run(os.getpid, workers=[holder])[holder]
        os.kill(pid, signal.SIGKILL)  # a worker process this test's fixture started
        _wait_for_replacement(client, pid)
        futures = [client.submit(len, lost, pure=False)]
        with pytest.raises(ChurnlabError) as failure:
            gather(client, futures, settings, "judging 2026-06")
    message = str(failure.value)
    assert message.startswith("CHURNLAB_DASK_SCHEDULER (environment): judging 2026-06") or (
        message.startswith("params/compute.yaml: compute.scheduler: judging 2026-06")
    )
    assert "cancelled the job" in message and "no output was written" in message
    assert "\n" not in message


def test_what_a_killed_writer_left_never_reaches_the_month(tmp_path):
    """A worker killed inside ``write_atomic`` leaves its temporary file in the staging
    folder (SIGKILL runs no cleanup); its task runs again and writes the part. The month
    gets the parts alone, and a part that is missing stops the move."""
    staging = tmp_path / ".2026-11.parquet.partial-0"
    staging.mkdir()
    for k in range(3):
        (staging / PART.format(k)).write_bytes(b"part")
    fd, leftover = tempfile.mkstemp(dir=staging, prefix=f".{PART.format(0)}.")
    os.close(fd)
    _drop_leftovers(staging, {PART.format(k) for k in range(3)})
    assert sorted(p.name for p in staging.iterdir()) == [PART.format(k) for k in range(3)]
    with pytest.raises(RuntimeError, match=PART.format(3)):
        _drop_leftovers(staging, {PART.format(k) for k in range(4)})


def test_an_unreachable_scheduler_is_one_line_and_moves_nothing(project):
    """An earlier month stays as it was; no verdict is written."""
    run(["churnlab", "simulate", "--month", MONTH, "--customers", "2000"], project)
    month = project / "data" / "batches" / f"{MONTH}.parquet"
    before = _digests(month)
    address = f"tcp://127.0.0.1:{free_port()}"
    set_param(project, "params/compute.yaml", "compute.engine", "dask")
    try:
        env_cmd = ["env", f"CHURNLAB_DASK_SCHEDULER={address}", "churnlab"]
        result = run(
            [*env_cmd, "simulate", "--month", MONTH, "--customers", "3000"], project, check=False
        )
        assert_one_clean_error(result, address, "CHURNLAB_DASK_SCHEDULER")
        assert _digests(month) == before
        assert sorted(p.name for p in month.parent.iterdir()) == [f"{MONTH}.parquet"]
        result = run([*env_cmd, "monitor", MONTH], project, check=False)
        assert_one_clean_error(result, address)
        assert not (project / "monitoring").exists()
    finally:
        set_param(project, "params/compute.yaml", "compute.engine", "local")


def test_a_port_that_answers_without_a_handshake_is_one_line(monkeypatch):
    """A listening port that never speaks Dask (a scheduler too busy to answer, or another
    service): after the handshake time, one line saying the port answered, naming the
    address and where it was set, not that no scheduler is there."""
    import socket

    from churnlab.compute import cluster

    monkeypatch.setattr(cluster, "HANDSHAKE_TIMEOUT", 2.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ChurnlabError) as failure, connect(_settings(scheduler=address)):
            pass
    message = str(failure.value)
    assert address in message and "compute.scheduler" in message, message
    assert "port answers" in message and "2 s" in message, message
    assert "\n" not in message


def test_hist_gradient_boosting_gives_the_same_fit_on_any_number_of_threads():
    """The workers run one OpenMP thread each, the local run all cores: the search's fits,
    and so its scores and ranking, must not depend on it."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from churnlab.model import build_model, model_input

    rng = np.random.default_rng(5)
    train = pd.DataFrame(rng.normal(size=(1500, 3)), columns=["a", "b", "c"])
    train["plan"] = rng.choice(["x", "y", "z"], size=len(train))
    signal = train["a"] - train["b"] * train["c"] + (train["plan"] == "y")
    labels = (signal + rng.normal(size=len(train)) > 0.5).astype(int)
    numeric, categorical = ["a", "b", "c"], ["plan"]
    features = model_input(train, numeric, categorical)
    found = []
    for threads in (1, 2):
        model = build_model(
            numeric, categorical, "gradient_boosting", 42, gradient_boosting={"max_iter": 20}
        )
        with threadpool_limits(threads):
            found.append(model.fit(features, labels).predict_proba(features)[:, 1])
    assert found[0].tobytes() == found[1].tobytes()
    assert len(set(found[0].round(6))) > 10  # a fitted model, not a constant


def test_a_worker_out_of_memory_is_one_line_and_no_partial_output(drawing, tmp_path):
    """A partition far larger than a worker's memory: the nanny kills the worker; after
    ``allowed-failures`` the job stops with one error and neither folder exists."""
    import dask
    import distributed  # noqa: F401 (its config defaults first: the override restores them)

    folder = tmp_path / "batches"
    folder.mkdir()
    (folder / f"{MONTH}.parquet").mkdir()
    (folder / f"{MONTH}.parquet" / "part-00000.parquet").write_bytes(b"earlier")
    settings = _settings(memory_per_worker="400MiB")
    plan = MonthPlan(MONTH, 4_000_000, 4_000_000, seed=1)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with connect(settings) as client, pytest.raises(ChurnlabError) as failure:
            _generate(drawing, plan, tmp_path, client, settings)
    message = str(failure.value)
    assert "compute.memory_per_worker" in message and "400MiB" in message
    assert "\n" not in message
    assert sorted(p.name for p in folder.iterdir()) == [f"{MONTH}.parquet"]
    assert (folder / f"{MONTH}.parquet" / "part-00000.parquet").read_bytes() == b"earlier"
    assert not (tmp_path / "labels" / f"{MONTH}.parquet").exists()


def test_the_monitor_on_a_cluster_writes_the_local_verdict(project, scheduler):
    """A partitioned month with labels, and a month missing a column: `churnlab monitor`
    here and on the hand-started cluster write the same verdict bytes."""
    run(["churnlab", "simulate", "--month", MONTH, "--customers", "3000"], project)
    run(["churnlab", "simulate", "--month", "2026-11", "--customers", "1500"], project)
    assert len(list((project / "data/batches" / f"{MONTH}.parquet").iterdir())) == 3
    months = [MONTH, "2026-11"]
    result = run(["churnlab", "monitor", *months], project, check=False)
    # 2026-11 fails quality (its verdict is written): that, and nothing else, exits 1
    assert_one_clean_error(result, "2026-11", "failed data quality")
    here = {m: (project / "monitoring" / f"{m}.json").read_bytes() for m in months}
    shutil.rmtree(project / "monitoring")
    set_param(project, "params/compute.yaml", "compute.engine", "dask")
    try:
        cmd = ["env", f"CHURNLAB_DASK_SCHEDULER={scheduler}", "churnlab", "monitor", *months]
        result = run(cmd, project, check=False)
    finally:
        set_param(project, "params/compute.yaml", "compute.engine", "local")
    assert result.returncode == 1, result.stderr[-2000:]
    assert_one_clean_error(result, "2026-11", "failed data quality")
    there = {m: (project / "monitoring" / f"{m}.json").read_bytes() for m in months}
    assert there == here
    verdict = __import__("json").loads(here[MONTH])
    assert verdict["batch"]["rows"] == 3000 and verdict["labels"]["rows"] == 3000
    assert verdict["performance"]["realised"]["labelled"] == 3000
    assert "MonthlyCharges" in verdict["drift"]["drifted_columns"]


def test_a_search_on_the_cluster_finds_what_it_finds_here(project, scheduler):
    """4 seeded random candidates x 3 folds of gradient boosting: same scores, same best."""
    from distributed import get_task_stream

    from churnlab.data import TARGET_COLUMN, feature_columns
    from churnlab.search import search_candidates, search_hyperparameters

    train = pd.read_parquet(project / "data/prepared/train.parquet").iloc[:600]
    numeric, categorical = feature_columns(train)
    space = {"learning_rate": [0.05, 0.2], "max_leaf_nodes": [7, 15], "min_samples_leaf": [10, 40]}
    candidates = search_candidates(space, "random", 4, seed=3)
    assert len(candidates) == 4 and candidates == search_candidates(space, "random", 4, seed=3)
    base = {"max_iter": 30, "learning_rate": 0.1}
    args = (
        train,
        numeric,
        categorical,
        TARGET_COLUMN,
        "gradient_boosting",
        base,
        candidates,
        3,
        42,
    )
    here = search_hyperparameters(*args)
    with connect(_settings(scheduler=scheduler)) as client:
        there = search_hyperparameters(*args, client=client)
    assert there == here
    # one worker of one thread: still on the cluster (joblib runs n_jobs=1 in the caller)
    with connect(_settings(workers=1)) as client, get_task_stream(client) as tasks:
        assert search_hyperparameters(*args, client=client) == here
    assert len(tasks.data) >= 12  # 4 candidates x 3 folds, each a task on the worker
    means = [c["roc_auc_mean"] for c in here["candidates"]]
    assert here["best"] == candidates[means.index(max(means))]
    assert len(set(means)) > 1  # the candidates differ: the comparison means something


def test_scoring_on_a_cluster_writes_the_local_bytes(project, scheduler, drawing):
    """Scoring a partitioned month with bad rows in two parts, and one CSV file cut into
    parts: the scores and the rejects (rows numbered across the parts) have the local run's
    bytes; `churnlab score` of an id repeated across two parts is refused, nothing written."""
    from churnlab.compute.score import read_input, score_on_cluster
    from churnlab.config import load_params
    from churnlab.monitoring.champion import load_champion
    from churnlab.serving.score import ScoreSettings, ScoringModel, score_file

    spec = drawing[2]
    scoring = project / "scoring"
    folder = scoring / "month"
    scoring.mkdir()
    plan = MonthPlan(MONTH, 2500, 1000, seed=4)
    generate_month(*drawing[:2], spec, drawing[3], plan, (folder, scoring / "labels"))
    numeric = next(iter(spec.numeric))
    parts = sorted(folder.iterdir())
    second = pd.read_parquet(parts[1])
    second.loc[5, numeric] = "-5"  # below every schema minimum: rejected, row 1006
    second.to_parquet(parts[1], index=False)
    third = pd.read_parquet(parts[2])
    third.loc[7, spec.id_column] = third.loc[3, spec.id_column]  # a repeat inside a part
    third.to_parquet(parts[2], index=False)
    whole = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    whole.to_csv(scoring / "month.csv", index=False)
    params = load_params(project)
    model = ScoringModel.from_champion(load_champion(project))
    settings = ScoreSettings.from_params(params)
    fill = params["prepare"]["fill_missing"]
    compute = _settings(scheduler=scheduler)
    with connect(compute) as client:
        for source, suffix in ((folder, ".parquet"), (scoring / "month.csv", ".csv")):
            here, there = scoring / f"here{suffix}", scoring / f"there{suffix}"
            rejects = {f: f.with_name(f"{f.stem}.rejects{suffix}") for f in (here, there)}
            raw = read_input(source)
            score_file(source, here, rejects[here], spec, lambda: model, settings, fill, raw=raw)
            score_on_cluster(
                source, there, rejects[there], spec, model, settings, fill, client, compute
            )
            assert there.read_bytes() == here.read_bytes()
            assert rejects[there].read_bytes() == rejects[here].read_bytes()
    rejected = pd.read_parquet(scoring / "here.rejects.parquet")
    assert rejected["row"].tolist() == [1006, 2004, 2008]
    first = pd.read_parquet(parts[0])
    first.loc[0, spec.id_column] = whole.loc[1500, spec.id_column]  # the same id in part 2
    first.to_parquet(parts[0], index=False)
    set_param(project, "params/compute.yaml", "compute.engine", "dask")
    try:
        cmd = ["env", f"CHURNLAB_DASK_SCHEDULER={scheduler}", "churnlab", "score"]
        result = run([*cmd, "scoring/month", "scoring/again.parquet"], project, check=False)
    finally:
        set_param(project, "params/compute.yaml", "compute.engine", "local")
    assert_one_clean_error(result, "more than one part", "compute.engine local")
    assert not (scoring / "again.parquet").exists()


def test_a_search_whose_worker_runs_out_of_memory_is_one_line(tmp_path):
    """A training table far larger than the worker's memory: the nanny kills the worker
    during the fits, and the table scattered to it is lost with it; the search stops with
    one line naming compute.memory_per_worker."""
    from churnlab.data import TARGET_COLUMN
    from churnlab.search import search_hyperparameters

    rng = np.random.default_rng(0)
    rows, numeric = 400_000, [f"x{i}" for i in range(40)]
    train = pd.DataFrame(rng.normal(size=(rows, len(numeric))), columns=numeric)
    train["plan"] = rng.choice(["basic", "pro"], rows)
    train[TARGET_COLUMN] = (rng.random(rows) < 0.3).astype(int)
    settings = _settings(memory_per_worker="400MiB")
    candidates = [{"learning_rate": 0.1}, {"learning_rate": 0.2}]
    args = (train, numeric, ["plan"], TARGET_COLUMN, "gradient_boosting", {"max_iter": 5})
    with connect(settings) as client, pytest.raises(ChurnlabError) as failure:
        search_hyperparameters(*args, candidates, 2, 1, client, settings.memory_per_worker)
    message = str(failure.value)
    assert message.startswith("params/compute.yaml: compute.memory_per_worker: the search's")
    assert "400MiB" in message and "400,000 rows" in message and "\n" not in message
