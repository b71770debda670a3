"""The service's settings: params/serve.yaml, then the environment, then the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from churnlab.config import get_key
from churnlab.errors import ChurnlabError

SERVE_FILE = "params/serve.yaml"
CHAMPION = "champion"  # serve.model: the registry alias rather than a file
# environment variables that win over params/serve.yaml (a container sets these)
ENVIRONMENT = {
    "host": "CHURNLAB_SERVE_HOST",
    "port": "CHURNLAB_SERVE_PORT",
    "model": "CHURNLAB_SERVE_MODEL",
}


@dataclass(frozen=True)
class ServeSettings:
    """What ``churnlab serve`` runs with (params/serve.yaml ``serve``)."""

    host: str
    port: int
    model: str
    threshold: float | None
    max_customers: int
    max_body_bytes: int
    reload_poll_seconds: float

    @property
    def from_registry(self) -> bool:
        return self.model == CHAMPION

    def model_file(self, root: Path) -> Path:
        return (root / self.model).resolve()


def _port(text: str, where: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65_535:
        raise ChurnlabError(f"{where}: expected a port from 1 to 65535, found {text!r}")
    return port


def serve_settings(
    params: Mapping[str, Any], environ: Mapping[str, str], given: Mapping[str, Any]
) -> ServeSettings:
    """Settings from the checked params, overridden by ``environ`` and then by ``given``
    (the command line's values; None where not given).

    Raises:
        ChurnlabError: a port that is not one, naming where it came from.
    """
    section = get_key(dict(params), "serve", SERVE_FILE)
    settings = ServeSettings(
        host=section["host"],
        port=section["port"],
        model=section["model"],
        threshold=section["threshold"],
        max_customers=section["max_customers"],
        max_body_bytes=section["max_body_bytes"],
        reload_poll_seconds=float(section["reload_poll_seconds"]),
    )
    for key, variable in ENVIRONMENT.items():
        text = environ.get(variable, "").strip()
        if text:
            value = _port(text, variable) if key == "port" else text
            settings = replace(settings, **{key: value})
    for key, value in given.items():
        if value is not None:
            settings = replace(settings, **{key: value})
    if not 1 <= settings.port <= 65_535:
        raise ChurnlabError(f"--port: expected a port from 1 to 65535, found {settings.port}")
    return settings
