"""The service's container image, built and run for real (podman here, docker where its
daemon answers): the champion of the shared pipeline run baked in, started read-only and
non-root, /ready waited for, a customer scored like models/model.skops scores it, a bad
request refused, and the container removed whatever happens. The same customers scored by
`churnlab score`, by `churnlab serve` and by the container get the same answers."""

import csv
import json
import os
import shutil
import socket
import subprocess
import time
import uuid

import httpx
import numpy as np
import pandas as pd
import pytest
from service import assert_same_scores, batch_scores, raw_customers, running_service

from churnlab.config import load_params
from churnlab.data import ID_COLUMN
from churnlab.model import load_model, model_input

from conftest import ROOT, run

pytestmark = pytest.mark.pipeline

CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
# pip in the build verifies PyPI with the host's CA bundle (a TLS-inspecting proxy's CA too)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_IMAGE = "churnlab-base:bookworm"
IMAGE = "churnlab:test"
MAX_IMAGE_MB = 600  # issue 13
READY_SECONDS = 120
ONE_BY_ONE = 30  # customers also sent one a request (the last ones: the blank number too)
# what the Dockerfile copies (.dockerignore's allow-list), nothing else goes to the build
CONTEXT = [
    "Dockerfile",
    ".dockerignore",
    "README.md",
    "pyproject.toml",
    "dvc.yaml",
    "params",
    "src",
    "deploy/requirements-serving.txt",
]


def _engine() -> list[str]:
    """The container command: docker when its daemon answers, else podman on our settings."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return [docker]
    podman = shutil.which("podman")
    if podman is None:
        pytest.fail(
            "churnlab: error: podman: expected docker (with a running daemon) or podman, found "
            "neither; install them with `apt-get install podman runc debootstrap` (.ci/run does)"
        )
    return [podman]


def _env(engine: list[str]) -> dict:
    env = dict(os.environ)
    if engine[0].endswith("podman"):
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def _container(engine, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*engine, *args], capture_output=True, text=True, env=_env(engine), timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"`{engine[0]} {' '.join(args[:2])}` failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


def _build_context(target, project) -> None:
    """The image's build context: the code under test, the champion of ``project``."""
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    run(["churnlab", "export-model", str(target / "build" / "image" / "model")], project)


@pytest.fixture(scope="module")
def image(pipeline_project, tmp_path_factory):
    engine = _engine()
    if _container(engine, "image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        # the CI set-up builds it (`make base-image`); a machine without it builds it here
        result = subprocess.run(
            [str(ROOT / "deploy" / "base-image.sh"), BASE_IMAGE],
            capture_output=True,
            text=True,
            env={**_env(engine), "ENGINE": engine[0]},
        )
        assert result.returncode == 0, result.stderr.strip()
    context = tmp_path_factory.mktemp("image")
    _build_context(context, pipeline_project)
    build = ["build", "-t", IMAGE]
    if os.path.isfile(CA_BUNDLE):
        build += ["--secret", f"id=ca_bundle,src={CA_BUNDLE}"]
    if engine[0].endswith("podman"):
        build += ["--format", "docker"]  # podman keeps HEALTHCHECK only in docker's format
    _container(engine, *build, str(context), timeout=1800)
    return engine


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def service(image):
    """The image running read-only on a loopback port; stopped and removed at the end, also
    when a test or the start fails."""
    engine = image
    name = f"churnlab-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    try:
        _container(
            engine,
            *("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"),
            *("-p", f"127.0.0.1:{port}:8000", IMAGE),
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            state = _container(engine, "inspect", "--format", "{{.State.Status}}", name)
            if state.stdout.strip() != "running" or time.monotonic() > deadline:
                logs = _container(engine, "logs", name, check=False)
                pytest.fail(
                    f"container {name}: not ready after {READY_SECONDS} s "
                    f"(state {state.stdout.strip()}): {(logs.stderr + logs.stdout)[-2000:]}"
                )
            time.sleep(0.5)
        yield engine, name, url
    finally:
        _container(engine, "rm", "-f", name, check=False)
        gone = _container(engine, "container", "exists", name, check=False)
        assert engine[0].endswith("docker") or gone.returncode == 1, f"{name} was not removed"


def _customer(project) -> tuple[dict, float]:
    """A test customer as a client sends it (the raw fields, typed as the schema lists
    them) and its churn probability from models/model.skops on the prepared test data."""
    params = load_params(project)
    schema, paths = params["schema"], params["paths"]
    model, features = load_model(project / paths["model"], project / paths["features"])
    test = pd.read_parquet(project / paths["test"])
    with open(project / paths["raw"], newline="") as handle:
        raw = {row[schema["id_column"]]: row for row in csv.DictReader(handle)}
    for _, prepared in test.iterrows():
        row = raw[str(prepared[ID_COLUMN])]
        if all(row[column].strip() for column in schema["numeric"]):
            break
    customer = {column: float(row[column]) for column in schema["numeric"]}
    for column, allowed in schema["categorical"].items():
        # the schema's own value (0, not "0"), as a client reading the schema writes it
        customer[column] = next(v for v in allowed if str(v) == row[column])
    frame = test[test[ID_COLUMN] == prepared[ID_COLUMN]]
    inputs = model_input(frame, features["numeric"], features["categorical"])
    return customer, float(model.predict_proba(inputs)[0, 1])


def test_container_scores_like_the_model_file(service, pipeline_project):
    _, _, url = service
    customer, expected = _customer(pipeline_project)
    response = httpx.post(f"{url}/predict", json=customer, timeout=10)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert np.isclose(prediction["probability"], expected, rtol=0, atol=1e-12)
    threshold = json.loads((pipeline_project / "metrics" / "test.json").read_text())["threshold"]
    assert prediction["decision"] == int(expected >= threshold)


def test_batch_http_and_container_give_the_same_answers(service, pipeline_project, tmp_path):
    """One set of customers (one with a blank number) scored three ways: the batch file of
    `churnlab score` (the champion), /predict of `churnlab serve` (the model file) and
    /predict of the container (the champion exported at build time) give the
    same probabilities, bit for bit, and the same decisions; sent as one list (scored by the
    estimator) and, the last ones, one customer a request (scored by the flat trees)."""
    _, _, container_url = service
    id_column = load_params(pipeline_project)["schema"]["id_column"]
    raw, customers = raw_customers(pipeline_project, 100)
    assert any(None in customer.values() for customer in customers)
    batch = batch_scores(pipeline_project, raw, tmp_path)
    assert len(batch) == len(customers)

    single = len(customers) - ONE_BY_ONE

    def answers(client: httpx.Client) -> list[dict]:
        responses = [client.post("/predict", json=customers)]
        responses += [client.post("/predict", json=customer) for customer in customers[single:]]
        assert {r.status_code for r in responses} == {200}, responses[0].text
        one_by_one = [r.json()["predictions"][0] for r in responses[1:]]
        return [responses[0].json(), {"predictions": one_by_one}]

    with httpx.Client(base_url=container_url, timeout=30) as client:
        container = answers(client)
    # the run's model file (the champion's own): no MLflow to import, half the start-up
    model = "models/model.skops"
    with running_service(pipeline_project, tmp_path / "serve.log", "--model", model) as local:
        with local.client() as client:
            served = answers(client)
    for where, (whole, one) in {"container": container, "churnlab serve": served}.items():
        assert_same_scores(batch, whole, id_column, f"{where}, one list")
        assert_same_scores(batch.iloc[single:], one, id_column, f"{where}, one customer a request")


@pytest.mark.parametrize(
    "body, headers",
    [
        ('{"tenure": 1}', {"content-type": "application/json"}),  # fields missing
        ('{"tenure": ', {"content-type": "application/json"}),  # malformed JSON
        ("tenure=1", {"content-type": "application/x-www-form-urlencoded"}),
    ],
)
def test_container_refuses_a_bad_request(service, body, headers):
    _, _, url = service
    response = httpx.post(f"{url}/predict", content=body, headers=headers, timeout=10)
    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text


def test_container_runs_non_root_on_a_read_only_root(service):
    engine, name, _ = service
    assert _container(engine, "exec", name, "id", "-u").stdout.strip() == "10001"
    refused = _container(engine, "exec", name, "touch", "/app/written", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_container_healthcheck_passes(service):
    engine, name, _ = service
    if engine[0].endswith("podman"):
        # podman runs health checks from systemd timers (absent here): run it by hand
        assert _container(engine, "healthcheck", "run", name, check=False).returncode == 0
    (inspected,) = json.loads(_container(engine, "image", "inspect", IMAGE).stdout)
    # docker keeps it under Config, podman beside it
    healthcheck = inspected.get("Healthcheck") or inspected["Config"].get("Healthcheck")
    assert "/health" in " ".join(healthcheck["Test"])


def test_image_size_within_budget(image):
    size = _container(image, "image", "inspect", "--format", "{{.Size}}", IMAGE).stdout
    assert int(size.strip()) / 1e6 <= MAX_IMAGE_MB
