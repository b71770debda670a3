"""What a run records about its code, data and params, in keys MLflow accepts.

The git commit of the code, the DVC hash and row count of each data file, the figures of the
executed notebook, and a stage's params and metrics as MLflow params and metrics. Keys below
the top level come from the data (column names in ``schema``), so any character MLflow refuses
is escaped, one to one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from churnlab.config import flatten
from churnlab.secrets import masked_params


def git_state(root: Path, ignore: set[str] = frozenset()) -> tuple[str | None, bool]:
    """The commit and whether tracked files differ from it (``ignore``: pipeline outputs)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None, False
    paths = {line[3:].strip() for line in changed}
    return commit, bool(paths - set(ignore) - {"dvc.lock"})


# What MLflow accepts in one part of a param or metric key (its own rule, less the colon that
# Windows refuses); '.' joins the parts and '/' makes a key a path, so both are escaped too.
_KEY_CHARACTER = re.compile(r"[\w\- ]")
_ESCAPE_LOOKALIKE = re.compile(r"_x[0-9A-F]{4}")


def _escape_character(char: str) -> str:
    units = char.encode("utf-16-be")  # beyond U+FFFF: two escapes, so every escape has 4 digits
    return "".join(f"_x{units[i]:02X}{units[i + 1]:02X}_" for i in range(0, len(units), 2))


def mlflow_key_part(part: str) -> str:
    """One part of a param or metric key (a column name, say) in a form MLflow accepts.

    A character MLflow refuses becomes ``_xHHHH_``, its UTF-16 code in hex (the escape of
    names in XML and Office files): ``Plan (type)`` -> ``Plan _x0028_type_x0029_``.
    A literal ``_`` that would read as the start of such an escape is escaped itself
    (``_x005F_``), so two different parts never give the same key. Parts MLflow accepts
    as they are (``cv_folds``, ``max_iter``) do not change.
    """
    out = []
    for index, char in enumerate(part):
        following = part[index + 6 : index + 7]
        if (
            char == "_"
            and _ESCAPE_LOOKALIKE.match(part, index)
            and following
            and (following == "_" or not _KEY_CHARACTER.fullmatch(following))
        ):
            out.append("_x005F_")  # the next characters would end as an escape: _xHHHH_
        elif _KEY_CHARACTER.fullmatch(char):
            out.append(char)
        else:
            out.append(_escape_character(char))
    return "".join(out)


def mlflow_keys(tree: Any) -> Any:
    """Nested mappings with every key made an MLflow key part (see ``mlflow_key_part``)."""
    if not isinstance(tree, Mapping):
        return tree
    return {mlflow_key_part(str(key)): mlflow_keys(value) for key, value in tree.items()}


def shorten_key(key: str) -> str:
    """A key within MLflow's 250 characters: a long one keeps its start and a digest."""
    if len(key) <= 250:
        return key
    return f"{key[:233]}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """A stage's params as MLflow params: dotted keys, secrets masked, values as text.

    The top-level keys are the param keys of ``dvc.yaml`` (``train``, ``paths.raw``); the
    keys below them come from the data (column names in ``schema``) and are escaped.
    """
    masked = masked_params(dict(params))
    values = flatten({key: mlflow_keys(value) for key, value in masked.items()})
    return {
        shorten_key(key): value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
    }


def metric_values(name: str, content: Mapping) -> dict[str, float]:
    """The numbers of one metrics file as MLflow metrics: ``test.roc_auc``, ``cv.folds``."""
    return {
        shorten_key(f"{name}.{key}"): float(value)
        for key, value in flatten(mlflow_keys(content)).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def file_lineage(root: Path, path: str) -> dict[str, Any]:
    """A data file's DVC hash (MD5 of its bytes) and row count."""
    target = root / path
    digest = hashlib.md5(target.read_bytes()).hexdigest()
    if target.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_metadata(target).num_rows
    else:
        with target.open("rb") as handle:
            rows = max(sum(1 for _ in handle) - 1, 0)
    return {"md5": digest, "rows": int(rows)}


def notebook_figures(nb) -> list[bytes]:
    """The PNG figures a notebook's outputs show, in order."""
    figures = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                figures.append(base64.b64decode(data["image/png"]))
    return figures
