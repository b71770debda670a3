"""The model a month is judged against: the registry's ``champion``, its operating
threshold, the customers it was trained on (the reference) and its feature importance.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab.data import ID_COLUMN, TARGET_COLUMN
from churnlab.errors import ChurnlabError
from churnlab.files import write_json
from churnlab.model import TRUSTED_TYPES, model_input
from churnlab.tracking.registry import MODEL_FILE, TRAINING_IDS
from churnlab.tracking.settings import (
    display_uri,
    first_line,
    fluent_uri,
    load_settings,
    store_lock,
)

THRESHOLD_METRIC = "test.threshold"  # logged by the register stage from metrics/test.json
CACHE = ".churnlab/monitor"  # per champion version: its permutation importance


@dataclass
class Champion:
    """The champion model with what judging a month needs."""

    name: str
    version: int
    run_id: str
    threshold: float
    model: object  # the fitted scikit-learn Pipeline
    numeric: list[str]
    categorical: list[str]
    training_ids: np.ndarray

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        inputs = model_input(frame, self.numeric, self.categorical)
        return self.model.predict_proba(inputs)[:, 1]


def model_columns(model) -> tuple[list[str], list[str]]:
    """The numeric and categorical columns of a model built by churnlab.model.build_model."""
    columns = {name: list(cols) for name, _, cols in model.named_steps["preprocess"].transformers_}
    return columns.get("numeric", []), columns.get("categorical", [])


def load_champion(root: Path, version: int | None = None, alias: str = "champion") -> Champion:
    """The ``champion`` of the registered model (or the version another ``alias`` names,
    or registered ``version``), with its threshold and training ids.

    Args:
        root: the project.
        version: a registered version to load instead of the champion (``churnlab score
            --version``).
        alias: the registry alias to load when no version is given (the cycle's
            ``challenger``).

    Raises:
        ChurnlabError: no champion yet (say what to run), or a champion without the
            records a judgement needs.
    """
    # one verdict line per month is the output; MLflow's download bars are not
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import skops.io
    from mlflow.exceptions import MlflowException

    settings = load_settings(root)
    name = settings.registered_model
    client = mlflow.MlflowClient(settings.uri)
    try:
        with store_lock(settings.uri):
            if version is not None:
                entry = client.get_model_version(name, str(version))
            else:
                entry = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if version is not None:
            raise ChurnlabError(
                f"--version {version}: no version {version} of the registered model "
                f"'{name}' in {display_uri(settings.uri)} ({first_line(exc)}): name a "
                "registered version (the MLflow UI, `make ui`, lists them), or leave the "
                "version out to use the champion"
            ) from None
        raise ChurnlabError(
            f"params/tracking.yaml: tracking.registered_model: no {alias} of '{name}' in "
            f"{display_uri(settings.uri)} yet ({first_line(exc)}): run `make repro` first; its "
            "evaluate stage registers the first model as champion"
        ) from None
    where = f"{name} version {entry.version}"
    with tempfile.TemporaryDirectory() as folder, store_lock(settings.uri):
        with fluent_uri(settings.uri):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{entry.version}", dst_path=f"{folder}/model"
            )
            try:
                ids_file = mlflow.artifacts.download_artifacts(
                    run_id=entry.run_id, artifact_path=TRAINING_IDS, dst_path=f"{folder}/ids"
                )
            except MlflowException:
                raise ChurnlabError(
                    f"{where}: no {TRAINING_IDS} in its run: the customers it was trained on "
                    "are unknown, so there is no reference to compare months with; register a "
                    "new model (`dvc repro -f evaluate`)"
                ) from None
        try:
            model = skops.io.load(Path(local) / MODEL_FILE, trusted=TRUSTED_TYPES)
        except Exception as exc:  # skops, zip: whatever the damage, the same advice
            raise ChurnlabError(
                f"{where}: the model file cannot be loaded ({first_line(exc)}): register a new "
                "model (`dvc repro -f evaluate`)"
            ) from None
        training_ids = pd.read_parquet(ids_file).iloc[:, 0].astype(str).to_numpy()
        metrics = client.get_run(entry.run_id).data.metrics
    if THRESHOLD_METRIC not in metrics:
        raise ChurnlabError(
            f"{where}: its run has no metric {THRESHOLD_METRIC} (the operating threshold): "
            "register a new model (`dvc repro -f evaluate`)"
        )
    numeric, categorical = model_columns(model)
    return Champion(
        name,
        int(entry.version),
        entry.run_id,
        float(metrics[THRESHOLD_METRIC]),
        model,
        numeric,
        categorical,
        training_ids,
    )


def reference_table(
    champion: Champion, prepared: list[Path], more: Callable[[], pd.DataFrame] | None = None
) -> pd.DataFrame:
    """The champion's training customers, from the prepared tables that hold them.

    Args:
        champion: the champion.
        prepared: the prepared tables (``paths.train``, ``paths.test``).
        more: called only when some customers are in none of them: more prepared rows (the
            labelled months of the continuous-training cycle: a champion the cycle kept was
            trained on months that later retraining no longer holds).

    Raises:
        ChurnlabError: when some of them are in none of the tables.
    """
    tables = [pd.read_parquet(path) for path in prepared if path.is_file()]
    if not tables:
        raise ChurnlabError(
            f"{prepared[0]}: file not found: the reference is the prepared data the champion "
            "was trained on; run `make repro`"
        )
    table = pd.concat(tables, ignore_index=True).drop_duplicates(ID_COLUMN)
    wanted = set(champion.training_ids)
    if more is not None and not wanted <= set(table[ID_COLUMN].astype(str)):
        table = pd.concat([table, more()], ignore_index=True).drop_duplicates(ID_COLUMN)
    reference = table[table[ID_COLUMN].astype(str).isin(wanted)].reset_index(drop=True)
    if len(reference) < len(wanted):
        shown = ", ".join(str(p) for p in prepared)
        raise ChurnlabError(
            f"{shown}: {len(wanted) - len(reference)} of the {len(wanted)} customers "
            f"{champion.name} version {champion.version} (champion) was trained on are not in "
            "the prepared data: the data changed since it was trained; run `make repro` so that "
            "a model of this data becomes champion"
        )
    missing = [c for c in champion.columns if c not in reference.columns]
    if missing:
        raise ChurnlabError(
            f"{prepared[0]}: columns {missing} the champion takes are not "
            "in the prepared data: run `make repro`"
        )
    return reference


def feature_importance(
    root: Path, champion: Champion, reference: pd.DataFrame, repeats: int, max_rows: int, seed: int
) -> dict[str, float]:
    """Each input column's share of the champion's permutation importance (ROC AUC drop).

    Computed once per champion version and kept in ``.churnlab/monitor/``; negative
    importances count as 0; equal shares when no column matters.
    """
    from churnlab.evaluation import permutation_importance

    cache = root / CACHE / f"importance-{champion.name}-v{champion.version}.json"
    key = {"run_id": champion.run_id, "repeats": repeats, "max_rows": max_rows, "seed": seed}
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["importance"]
    sample = reference
    if len(sample) > max_rows:
        sample = sample.sample(n=max_rows, random_state=seed)
    mean, _ = permutation_importance(
        champion.model,
        model_input(sample, champion.numeric, champion.categorical),
        sample[TARGET_COLUMN].to_numpy(),
        repeats,
        seed,
    )
    raw = np.maximum(mean, 0.0)
    shares = raw / raw.sum() if raw.sum() > 0 else np.full(len(raw), 1 / len(raw))
    importance = {c: float(s) for c, s in zip(champion.columns, shares, strict=True)}
    write_json(cache, {"key": key, "importance": importance})
    return importance
