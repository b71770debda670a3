"""Hyper-parameter search in the train stage: candidates x folds, here or on a Dask cluster.

``train.search`` (params/train.yaml) lists, per hyper-parameter of ``train.family``, the
values to try (``space``); ``grid`` tries every combination, ``random`` a seeded draw of
``candidates`` of them. Every candidate is cross-validated on the same seeded stratified
folds as the train stage's own cross-validation (``train.seed``, ``train.cv_folds``) and
ranked by mean ROC AUC. scikit-learn's ``GridSearchCV`` runs the candidate x fold fits, one
after the other here, or as tasks on a cluster's workers through joblib's Dask backend: each
fit is seeded, so the scores and the ranking are the same wherever they run.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd

from churnlab.errors import ChurnlabError
from churnlab.model import build_model, model_input

SEARCH_KEY = "params/train.yaml train.search"
METHODS = ("grid", "random")


def search_candidates(space: dict, method: str, candidates: int, seed: int) -> list[dict]:
    """The candidates to try, in a fixed order: the grid's, or a seeded draw from it.

    Raises:
        ChurnlabError: an empty space, or a hyper-parameter without values.
    """
    from sklearn.model_selection import ParameterGrid

    if not space:
        raise ChurnlabError(f"{SEARCH_KEY}.space: expected values to try, found none")
    for name, values in space.items():
        if not isinstance(values, list) or not values:
            raise ChurnlabError(
                f"{SEARCH_KEY}.space.{name}: expected a list of values to try, found {values!r}"
            )
    grid = list(ParameterGrid(space))
    if method == "grid" or candidates >= len(grid):
        return grid
    picked = np.random.default_rng(seed).choice(len(grid), size=candidates, replace=False)
    return [grid[i] for i in sorted(picked)]


def search_hyperparameters(
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    target: str,
    family: str,
    hyperparams: dict,
    candidates: list[dict],
    folds: int,
    seed: int,
    client: Any = None,
    memory_per_worker: str | None = None,
) -> dict:
    """Cross-validate every candidate; the table of results and the best candidate.

    Args:
        hyperparams: the family's hyper-parameters from params; a candidate overrides some.
        client: a ``distributed.Client`` to run the fits on; None runs them here.
        memory_per_worker: what each worker may use (``compute.memory_per_worker``), for
            the error when one dies.

    Returns:
        ``{"best": {...}, "candidates": [{"params", "roc_auc_mean", "roc_auc_std",
        "rank"}, ...]}`` in candidate order; ``best`` is the first of the highest mean.

    Raises:
        ChurnlabError: a hyper-parameter the estimator does not take (from build_model);
            a worker that died on the fits (out of memory), in one line.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    for candidate in candidates:  # a wrong name fails here, in words, not in a worker
        build_model(numeric, categorical, family, seed, **{family: {**hyperparams, **candidate}})
    model = build_model(numeric, categorical, family, seed, **{family: hyperparams})
    grid = [{f"estimator__{k}": [v] for k, v in c.items()} for c in candidates]
    search = GridSearchCV(
        model,
        grid,
        scoring="roc_auc",
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        n_jobs=None if client is None else -1,
        refit=False,
        error_score="raise",
    )
    features = model_input(train, numeric, categorical)
    labels = train[target].to_numpy()
    backend = nullcontext() if client is None else _on_the_cluster(client)
    try:
        with backend:
            search.fit(features, labels)
    except Exception as exc:
        if client is None or not _lost_to_the_cluster(exc):
            raise
        from churnlab.compute.cluster import COMPUTE_FILE

        raise ChurnlabError(
            f"{COMPUTE_FILE}: compute.memory_per_worker: the search's fits failed on the "
            f"Dask cluster ({type(exc).__name__}): a worker died, usually out of memory "
            f"(each has {memory_per_worker or 'its own limit'}; a fit holds the training "
            f"table, {len(train):,} rows, and its folds): give workers more memory or "
            "search on fewer rows; nothing was written"
        ) from None
    results = search.cv_results_
    rows = [
        {
            "params": candidates[i],
            "roc_auc_mean": round(float(results["mean_test_score"][i]), 6),
            "roc_auc_std": round(float(results["std_test_score"][i]), 6),
            "rank": int(results["rank_test_score"][i]),
        }
        for i in range(len(candidates))
    ]
    best = int(np.argmax(results["mean_test_score"]))
    return {"best": candidates[best], "candidates": rows}


def _lost_to_the_cluster(exc: BaseException) -> bool:
    """A fit lost with its worker: killed too often, or its scattered data gone with it."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    return isinstance(exc, KilledWorker | FutureCancelledError)


@functools.cache
def _cluster_backend() -> str:
    """The name of joblib's Dask backend that never falls back to the caller (registered
    once per process).

    joblib counts a Dask backend's jobs as the cluster's threads whatever ``n_jobs`` says,
    and runs one job in the calling process: a cluster of one one-thread worker would
    leave its worker idle and fit everything here (tests/test_dask.py counts the tasks).
    """
    import joblib
    from joblib._dask import DaskDistributedBackend

    class AtLeastTwoJobs(DaskDistributedBackend):
        def effective_n_jobs(self, n_jobs):
            return max(2, super().effective_n_jobs(n_jobs))

    joblib.register_parallel_backend("churnlab-dask", AtLeastTwoJobs)
    return "churnlab-dask"


def _on_the_cluster(client: Any):
    """joblib's configuration that runs the fits on ``client``'s workers."""
    import joblib

    return joblib.parallel_config(_cluster_backend(), client=client)


def search_from_params(
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    target: str,
    family: str,
    hyperparams: dict,
    search: dict,
    folds: int,
    seed: int,
    compute: Any,
) -> dict:
    """``search_hyperparameters`` as ``train.search`` and ``params/compute.yaml`` say.

    Args:
        search: the ``train.search`` section; compute: a ``ComputeSettings``.
    """
    from churnlab.compute.cluster import connect

    candidates = search_candidates(
        search["space"], search["method"], search["candidates"], search["seed"]
    )
    with connect(compute) if compute.on_cluster else nullcontext() as client:
        return search_hyperparameters(
            train,
            numeric,
            categorical,
            target,
            family,
            hyperparams,
            candidates,
            folds,
            seed,
            client,
            compute.memory_per_worker,
        )
