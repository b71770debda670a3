"""A model for the service's container image: the registry's champion (or the workspace's
model) written as the project keeps it, ``models/model.skops`` with its operating threshold
and test metrics in ``metrics/test.json``, so ``churnlab serve`` in the image reads it the way
it reads a model file of the project (docs/serving.md, "Container")."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from churnlab.config import get_key, load_params
from churnlab.errors import ChurnlabError

THRESHOLD = "threshold"
_TEST_PREFIX = "test."  # the register stage logs metrics/test.json's numbers under it


def champion_metrics(run_metrics: dict[str, float]) -> dict[str, float]:
    """The test metrics of the champion's run, named as in metrics/test.json (flattened)."""
    return {
        key.removeprefix(_TEST_PREFIX): value
        for key, value in sorted(run_metrics.items())
        if key.startswith(_TEST_PREFIX)
    }


def _layout(root: Path) -> tuple[Path, Path, Path]:
    """The model, features and test-metrics paths of params/paths.yaml, relative to root."""
    params = load_params(root)
    return tuple(
        Path(get_key(params, f"paths.{key}", "params/paths.yaml"))
        for key in ("model", "features", "test_metrics")
    )


def _replace_folder(target: Path, fill) -> Path:
    """Fill a new folder beside ``target``, then put it in place: a failure leaves the
    previous export whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_champion(root: Path, target: Path) -> str:
    """Write the registry's champion into ``target`` in the project's layout.

    Returns:
        What was exported, for one line of output.

    Raises:
        ChurnlabError: no champion yet, or its run has no operating threshold.
    """
    import mlflow

    from churnlab.model import save_model
    from churnlab.monitoring.champion import load_champion
    from churnlab.tracking.settings import load_settings, store_lock

    champion = load_champion(root)
    settings = load_settings(root)
    with store_lock(settings.uri):
        run_metrics = mlflow.MlflowClient(settings.uri).get_run(champion.run_id).data.metrics
    metrics = champion_metrics(run_metrics)
    metrics[THRESHOLD] = champion.threshold
    model_path, features_path, metrics_path = _layout(root)
    features = {"numeric": champion.numeric, "categorical": champion.categorical}

    def fill(folder: Path) -> None:
        save_model(champion.model, features, folder / model_path, folder / features_path)
        (folder / metrics_path).parent.mkdir(parents=True, exist_ok=True)
        (folder / metrics_path).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    _replace_folder(target, fill)
    return f"{champion.name} version {champion.version} (champion)"


def export_workspace(root: Path, target: Path) -> str:
    """Copy the workspace's model (the last `make repro`) into ``target``.

    Raises:
        ChurnlabError: the model or its test metrics are missing, or hold no threshold.
    """
    files = _layout(root)
    for relative in files:
        if not (root / relative).is_file():
            raise ChurnlabError(f"{relative}: file not found: run `make repro` first")
    metrics_path = files[2]
    if THRESHOLD not in json.loads((root / metrics_path).read_text()):
        raise ChurnlabError(
            f"{metrics_path}: threshold: expected the model's operating threshold, found none; "
            "run `make repro`"
        )

    def fill(folder: Path) -> None:
        for relative in files:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, folder / relative)

    _replace_folder(target, fill)
    return f"{files[0]} of the workspace"
