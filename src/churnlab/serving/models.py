"""The model the service answers with: the registry's champion or a model file, with what
``GET /model`` shows about it, and how to tell that a newer one is there."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab.config import get_key, load_params
from churnlab.errors import ChurnlabError
from churnlab.serving.scorer import FLAT_TREES_MAX_ROWS, FastScorer, fast_scorer, flat_trees
from churnlab.serving.settings import SERVE_FILE, ServeSettings


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and what the service says about it."""

    name: str
    version: str
    source: str  # "registry" or "file"
    threshold: float
    model: Any  # the fitted scikit-learn Pipeline
    numeric: list[str]
    categorical: list[str]
    identity: str  # changes when a newer model is there (see model_identity)
    info: dict = field(default_factory=dict)
    fast: FastScorer | None = None  # set by with_fast_scorer once checked

    def pipeline_scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The churn probabilities from the Pipeline itself."""
        from churnlab.model import model_input

        frame = pd.DataFrame({name: columns[name] for name in (*self.numeric, *self.categorical)})
        return self.model.predict_proba(model_input(frame, self.numeric, self.categorical))[:, 1]

    def scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The churn probabilities of customers given as one array per column."""
        if self.fast is not None:
            return self.fast.scores(columns)
        return self.pipeline_scores(columns)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "threshold": self.threshold,
            **self.info,
        }


def check_sample(scorer: FastScorer, rows: int = 256) -> dict[str, np.ndarray]:
    """Customers that reach every branch of the preprocessing: each known category and one
    unknown, numbers from -4 to +4 standard deviations around the training mean, missing
    numbers. Drawn from the fitted model itself, not from the schema, and not at random."""
    columns: dict[str, np.ndarray] = {}
    rows = max([rows, *(len(known) + 1 for known in scorer.categories)])  # each category once
    step = np.arange(rows)
    spread = np.linspace(-4.0, 4.0, rows)
    for index, name in enumerate(scorer.numeric):
        mean = scorer.mean[index] if scorer.mean is not None else 0.0
        scale = scorer.scale[index] if scorer.scale is not None else 1.0
        values = mean + scale * np.roll(spread, 37 * index)
        values[(step + index) % 9 == 0] = np.nan
        columns[name] = values
    for index, (name, known) in enumerate(zip(scorer.categorical, scorer.categories, strict=True)):
        choices = np.array([*known, "unknown category"], dtype=object)
        # every value in turn, each column shifted so that the rows mix categories
        columns[name] = choices[(step + 3 * index) % len(choices)]
    return columns


def _in_blocks(columns: dict[str, np.ndarray], rows: int) -> list[dict[str, np.ndarray]]:
    total = len(next(iter(columns.values())))
    return [
        {name: values[start : start + rows] for name, values in columns.items()}
        for start in range(0, total, rows)
    ]


def with_fast_scorer(model: ServedModel) -> ServedModel:
    """The model with a FastScorer when its probabilities equal the Pipeline's exactly on
    ``check_sample`` customers; otherwise unchanged (scored by the Pipeline). The flat trees
    are kept only when they too give the Pipeline's probabilities, in the blocks of
    customers they score (one customer, and up to ``FLAT_TREES_MAX_ROWS``)."""
    scorer = fast_scorer(model.model)
    if scorer is None or scorer.numeric != model.numeric or scorer.categorical != model.categorical:
        return model
    sample = check_sample(scorer)
    with warnings.catch_warnings():  # the encoder warns of the sample's unknown category
        warnings.simplefilter("ignore", UserWarning)
        expected = model.pipeline_scores(sample)
    if not np.array_equal(scorer.scores(sample), expected):
        return model
    trees = flat_trees(scorer.estimator)
    if trees is not None and _same_in_blocks(replace(scorer, trees=trees), sample, expected):
        scorer = replace(scorer, trees=trees)
    return replace(model, fast=scorer)


def _same_in_blocks(scorer: FastScorer, sample: dict[str, np.ndarray], expected) -> bool:
    """Whether ``scorer`` gives ``expected`` one customer at a time and in the largest blocks
    it scores with its flat trees."""
    try:
        for rows in (1, FLAT_TREES_MAX_ROWS):
            scores = [scorer.scores(block) for block in _in_blocks(sample, rows)]
            if not np.array_equal(np.concatenate(scores), expected):
                return False
    except (IndexError, TypeError, ValueError):  # trees of a shape FlatTrees misreads
        return False
    return True


def _check_columns(model: ServedModel, features: list[str], where: str) -> ServedModel:
    missing = [c for c in (*model.numeric, *model.categorical) if c not in features]
    if missing:
        raise ChurnlabError(
            f"{where}: the model takes columns {missing} that params/data.yaml schema does not "
            "describe: requests could not give them; serve a model of this schema (`make repro`)"
        )
    return model


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def _load_registry(root: Path) -> ServedModel:
    import mlflow

    from churnlab.monitoring.champion import load_champion
    from churnlab.tracking.settings import load_settings, store_lock

    champion = load_champion(root)
    settings = load_settings(root)
    with store_lock(settings.uri):
        run = mlflow.MlflowClient(settings.uri).get_run(champion.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    return ServedModel(
        name=champion.name,
        version=str(champion.version),
        source="registry",
        threshold=champion.threshold,
        model=champion.model,
        numeric=champion.numeric,
        categorical=champion.categorical,
        identity=str(champion.version),
        info={
            "alias": "champion",
            "run_id": champion.run_id,
            "training_data": {
                "source": tags.get("lineage.source.name"),
                "source_sha256": tags.get("lineage.source.sha256"),
                "customers": int(len(champion.training_ids)),
                "customer_ids_sha256": _ids_digest(champion.training_ids),
            },
            "metrics": {
                key: value
                for key, value in sorted(metrics.items())
                if key.startswith("test.") and not key.startswith("test.baseline.")
            },
        },
    )


def _flat_numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _model_columns(model) -> tuple[list[str], list[str]]:
    """The numeric and categorical input columns of a model built by build_model."""
    columns = {name: list(cols) for name, _, cols in model.named_steps["preprocess"].transformers_}
    return columns.get("numeric", []), columns.get("categorical", [])


def _load_file(root: Path, settings: ServeSettings) -> ServedModel:
    import skops.io

    from churnlab.model import TRUSTED_TYPES

    path = settings.model_file(root)
    where = f"{SERVE_FILE}: serve.model: {settings.model}"
    try:
        identity = _file_identity(path)
        data = path.read_bytes()
    except OSError as exc:
        raise ChurnlabError(
            f"{where}: cannot be read ({exc.strerror}): name a .skops model file of the "
            'project (models/model.skops after `make repro`) or "champion"'
        ) from None
    try:
        model = skops.io.loads(data, trusted=TRUSTED_TYPES)
        numeric, categorical = _model_columns(model)
    except Exception as exc:  # skops, zip, a foreign pipeline: the same advice
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChurnlabError(
            f"{where}: not a churnlab model ({first}): name models/model.skops or a file "
            "exported from the registry"
        ) from None
    params = load_params(root)
    metrics_path = root / get_key(params, "paths.test_metrics", "params/paths.yaml")
    metrics = {}
    if metrics_path.is_file():
        metrics = _flat_numbers(json.loads(metrics_path.read_text()))
    threshold = settings.threshold
    if threshold is None:
        if "threshold" not in metrics:
            raise ChurnlabError(
                f"{SERVE_FILE}: serve.threshold: null, and {metrics_path.relative_to(root)} "
                "has no threshold: set serve.threshold to the model's operating threshold, "
                "or run `make repro`"
            )
        threshold = metrics["threshold"]
    digest = hashlib.sha256(data).hexdigest()
    source = get_key(params, "data", "params/data.yaml")
    return ServedModel(
        name=path.name,
        version=f"file:{digest[:12]}",  # as `churnlab score --model` names it
        source="file",
        threshold=float(threshold),
        model=model,
        numeric=numeric,
        categorical=categorical,
        identity=identity,
        info={
            "file": str(path),
            "sha256": digest,
            "training_data": {
                "source": str(source.get("source")),
                "source_sha256": source.get("sha256"),
            },
            "metrics": {
                k: v
                for k, v in metrics.items()
                if not k.startswith("baseline.") and k != "threshold"
            },
        },
    )


def load_served_model(root: Path, settings: ServeSettings, features: list[str]) -> ServedModel:
    """The champion (registry alias) or the model file the settings name.

    Raises:
        ChurnlabError: no champion yet, a file that is not a model, no threshold, or a model
            that takes columns the schema does not describe.
    """
    if settings.from_registry:
        model = _check_columns(_load_registry(root), features, "the registry's champion")
    else:
        where = f"{SERVE_FILE}: serve.model: {settings.model}"
        model = _check_columns(_load_file(root, settings), features, where)
    return with_fast_scorer(model)


def _file_identity(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def model_identity(root: Path, settings: ServeSettings) -> str:
    """What changes when a newer model is there: the champion alias's version, or the model
    file's size and modification time."""
    if settings.from_registry:
        import mlflow

        from churnlab.tracking.settings import load_settings, store_lock

        tracking = load_settings(root)
        with store_lock(tracking.uri):
            client = mlflow.MlflowClient(tracking.uri)
            version = client.get_model_version_by_alias(tracking.registered_model, "champion")
        return str(version.version)
    return _file_identity(settings.model_file(root))


def limit_threads() -> None:
    """One thread for OpenMP and BLAS: a single-customer prediction otherwise pays the start
    of a thread pool each time (HistGradientBoosting: scikit-learn#16429)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
