"""The cycle's retraining and promotion: the training table, the pipeline run, the paired
comparison of challenger and champion, and the move of the ``champion`` alias.

Retraining is the project's own DVC pipeline: the cycle writes the labelled months to
``paths.cycle_training`` (versioned with ``dvc add``), the prepare stage adds them to the
training split, and ``dvc repro`` re-runs what depends on them. The register stage then
registers the new model as ``challenger`` only (``CHURNLAB_PROMOTION=hold``): the cycle, not
the stage, decides on the champion, by ``churnlab.cycle.rule.promotion_verdict``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from churnlab.config import get_key
from churnlab.cycle.rule import CYCLE_FILE, paired_difference, promotion_verdict
from churnlab.cycle.training import (
    holdout_ids,
    labelled_rows,
    month_files,
    month_weights,
    prepared_rows,
)
from churnlab.data import ID_COLUMN, TARGET_COLUMN, WEIGHT_COLUMN, TableSpec
from churnlab.errors import ChurnlabError
from churnlab.files import write_parquet
from churnlab.monitoring.months import MONITOR_FILE
from churnlab.tracking.registry import HOLD_PROMOTION

RETRAIN_LOG = ".churnlab/cycle/retrain.log"


def _ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def _month_rows(root: Path, params: dict, month: str) -> pd.DataFrame:
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    monitor = get_key(params, "monitor", MONITOR_FILE)
    batch, labels = month_files(root, monitor["batches"], monitor["labels"], month)
    if batch is None or labels is None:
        raise ChurnlabError(
            f"{monitor['labels']}/{month}: the batch or labels of {month} are gone since the "
            "cycle decided: put them back and run the cycle again"
        )
    return labelled_rows(batch, labels, spec)


def _holdout(root: Path, params: dict, month: str) -> set[str]:
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    promote = get_key(params, "cycle", CYCLE_FILE)["promote"]
    rows = _month_rows(root, params, month)
    return holdout_ids(rows[spec.id_column], promote["holdout"], promote["seed"], month)


def write_training_table(root: Path, params: dict, month: str, record: dict) -> dict:
    """Write the labelled months to ``paths.cycle_training`` and version it with DVC.

    The latest month's held-out customers are left out (the models are compared on them).
    With ``cycle.recent_half_life`` each row carries its month's weight (``WEIGHT_COLUMN``,
    :func:`churnlab.cycle.training.month_weights`), which the train stage fits with.

    Returns:
        What the training table holds, for the decision line.
    """
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    months = record["training"]["months"]
    latest = months[-1]
    held = _holdout(root, params, latest)
    half_life = get_key(params, "cycle", CYCLE_FILE).get("recent_half_life")
    reference = get_key(params, "monitor", MONITOR_FILE)["reference_month"]
    weights = month_weights(months, str(reference), half_life)
    tables = []
    for name in months:
        rows = _month_rows(root, params, name)
        if name == latest:
            rows = rows[~rows[spec.id_column].isin(held)]
        if half_life is not None:
            rows = rows.assign(**{WEIGHT_COLUMN: weights[name]})
        tables.append(rows)
    table = pd.concat(tables, ignore_index=True)
    target = root / get_key(params, "paths.cycle_training", "params/paths.yaml")
    write_parquet(target, table)
    _dvc(root, ["add", "-q", str(target.relative_to(root))], "version the training table")
    return {
        "months": months,
        "rows": int(len(table)),
        "table_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "holdout": {"month": latest, "customers": len(held), "ids_sha256": _ids_digest(held)},
        "weights": None if half_life is None else {m: round(weights[m], 6) for m in months},
    }


def release_dead_dvc_locks(root: Path) -> list[int]:
    """Drop the entries of DVC's stage lock (``.dvc/tmp/rwlock``) whose process is gone.

    A cycle killed during ``dvc repro`` leaves DVC's entries behind. DVC drops an entry itself
    only when its process no longer exists, but a killed ``dvc`` whose parent died too stays a
    zombie until init reaps it (late, or never, under some container inits), and the next
    ``dvc repro`` then refuses the month. Entries of live processes (a user's own ``dvc
    repro``) are kept.

    Returns:
        The process ids whose entries were dropped.
    """
    import psutil

    path = root / ".dvc" / "tmp" / "rwlock"
    if not path.exists():
        return []
    lock = json.loads(path.read_text() or "{}")

    def alive(info: dict) -> bool:
        try:
            return psutil.Process(int(info["pid"])).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    dropped: set[int] = set()
    for entries in lock.values():
        for target, infos in list(entries.items()):
            holders = infos if isinstance(infos, list) else [infos]
            kept = [info for info in holders if alive(info)]
            dropped |= {int(info["pid"]) for info in holders if info not in kept}
            if not kept:
                del entries[target]
            elif len(kept) != len(holders):
                entries[target] = kept
    if dropped:
        staging = path.with_name(f"{path.name}.churnlab")
        staging.write_text(json.dumps(lock))
        os.replace(staging, path)
    return sorted(dropped)


def _dvc(root: Path, args: list[str], what: str, env: dict | None = None) -> None:
    release_dead_dvc_locks(root)  # a cycle killed mid-repro left DVC's entries behind
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc) if dvc.exists() else (shutil.which("dvc") or "dvc"), *args]
    log = root / RETRAIN_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ dvc {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run(
            command, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False
        )
    if proc.returncode != 0:
        lines = log.read_text().splitlines()
        said = next(
            (line for line in reversed(lines) if "error" in line.lower()),
            lines[-1] if lines else "",
        )
        raise ChurnlabError(
            f"{RETRAIN_LOG}: `dvc {args[0]}` failed ({what}; exit {proc.returncode}): "
            f"{said.strip()[:300]}: fix it and run the same `churnlab cycle` again (the "
            "champion is unchanged; the month is not recorded yet)"
        )


def retrain(root: Path, params: dict, record: dict) -> dict:
    """Run the pipeline on the new training table; the challenger it registered.

    Raises:
        ChurnlabError: the pipeline failed (its last error line), or registered nothing.
    """
    env = {**os.environ, HOLD_PROMOTION: "hold"}
    _dvc(root, ["repro"], "retraining on the new training table", env)
    promotion = root / get_key(params, "paths.promotion", "params/paths.yaml")
    found = json.loads(promotion.read_text()) if promotion.is_file() else {}
    challenger = (found.get("challenger") or {}).get("version")
    if found.get("outcome") != "held" or challenger is None:
        raise ChurnlabError(
            f"{promotion.relative_to(root)}: the retraining registered no challenger held for "
            f"the cycle (outcome {found.get('outcome')!r}): is tracking on "
            "(params/tracking.yaml tracking.enabled, CHURNLAB_TRACKING)? Run the cycle again "
            "with tracking on"
        )
    return {"version": int(challenger)}


def compare(root: Path, params: dict, record: dict, challenger: dict) -> dict:
    """Compare challenger and champion (paired bootstrap of the ROC AUC difference) on the
    held-out customers of the latest labelled month and on the test split.

    Returns:
        The decision record with the comparison, the outcome and the champion after.
    """
    from churnlab.monitoring.champion import load_champion

    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    fill = get_key(params, "prepare", "params/prepare.yaml").get("fill_missing") or {}
    promote = get_key(params, "cycle", CYCLE_FILE)["promote"]
    champion = load_champion(root)
    new = load_champion(root, alias="challenger")
    if new.version != challenger["version"]:
        raise ChurnlabError(
            f"params/tracking.yaml: tracking.registered_model: the alias 'challenger' points at "
            f"version {new.version}, not at version {challenger['version']} the retraining "
            "registered: another run registered a model meanwhile; run the cycle again"
        )
    latest = record["training"]["holdout"]["month"]
    held = _holdout(root, params, latest)
    rows = _month_rows(root, params, latest)
    month = prepared_rows(rows[rows[spec.id_column].isin(held)], spec, fill, f"{latest} held out")
    test = pd.read_parquet(root / get_key(params, "paths.test", "params/paths.yaml"))
    trained = set(map(str, champion.training_ids)) | set(map(str, new.training_ids))
    test = test[~test[ID_COLUMN].astype(str).isin(trained)]
    samples, confidence, seed = promote["bootstrap_samples"], promote["confidence"], promote["seed"]
    on_month = paired_difference(
        month[TARGET_COLUMN].to_numpy(),
        champion.scores(month),
        new.scores(month),
        samples,
        confidence,
        seed,
    )
    on_test = paired_difference(
        test[TARGET_COLUMN].to_numpy(),
        champion.scores(test),
        new.scores(test),
        samples,
        confidence,
        seed + 1,
    )
    promoted, reason = promotion_verdict(
        on_month, on_test, promote["better_by"], promote["test_margin"]
    )
    return {
        **record,
        "challenger": {"version": new.version},  # no run id: a fresh store gives new ones
        "promotion": {"metric": "roc_auc", "held_out_month": on_month, "test_split": on_test},
        "outcome": "promoted" if promoted else "kept champion",
        "reason": f"{record['reason']}; {reason}",
        "champion_after": {"version": new.version if promoted else champion.version},
    }


def promote(root: Path, version: int) -> None:
    """Point the ``champion`` alias at ``version`` (one write: there is always one champion)."""
    import mlflow

    from churnlab.tracking.settings import load_settings, store_lock

    settings = load_settings(root)
    client = mlflow.MlflowClient(settings.uri)
    with store_lock(settings.uri):
        client.set_registered_model_alias(settings.registered_model, "champion", str(version))
