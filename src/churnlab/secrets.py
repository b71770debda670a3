"""Keeping secrets out of everything churnlab writes: executed notebooks, reports, messages.

A value is secret when it comes from an environment variable or a param whose *name* marks it
as one (``MLFLOW_TRACKING_TOKEN``, ``DB_PASSWORD``, ``data.api_key``, ``SLACK_WEBHOOK_URL``),
or from the variable ``notify.url_variable`` names (the webhook's URL). Such values are
replaced by ``***`` wherever they would be written. Short values (under 8 characters) are
left alone: redacting "1" or "true" everywhere would change ordinary output and helps nobody.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from churnlab.config import flatten

MASK = "***"
MIN_SECRET_LENGTH = 8
SECRET_NAME = re.compile(
    r"(?:^|[_.-])(?:token|secret|password|passwd|api_?key|access_?key|private_?key"
    r"|credentials?|auth|webhook)(?:$|[_.-])",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a variable or param name marks its value as secret."""
    return bool(SECRET_NAME.search(name))


def secret_values(
    params: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The secret values to mask, longest first (so a value inside another goes second)."""
    environ = os.environ if environ is None else environ
    flat = flatten(dict(params or {}))
    found = {value for name, value in environ.items() if is_secret_name(name)}
    found |= {
        str(value)
        for key, value in flat.items()
        if value is not None and is_secret_name(key.rsplit(".", 1)[-1])
    }
    # the notification webhook's URL (whoever has it can post), whatever its variable's name
    webhook = environ.get(str(flat.get("notify.url_variable") or ""), "")
    if webhook:
        found.add(webhook)
    return sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=lambda v: (-len(v), v))


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_tree(tree: Any, values: list[str]) -> Any:
    """A copy of a JSON-like tree (a notebook, a dict of params) with secrets masked."""
    if not values:
        return copy.deepcopy(tree)
    if isinstance(tree, str):
        return redact(tree, values)
    if isinstance(tree, Mapping):
        result = copy.copy(tree)  # keeps the mapping's type (a NotebookNode stays one)
        for key in list(result):
            result[key] = redact_tree(tree[key], values)
        return result
    if isinstance(tree, list):
        return [redact_tree(item, values) for item in tree]
    return copy.deepcopy(tree)


def masked_params(tree: Any, name: str = "") -> Any:
    """A copy of params with the values of secret-named keys shown as ``***``."""
    if isinstance(tree, Mapping):
        return {key: masked_params(value, str(key)) for key, value in tree.items()}
    if name and is_secret_name(name) and tree is not None:
        return MASK
    return tree
