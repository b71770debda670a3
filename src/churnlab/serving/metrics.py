"""The service's Prometheus series, in a registry of its own (one per app).

Series (deploy/prometheus/alerts.yml and deploy/grafana/churnlab.json use these names):

- ``churnlab_http_requests_total{endpoint, status}`` and
  ``churnlab_http_request_duration_seconds{endpoint, status}`` (histogram): every request;
  paths that are not an endpoint count as ``endpoint="other"`` (bounded labels).
- ``churnlab_predictions_total{model_version, decision}``: customers scored, by decision at
  the operating threshold (``churn`` or ``stay``).
- ``churnlab_prediction_score{model_version}`` (histogram): the churn probabilities given.
- ``churnlab_model_info{name, version, source}`` (1 for the model in service),
  ``churnlab_model_threshold``, ``churnlab_model_ready`` (1 after the warm-up),
  ``churnlab_model_reloads_total{outcome}``.
"""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

ENDPOINTS = ("/predict", "/health", "/ready", "/model", "/metrics")
# a single customer takes about a millisecond; a list of 1,000 about a hundred
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0


class ScoreHistogram(Collector):
    """The histogram of churn probabilities, counted with numpy per request.

    A request of 1,000 customers would otherwise call ``Histogram.observe`` 1,000 times.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, np.ndarray] = {}
        self._sums: dict[str, float] = {}

    def observe(self, version: str, scores: np.ndarray) -> None:
        # bucket i counts scores <= SCORE_BUCKETS[i] (Prometheus' "le"); the last is +Inf
        index = np.searchsorted(SCORE_BUCKETS, scores, side="left")
        counts = np.bincount(index, minlength=len(SCORE_BUCKETS) + 1)
        with self._lock:
            total = self._counts.setdefault(version, np.zeros(len(SCORE_BUCKETS) + 1, np.int64))
            total += counts
            self._sums[version] = self._sums.get(version, 0.0) + float(np.sum(scores))

    def collect(self):
        family = HistogramMetricFamily(
            "churnlab_prediction_score",
            "The churn probabilities given, by model version",
            labels=["model_version"],
        )
        with self._lock:
            for version, counts in self._counts.items():
                cumulative = np.cumsum(counts)
                buckets = [
                    (floatToGoString(b), int(c))
                    for b, c in zip(SCORE_BUCKETS, cumulative[:-1], strict=True)
                ]
                buckets.append(("+Inf", int(cumulative[-1])))
                family.add_metric([version], buckets, self._sums[version])
        yield family


class ServiceMetrics:
    """Every series of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "churnlab_http_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "churnlab_http_request_duration_seconds",
            "Time from request to the end of the response, by endpoint and status",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "churnlab_predictions",
            "Customers scored, by model version and decision at the operating threshold",
            ["model_version", "decision"],
            registry=self.registry,
        )
        self.scores = ScoreHistogram()
        self.registry.register(self.scores)
        self.model_info = Gauge(
            "churnlab_model_info",
            "The model in service (1)",
            ["name", "version", "source"],
            registry=self.registry,
        )
        self.threshold = Gauge(
            "churnlab_model_threshold", "The operating threshold", registry=self.registry
        )
        self.ready = Gauge(
            "churnlab_model_ready", "1 once a model is loaded and warmed up", registry=self.registry
        )
        self.reloads = Counter(
            "churnlab_model_reloads",
            "Model reloads by outcome (loaded, unchanged, failed)",
            ["outcome"],
            registry=self.registry,
        )

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint, str(status)).observe(seconds)

    def observe_predictions(self, version: str, scores: np.ndarray, threshold: float) -> None:
        churn = int(np.count_nonzero(scores >= threshold))
        if churn:
            self.predictions.labels(version, "churn").inc(churn)
        if len(scores) - churn:
            self.predictions.labels(version, "stay").inc(len(scores) - churn)
        self.scores.observe(version, scores)

    def model_changed(self, name: str, version: str, source: str, threshold: float) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, source).set(1)
        self.threshold.set(threshold)
        self.ready.set(1)
