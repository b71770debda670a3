# ---
# jupyter:
#   kernelspec:
#     display_name: churnlab (Python 3.11)
#     language: python
#     name: churnlab
# ---

# %% [markdown]
# # 03 · Train: a scikit-learn Pipeline, cross-validated
#
# Preprocessing (impute and scale numbers, one-hot encode categories) and the estimator are
# one Pipeline, so the saved model takes raw prepared rows. The estimator family and its
# hyper-parameters come from `params/train.yaml`. Seeded, stratified K-fold cross-validation
# on the training split gives an honest estimate and the out-of-fold scores from which the
# evaluate stage picks its decision threshold. With `train.calibration` (`sigmoid` or
# `isotonic`) the final model's scores are calibrated, so that a score of 0.3 means 30
# leavers in 100: the monitor estimates recall and precision of months without labels from
# them. The calibrator is fitted on the out-of-fold scores of the cross-validation (customers
# each fold model had not seen), so calibration fits no extra model: 5 folds and 1 final fit,
# as without it. The out-of-fold scores are calibrated by the same map before the evaluate
# stage picks its threshold on them.

# %%
from churnlab.notebook import stage_params

# defaults from params/; in JupyterLab this also moves to the project root
param = stage_params("train")

# %% tags=["parameters"]
paths_train: str = param("paths.train")  # training split (prepare stage)
paths_model: str = param("paths.model")  # output: the fitted Pipeline (skops)
paths_features: str = param("paths.features")  # output: the feature lists the model takes
paths_oof_scores: str = param("paths.oof_scores")  # output: out-of-fold training scores
paths_cv_metrics: str = param("paths.cv_metrics")  # output: cross-validation metrics
train_seed: int = param("train.seed")  # seed of the folds and the estimator
train_cv_folds: int = param("train.cv_folds")  # number of cross-validation folds
train_family: str = param("train.family")  # logistic_regression or gradient_boosting
train_calibration: str = param("train.calibration")  # none, isotonic or sigmoid
train_logistic_regression: dict = param("train.logistic_regression")  # its hyper-parameters
train_gradient_boosting: dict = param("train.gradient_boosting")  # its hyper-parameters
train_search: dict = param("train.search")  # hyper-parameter search, off unless enabled
compute_engine: str = param("compute.engine")  # where the search runs: local or dask
compute_scheduler = param("compute.scheduler")  # str: a Dask scheduler; None: a local cluster
compute_workers: int = param("compute.workers")  # workers of the local cluster
compute_memory_per_worker: str = param("compute.memory_per_worker")  # memory of each

# %%
from pathlib import Path

import pandas as pd

from churnlab.compute.cluster import ComputeSettings
from churnlab.data import ID_COLUMN, TARGET_COLUMN, feature_columns
from churnlab.files import write_json, write_parquet
from churnlab.model import (
    build_model,
    calibrate_model,
    cross_validate,
    fit_model,
    row_weights,
    save_model,
)
from churnlab.search import search_from_params

train = pd.read_parquet(paths_train)
numeric, categorical = feature_columns(train)
hyperparams = {"logistic_regression": train_logistic_regression,
               "gradient_boosting": train_gradient_boosting}

# %% keep_output=true
# NBVAL_CHECK_OUTPUT
print(f"features: {len(numeric)} numeric, {len(categorical)} categorical")

# %% [markdown]
# ## Hyper-parameter search
#
# Off by default (`train.search.enabled`). When on, every candidate of `train.search` is
# cross-validated on the folds below, here or on a Dask cluster (`params/compute.yaml`),
# and the best one (mean ROC AUC) replaces the family's hyper-parameters.

# %%
# papermill_description=search
search = None
if train_search["enabled"]:
    compute = ComputeSettings.from_section(
        {"engine": compute_engine, "scheduler": compute_scheduler, "workers": compute_workers,
         "memory_per_worker": compute_memory_per_worker})
    search = search_from_params(train, numeric, categorical, TARGET_COLUMN, train_family,
                                hyperparams[train_family], train_search, train_cv_folds,
                                train_seed, compute)
    hyperparams[train_family] = {**hyperparams[train_family], **search["best"]}
    display(pd.DataFrame(search["candidates"]))
model = build_model(numeric, categorical, train_family, train_seed, **hyperparams)
print(model)

# %% [markdown]
# ## Cross-validation

# %%
# papermill_description=cross-validation
# the cycle's recent months weigh more when cycle.recent_half_life says so (docs/cycle.md)
weights = row_weights(train)
cv = cross_validate(model, train, numeric, categorical, TARGET_COLUMN, train_cv_folds,
                    train_seed, weights)
folds = cv.folds
folds.round(4)

# %%
cv_metrics = {
    "folds": train_cv_folds,
    "roc_auc_mean": round(float(folds["roc_auc"].mean()), 6),
    "roc_auc_std": round(float(folds["roc_auc"].std(ddof=1)), 6),
    "pr_auc_mean": round(float(folds["pr_auc"].mean()), 6),
    "pr_auc_std": round(float(folds["pr_auc"].std(ddof=1)), 6),
}
if search is not None:
    cv_metrics["search"] = search
cv_metrics

# %% [markdown]
# ## The final model, fitted on the whole training split
#
# Then calibrated (`train.calibration`) on the out-of-fold scores above. Sigmoid calibration
# is strictly increasing: the customers keep their order, so the fold ROC AUCs above hold
# for it too; isotonic calibration ties the customers of each of its steps.

# %%
# papermill_description=final-fit
fitted = fit_model(model, train, numeric, categorical, TARGET_COLUMN, weights)
fitted, out_of_fold = calibrate_model(fitted, cv, train[TARGET_COLUMN].to_numpy(),
                                      train_calibration)
features = {"numeric": numeric, "categorical": categorical, "family": train_family}
save_model(fitted, features, Path(paths_model), Path(paths_features))
write_parquet(Path(paths_oof_scores),
              pd.DataFrame({ID_COLUMN: train[ID_COLUMN], TARGET_COLUMN: train[TARGET_COLUMN],
                            "score": out_of_fold}))
write_json(Path(paths_cv_metrics), cv_metrics)
