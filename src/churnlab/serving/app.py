"""The HTTP service: a FastAPI app over one loaded model, run by uvicorn.

``POST /predict`` scores customers; ``GET /health`` (the process answers), ``/ready`` (a
model is loaded and warmed up), ``/model`` (what it is) and ``/metrics`` (Prometheus).

The model is loaded in a background thread, so ``/health`` answers at once and ``/ready``
only after the warm-up prediction. The same thread reloads: on SIGHUP, and when the
champion alias (or the model file) changes, checked every ``serve.reload_poll_seconds``.
A request takes the model in service when it starts and keeps it to the end; a new model
replaces it only once loaded and warmed up, so a reload fails no request, and a failed
reload leaves the old model in service.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request

from churnlab.errors import ChurnlabError
from churnlab.serving.metrics import ServiceMetrics
from churnlab.serving.models import ServedModel, load_served_model, model_identity
from churnlab.serving.requests import (
    BODY,
    Problem,
    RequestError,
    RequestRules,
    customers_table,
)
from churnlab.serving.settings import SERVE_FILE, ServeSettings

JSON = "application/json"


def _log(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


@dataclass
class Service:
    """The model in service, how to load another, and the thread that does it."""

    load: Callable[[], ServedModel]
    identity: Callable[[], str]
    rules: RequestRules
    settings: ServeSettings
    metrics: ServiceMetrics
    on_fatal: Callable[[str], None] = lambda message: None
    model: ServedModel | None = None
    failure: str | None = None

    def __post_init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        """Reload now (SIGHUP): the thread wakes up and loads the model again."""
        self._wake.set()

    def _warm(self, model: ServedModel) -> ServedModel:
        table, _, _ = customers_table(self.rules.example(), self.rules)
        for _ in range(3):  # the first calls build caches in scikit-learn and pandas
            model.scores(table)
        return model

    def _swap(self, model: ServedModel, why: str) -> None:
        self.model = model  # one assignment: a request sees the old model or the new one
        self.metrics.model_changed(model.name, model.version, model.source, model.threshold)
        scoring = "its scikit-learn Pipeline"
        if model.fast is not None:
            trees = " and flat trees" if model.fast.trees is not None else ""
            scoring = f"numpy preprocessing{trees}"
        _log(
            f"{why}: {model.name} version {model.version} (threshold {model.threshold:.4g}), "
            f"scored with {scoring}"
        )

    def _run(self) -> None:
        try:
            self._swap(self._warm(self.load()), "model ready")
        except Exception as exc:  # whatever stops the first load stops the service
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            self.failure = (
                str(exc)
                if isinstance(exc, ChurnlabError)
                else f"the model could not be loaded ({type(exc).__name__}: {first}): see "
                "params/serve.yaml serve.model and the tracking store (docs/serving.md)"
            )
            self.on_fatal(self.failure)
            return
        while not self._stop.is_set():
            forced = self._wake.wait(self.settings.reload_poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._reload(forced)

    def _reload(self, forced: bool) -> None:
        try:
            if not forced and self.identity() == self.model.identity:
                return
            model = self._warm(self.load())
        except (ChurnlabError, OSError) as exc:
            self.metrics.reloads.labels("failed").inc()
            _log(f"reload failed, version {self.model.version} stays in service: {exc}")
            return
        except Exception as exc:  # the store unreachable, a broken file: keep serving
            self.metrics.reloads.labels("failed").inc()
            _log(
                f"reload failed ({type(exc).__name__}: {str(exc)[:200]}), "
                f"version {self.model.version} stays in service"
            )
            return
        if model.identity == self.model.identity and not forced:
            self.metrics.reloads.labels("unchanged").inc()
            return
        self.metrics.reloads.labels("loaded").inc()
        self._swap(model, "reloaded on SIGHUP" if forced else "new model")


class MetricsMiddleware:
    """Counts and times every HTTP request by endpoint and status (a plain ASGI wrapper:
    Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)


def _json_response(content: dict, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(content), status_code=status, media_type=JSON)


async def _read_body(request, limit: int) -> bytes:
    """The body, refused as soon as it is longer than ``limit`` bytes."""
    rule = f"at most {limit} bytes (params/serve.yaml serve.max_body_bytes)"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, [Problem(BODY, rule, f"{declared} bytes")])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, [Problem(BODY, rule, f"more than {limit} bytes")])
        chunks.append(chunk)
    return b"".join(chunks)


def _check_content_type(request) -> None:
    given = request.headers.get("content-type")
    kind = (given or "").split(";")[0].strip().lower()
    if kind != JSON:
        raise RequestError(
            415,
            [Problem("Content-Type", "application/json", given or "no Content-Type header")],
        )


def create_app(service: Service):
    """The FastAPI app over ``service`` (which it starts and stops with itself)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    from churnlab.serving.requests import parse_json

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import asyncio

        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # only in the main thread of a POSIX process (not under a test's thread)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.request_reload)
        service.start()
        yield
        service.stop()

    app = FastAPI(
        title="churnlab",
        description="churn probabilities from the champion model",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(RequestError)
    async def refused(request, exc: RequestError):
        return _json_response(exc.as_json(), exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _json_response({"error": f"{request.url.path}: {exc.detail}"}, exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        # the log has the details; the caller gets one line and no stack trace
        return _json_response({"error": f"internal error ({type(exc).__name__})"}, 500)

    def not_ready():
        reason = service.failure or "the model is loading"
        return _json_response({"ready": False, "error": f"not ready: {reason}"}, 503)

    @app.post("/predict")
    async def predict(request: Request):
        model = service.model  # kept to the end of this request, whatever a reload does
        if model is None:
            return not_ready()
        _check_content_type(request)
        payload = parse_json(await _read_body(request, service.settings.max_body_bytes))
        features, ids, _ = customers_table(payload, service.rules)
        scores = model.scores(features)
        service.metrics.observe_predictions(model.version, scores, model.threshold)
        id_column = service.rules.id_column
        predictions = [
            {
                id_column: customer_id,
                "probability": score,
                "decision": int(score >= model.threshold),
                "model_version": model.version,
            }
            for customer_id, score in zip(ids, scores.tolist(), strict=True)
        ]
        return _json_response(
            {
                "model": {"name": model.name, "version": model.version},
                "threshold": model.threshold,
                "predictions": predictions,
            }
        )

    @app.get("/health")
    async def health():
        return _json_response({"status": "alive"})

    @app.get("/ready")
    async def ready():
        model = service.model
        if model is None:
            return not_ready()
        return _json_response({"ready": True, "model_version": model.version})

    @app.get("/model")
    async def model_info():
        model = service.model
        if model is None:
            return not_ready()
        return _json_response(model.describe())

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return MetricsMiddleware(app, service.metrics)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP given, not 0: asyncio switches Nagle's algorithm off only on sockets that
    # say TCP, and with it on every keep-alive response waits 40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ChurnlabError(
            f"{SERVE_FILE}: serve.port: cannot listen on {host}:{port} ({exc.strerror}): stop "
            "what uses it, or choose another port (--port, CHURNLAB_SERVE_PORT)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(root: Path, settings: ServeSettings, params: dict) -> None:
    """Run the service until SIGINT or SIGTERM.

    Raises:
        ChurnlabError: the port cannot be listened on, or the first model cannot be loaded
            (the server then stops: a service without a model is not left running).
    """
    import prometheus_client
    import uvicorn

    from churnlab.serving.models import limit_threads

    limit_threads()
    prometheus_client.disable_created_metrics()  # *_created series: noise for every label set
    rules = RequestRules.from_params(params, settings.max_customers)
    if not settings.from_registry and not settings.model_file(root).is_file():
        raise ChurnlabError(
            f"{SERVE_FILE}: serve.model: {settings.model}: file not found: name a .skops "
            'model file of the project (models/model.skops after `make repro`) or "champion"'
        )
    sock = _bind(settings.host, settings.port)
    server: uvicorn.Server | None = None

    def fatal(message: str) -> None:
        if server is not None:
            server.should_exit = True

    service = Service(
        load=lambda: load_served_model(root, settings, rules.features),
        identity=lambda: model_identity(root, settings),
        rules=rules,
        settings=settings,
        metrics=ServiceMetrics(),
        on_fatal=fatal,
    )
    config = uvicorn.Config(
        create_app(service),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    model = "the champion" if settings.from_registry else settings.model
    _log(f"http://{shown}:{settings.port} serving {model}; /ready once it is loaded")
    server.run(sockets=[sock])
    if service.failure:
        raise ChurnlabError(service.failure)
