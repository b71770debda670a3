"""The baseline: the committed record of a model that the report compares the current one with.

``paths.baseline`` (``metrics/baseline.json``) keeps a model's test and cross-validation
metrics, the params that made it, its data and its commit. ``churnlab baseline`` (``make
baseline``) writes it from the pipeline's current outputs; it lives in git, so the report
reproduces from git alone. It is not the MLflow registry's ``champion`` alias, which only the
promotion gate moves (:mod:`churnlab.tracking`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from churnlab.config import flatten, get_key, load_params
from churnlab.errors import ChurnlabError
from churnlab.files import write_json
from churnlab.secrets import masked_params
from churnlab.tracking.lineage import git_state

# The metrics compared with the baseline and shown with confidence intervals, in page order.
METRIC_LABELS = {
    "roc_auc": "ROC AUC (ranking quality)",
    "pr_auc": "PR AUC (average precision)",
    "top_precision": "share who leave among the top-scored customers",
    "top_capture_rate": "share of all leavers among the top-scored customers",
    "precision": "precision at the threshold",
    "recall": "recall at the threshold (leavers caught)",
    "f1": "F1 at the threshold",
    "accuracy": "accuracy at the threshold",
    "brier": "Brier score (lower is better)",
}
LOWER_IS_BETTER = {"brier"}
# The one key of the baseline file, so that the file says what it holds.
RECORD_KEY = "baseline"
PATHS_PARAMS = "params/paths.yaml"


def read_json(path: Path) -> Any:
    """A JSON output of the pipeline; missing or broken, an error that says what to run."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ChurnlabError(f"{path}: not found; run `dvc repro` first") from None
    except json.JSONDecodeError as exc:
        raise ChurnlabError(f"{path}: not valid JSON ({exc})") from None


def _model_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that make a model what it is (compared with the baseline's)."""
    return {
        section: params[section]
        for section in ("prepare", "train", "evaluate")
        if section in params
    }


def data_record(params: Mapping[str, Any]) -> dict[str, Any]:
    """The data a model was built on: its source and the raw file's checksum."""
    return {"source": str(params["data"]["source"]), "sha256": params["data"].get("sha256")}


def model_record(
    params: Mapping[str, Any], metrics: Mapping[str, Any], cv: Mapping[str, Any]
) -> dict[str, Any]:
    """What the comparison keeps of a model: its metrics, its params (secrets masked), its data.

    Args:
        params: the project's params (``load_params``).
        metrics: the test metrics (``paths.test_metrics``).
        cv: the cross-validation metrics (``paths.cv_metrics``).
    """
    return {
        "metrics": dict(metrics),
        "cv": dict(cv),
        "params": masked_params(_model_params(params)),
        "data": data_record(params),
    }


def _change(metric: str, label: str, baseline: float, current: float) -> dict[str, Any]:
    """One row of the comparison: both values, the change, and whether it is better."""
    delta = float(current) - float(baseline)
    better = -delta if metric in LOWER_IS_BETTER else delta
    return {
        "metric": metric,
        "label": label,
        "baseline": float(baseline),
        "current": float(current),
        "delta": delta,
        "direction": "better" if better > 1e-9 else "worse" if better < -1e-9 else "same",
    }


def compare_with_baseline(
    current: Mapping[str, Any], baseline: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What changed between this model and the baseline: metrics with deltas, params, data.

    Args:
        current: ``{"metrics": test metrics, "cv": cv metrics, "params": ..., "data": ...}``.
        baseline: the same shape, read from the baseline file; None when there is none.
    """
    if not baseline:
        return {"status": "none", "metrics": [], "params": [], "same_data": True}
    rows = [
        _change(name, label, baseline["metrics"][name], current["metrics"][name])
        for name, label in METRIC_LABELS.items()
        if name in baseline["metrics"] and name in current["metrics"]
    ]
    per_1000 = [
        m["cost"]["saving"] / m["rows"] * 1000 for m in (baseline["metrics"], current["metrics"])
    ]
    rows.append(_change("saving_per_1000", "expected saving per 1,000 customers", *per_1000))
    old_params, new_params = flatten(baseline.get("params", {})), flatten(current.get("params", {}))
    changed = [
        {
            "key": key,
            "baseline": old_params.get(key, "(not set)"),
            "current": new_params.get(key, "(not set)"),
        }
        for key in sorted(set(old_params) | set(new_params))
        if old_params.get(key, "(not set)") != new_params.get(key, "(not set)")
    ]
    same_data = baseline.get("data", {}).get("sha256") == current.get("data", {}).get("sha256")
    identical = not changed and all(r["direction"] == "same" for r in rows) and same_data
    return {
        "status": "identical" if identical else "different",
        "metrics": rows,
        "params": changed,
        "same_data": same_data,
        "baseline_commit": baseline.get("commit"),
    }


def baseline_record(model: Mapping[str, Any], commit: str | None, dirty: bool) -> dict[str, Any]:
    """What the baseline file keeps of a model: its record (:func:`model_record`) and commit."""
    return {"commit": commit, "dirty": dirty, **model}


def load_baseline(root: Path, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The baseline's record from ``paths.baseline``; None when there is no baseline yet.

    Raises:
        ChurnlabError: a file that is not a baseline record (a missing key is not taken for
            "no baseline": the page would silently drop the comparison).
    """
    relative = get_key(params, "paths.baseline", PATHS_PARAMS)
    if not (root / relative).is_file():
        return None
    content = read_json(root / relative)
    if not isinstance(content, dict) or not isinstance(content.get(RECORD_KEY), dict):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ChurnlabError(
            f"{relative}: expected the key '{RECORD_KEY}' holding the record of the model the "
            f"report compares with, found {found}; rename the key if the file is from before "
            "'champion' became 'baseline', or write it again with `churnlab baseline`"
        )
    return content[RECORD_KEY]


def write_baseline(root: Path) -> Path:
    """Make the current model the baseline: write its record to ``paths.baseline``."""
    params = load_params(root)
    metrics = read_json(root / get_key(params, "paths.test_metrics", PATHS_PARAMS))
    cv = read_json(root / get_key(params, "paths.cv_metrics", PATHS_PARAMS))
    commit, dirty = git_state(root)
    record = baseline_record(model_record(params, metrics, cv), commit, dirty)
    target = root / get_key(params, "paths.baseline", PATHS_PARAMS)
    write_json(target, {RECORD_KEY: record})
    return target
