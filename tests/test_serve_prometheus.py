"""Watching the service: a real Prometheus scrapes it; the shipped alert rules and Grafana
dashboard use the series it exports."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client import generate_latest
from service import http_status, running_service

from churnlab.serving.metrics import ServiceMetrics

from conftest import ROOT, apt_install, free_port

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "churnlab.json"


def prometheus_tool(name: str) -> str:
    """Debian's prometheus package's program (installed when missing and we may)."""
    if not shutil.which(name):
        apt_install("prometheus")
    path = shutil.which(name)
    assert path, (
        f"{name} not found: install Debian's prometheus package (apt-get install prometheus)"
    )
    return path


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool():
    """promtool checks the rules and the example config, and its unit tests fire each alert
    on the traffic it is meant for (deploy/prometheus/alerts_test.yml)."""
    promtool = prometheus_tool("promtool")
    folder = DEPLOY / "prometheus"
    for command in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run([promtool, *command], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    assert {"ChurnlabHighErrorRate", "ChurnlabSlowPredictions", "ChurnlabScoreDrift"} <= alerts


def test_dashboard_and_alerts_use_the_series_the_service_exports():
    metrics = ServiceMetrics()
    metrics.observe_request("/predict", 200, 0.002)
    metrics.observe_predictions("1", np.array([0.2, 0.7]), 0.5)
    metrics.model_changed("m", "1", "registry", 0.5)
    metrics.reloads.labels("failed").inc()
    exported = set(
        re.findall(r"^(churnlab_\w+?)(?:\{| )", generate_latest(metrics.registry).decode(), re.M)
    )
    used = {
        name
        for query in [*dashboard_queries(), *alert_queries()]
        for name in re.findall(r"churnlab_\w+", query)
    }
    assert used and used <= exported, used - exported
    covered = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    assert {
        "churnlab_http_requests",
        "churnlab_http_request_duration_seconds",
        "churnlab_predictions",
        "churnlab_prediction_score",
        "churnlab_model_info",
    } <= covered


def _query(client: httpx.Client, expr: str) -> dict:
    answer = client.get("/api/v1/query", params={"query": expr}).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]


def _wait_until_ready(client: httpx.Client, log: str) -> None:
    """Prometheus answers 503 "Service Unavailable" until its TSDB has started: wait for
    /-/ready before the first query, so a slow start is not read as a broken one."""
    deadline = time.monotonic() + 60
    while http_status(client, "/-/ready") != 200:
        assert time.monotonic() < deadline, f"Prometheus not ready after 60 s; see {log}"
        time.sleep(0.2)


def _value(client: httpx.Client, expr: str) -> float | None:
    result = _query(client, expr)["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.pipeline
def test_prometheus_records_the_traffic_sent(pipeline_project, tmp_path, params):
    """Prometheus (scrape interval 1 s) scrapes the running service: its series hold the
    requests, statuses and predictions sent; every dashboard query and alert rule evaluates."""
    prometheus = prometheus_tool("prometheus")
    schema = params["schema"]
    test = pd.read_parquet(pipeline_project / "data" / "prepared" / "test.parquet").head(22)
    customers = [
        {
            **{n: float(row[n]) for n in schema["numeric"]},
            **{n: str(row[n]) for n in schema["categorical"]},
        }
        for _, row in test.iterrows()
    ]
    with running_service(
        pipeline_project, tmp_path / "serve.log", "--model", "models/model.skops"
    ) as service:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "churnlab",
                    "static_configs": [{"targets": [service.url.removeprefix("http://")]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("w")
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            churn = 0
            with service.client() as client:
                threshold = client.get("/model").json()["threshold"]
                for customer in customers[:7]:
                    answer = client.post("/predict", json=customer).json()
                    churn += sum(p["decision"] for p in answer["predictions"])
                for start in range(7, 22, 5):
                    answer = client.post("/predict", json=customers[start : start + 5]).json()
                    churn += sum(p["decision"] for p in answer["predictions"])
                for _ in range(4):
                    refused = client.post("/predict", json={**customers[0], "extra": 1})
                    assert refused.status_code == 422
            assert 0 < churn < 22 and 0 < threshold < 1
            expected = {
                'churnlab_http_requests_total{endpoint="/predict",status="200"}': 10,
                'churnlab_http_requests_total{endpoint="/predict",status="422"}': 4,
                'sum(churnlab_http_request_duration_seconds_count{endpoint="/predict"})': 14,
                "sum(churnlab_predictions_total)": 22,
                'sum(churnlab_predictions_total{decision="churn"})': churn,
                "sum(churnlab_prediction_score_count)": 22,
                'up{job="churnlab"}': 1,
                "churnlab_model_ready": 1,
            }
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as prom:
                _wait_until_ready(prom, log.name)
                deadline = time.monotonic() + 90
                while True:
                    try:
                        found = {q: _value(prom, q) for q in expected}
                    except httpx.TransportError:
                        found = {}
                    if found and all(found[q] == v for q, v in expected.items()):
                        break
                    assert time.monotonic() < deadline, (found, log.name)
                    time.sleep(0.5)
                for query in dashboard_queries():
                    _query(prom, query.replace("$__rate_interval", "1m"))
                deadline = time.monotonic() + 30
                while True:
                    groups = prom.get("/api/v1/rules").json()["data"]["groups"]
                    rules = [rule for group in groups for rule in group["rules"]]
                    if rules and all(rule.get("health") == "ok" for rule in rules):
                        break
                    assert time.monotonic() < deadline, rules
                    time.sleep(0.5)
                assert len(rules) == len(alert_queries())
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            log.close()
    assert "Traceback" not in Path(service.log).read_text()
