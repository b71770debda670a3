"""Benchmark of train.calibration: what calibrating costs the train stage, and what it changes.

On the prepared training and test splits of a project (``dvc repro prepare`` has run), with
the params of ``params/train.yaml`` and ``params/evaluate.yaml``:

1. the train stage's model work (``cross_validate``, ``fit_model``, ``calibrate_model``, as
   ``notebooks/03_train.py`` runs them) for ``none``, ``sigmoid`` and ``isotonic``, back to
   back, ``--repeats`` rounds (one of each per round, so a busy spell hits all three), as
   medians of wall and CPU seconds; and once, for comparison, the earlier way (``--before``):
   the estimator wrapped in ``CalibratedClassifierCV(ensemble=False)`` and that wrapper
   cross-validated (5 x 6 + 6 = 36 fits);
2. on the test split, as the evaluate stage computes them: ROC AUC, Brier score, ECE
   (mean |churn rate - mean score| over score deciles, weighted by their size), and the
   threshold the evaluate stage picks on the (calibrated) out-of-fold scores with the
   recall and precision it gives.

Prints the figures and writes them into ``bench/RESULTS.md`` between the calibration markers::

    OMP_NUM_THREADS=1 .venv/bin/python bench/calibration.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/calibration.py --repeats 1 --no-before

Nothing in the project is written but that section.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from results import write_section  # bench/ is the script's folder, first on sys.path

from churnlab.config import get_key, load_params
from churnlab.data import TARGET_COLUMN, feature_columns
from churnlab.evaluation import choose_threshold, evaluate_scores, expected_calibration_error
from churnlab.model import (
    build_model,
    calibrate_model,
    cross_validate,
    fit_model,
    predict_scores,
)

PROJECT = Path(__file__).resolve().parent.parent
CALIBRATIONS = ("none", "sigmoid", "isotonic")


def noise_floor(scores: np.ndarray, draws: int = 200, seed: int = 3) -> float:
    """The ECE of perfectly calibrated scores: labels drawn from the scores themselves, mean
    over ``draws`` (what the label noise of that many customers alone gives)."""
    rng = np.random.default_rng(seed)
    return float(
        np.mean(
            [
                expected_calibration_error((rng.random(len(scores)) < scores).astype(int), scores)
                for _ in range(draws)
            ]
        )
    )


def cross_fitted(cv, labels: np.ndarray, calibration: str) -> np.ndarray:
    """Out-of-fold scores calibrated honestly: each fold's by a calibrator fitted on the
    other folds' out-of-fold margins (the train stage fits one on all of them)."""
    from sklearn.calibration import _SigmoidCalibration
    from sklearn.isotonic import IsotonicRegression

    if calibration == "none":
        return cv.scores
    out = np.zeros(len(labels))
    for fit_rows, held_rows in cv.splitter.split(np.zeros(len(labels)), labels):
        calibrator = (
            _SigmoidCalibration()
            if calibration == "sigmoid"
            else IsotonicRegression(out_of_bounds="clip")
        ).fit(cv.margins[fit_rows], labels[fit_rows])
        out[held_rows] = calibrator.predict(cv.margins[held_rows])
    return out


def train_stage(model, train, numeric, categorical, folds, seed, calibration):
    """The train notebook's model work; returns the model, the out-of-fold scores, the
    cross-validation, and the wall and CPU seconds it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    cv = cross_validate(model, train, numeric, categorical, TARGET_COLUMN, folds, seed)
    fitted = fit_model(model, train, numeric, categorical, TARGET_COLUMN)
    fitted, out_of_fold = calibrate_model(fitted, cv, train[TARGET_COLUMN].to_numpy(), calibration)
    return fitted, out_of_fold, cv, time.perf_counter() - wall, time.process_time() - cpu


def before_stage(model, train, numeric, categorical, folds, seed, calibration):
    """The earlier train stage: the estimator wrapped in CalibratedClassifierCV, and the
    wrapper cross-validated (calibration inside every fold)."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    wrapped = clone(model).set_params(
        estimator=CalibratedClassifierCV(
            model.named_steps["estimator"], method=calibration, cv=splitter, ensemble=False
        )
    )
    wall, cpu = time.perf_counter(), time.process_time()
    cv = cross_validate(wrapped, train, numeric, categorical, TARGET_COLUMN, folds, seed)
    fitted = fit_model(wrapped, train, numeric, categorical, TARGET_COLUMN)
    return fitted, cv.scores, cv.folds, time.perf_counter() - wall, time.process_time() - cpu


def quality(fitted, out_of_fold, train, test, features, evaluate: dict) -> dict:
    """The test figures the evaluate stage computes, with the threshold it would pick."""
    costs = {
        "cost_missed_churner": evaluate["cost_missed_churner"],
        "cost_wasted_offer": evaluate["cost_wasted_offer"],
    }
    train_labels = train[TARGET_COLUMN].to_numpy()
    threshold = choose_threshold(train_labels, out_of_fold, evaluate["threshold_rule"], **costs)
    labels = test[TARGET_COLUMN].to_numpy()
    scores = predict_scores(fitted, test, features)
    metrics = evaluate_scores(
        labels, scores, train_labels, threshold, evaluate["top_fraction"], **costs
    )
    return {
        "threshold": threshold,
        "roc_auc": metrics["roc_auc"],
        "brier": metrics["brier"],
        "ece": expected_calibration_error(labels, scores),
        "oof_ece": expected_calibration_error(train_labels, out_of_fold),
        "recall": metrics["recall"],
        "precision": metrics["precision"],
        "flagged": int(np.sum(scores >= threshold)),
        "oof": out_of_fold,
        "scores": scores,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-before", dest="before", action="store_false")
    parser.add_argument("--results", type=Path, default=PROJECT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    root = args.project.resolve()
    params = load_params(root)
    paths = get_key(params, "paths", "params/paths.yaml")
    settings = get_key(params, "train", "params/train.yaml")
    evaluate = get_key(params, "evaluate", "params/evaluate.yaml")
    train = pd.read_parquet(root / paths["train"])
    test = pd.read_parquet(root / paths["test"])
    numeric, categorical = feature_columns(train)
    features = {"numeric": numeric, "categorical": categorical}
    family, folds, seed = settings["family"], settings["cv_folds"], settings["seed"]
    model = build_model(
        numeric,
        categorical,
        family,
        seed,
        logistic_regression=settings["logistic_regression"],
        gradient_boosting=settings["gradient_boosting"],
    )
    times = {name: {"wall": [], "cpu": []} for name in CALIBRATIONS}
    found = {}
    for round_ in range(args.repeats):
        for name in CALIBRATIONS:
            fitted, out_of_fold, cv, wall, cpu = train_stage(
                model, train, numeric, categorical, folds, seed, name
            )
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            print(f"round {round_ + 1} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            if round_ == 0:
                labels = train[TARGET_COLUMN].to_numpy()
                found[name] = {
                    **quality(fitted, out_of_fold, train, test, features, evaluate),
                    "cv_roc_auc": cv.folds["roc_auc"].to_numpy(),
                    "cross_fitted_ece": expected_calibration_error(
                        labels, cross_fitted(cv, labels, name)
                    ),
                }
    before = None
    if args.before:
        fitted, out_of_fold, cv_folds, wall, cpu = before_stage(
            model, train, numeric, categorical, folds, seed, "sigmoid"
        )
        before = {
            "wall": wall,
            "cpu": cpu,
            **quality(fitted, out_of_fold, train, test, features, evaluate),
            "cv_roc_auc": cv_folds["roc_auc"].to_numpy(),
            "cross_fitted_ece": float("nan"),
        }
        print(f"before (sigmoid inside every fold): {wall:.1f} s wall, {cpu:.1f} s CPU")
    medians = {
        name: {kind: statistics.median(values) for kind, values in t.items()}
        for name, t in times.items()
    }
    base = medians["none"]["cpu"]
    none_flags = found["none"]["scores"] >= found["none"]["threshold"]
    load = os.getloadavg()
    lines = [
        "## Calibration (bench/calibration.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs "
        f"shared with other agents (load average {load[0]:.1f} / {load[1]:.1f} at the end), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {family}, "
        f"{len(train)} training and {len(test)} test customers, {folds} folds, threshold rule "
        f"{evaluate['threshold_rule']}. Train-stage model work (cross-validation, final fit, "
        f"calibration), medians of {args.repeats} rounds of the three back to back.",
        "",
        "| train.calibration | fits | wall | CPU | CPU vs none | CV ROC AUC (mean of folds) "
        "| test ROC AUC | Brier | ECE test | ECE out-of-fold (cross-fitted) | threshold "
        "| recall | precision "
        "| flagged (differ from none) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(name, found[name], medians[name], f"{folds} + 1") for name in CALIBRATIONS]
    if before is not None:
        rows.append(
            (
                "sigmoid, before (CalibratedClassifierCV in every fold, 1 run)",
                before,
                {"wall": before["wall"], "cpu": before["cpu"]},
                f"{folds} x {folds + 1} + {folds + 1}",
            )
        )
    for name, f, t, fits in rows:
        differ = int(np.sum((f["scores"] >= f["threshold"]) != none_flags))
        lines.append(
            f"| {name} | {fits} | {t['wall']:.1f} s | {t['cpu']:.1f} s | "
            f"{t['cpu'] / base:.2f}x | {np.mean(f['cv_roc_auc']):.4f} | {f['roc_auc']:.4f} | "
            f"{f['brier']:.5f} | {f['ece']:.4f} | "
            f"{f['oof_ece']:.4f} ({f['cross_fitted_ece']:.4f}) | {f['threshold']:.4f} | "
            f"{f['recall']:.4f} | {f['precision']:.4f} | {f['flagged']} ({differ}) |"
        )
    lines += [
        "",
        "ECE: mean |churn rate - mean score| over score deciles, weighted by size. Its floor "
        "from the labels' noise alone (labels drawn from the scores; mean of 200 draws): "
        f"{noise_floor(found['sigmoid']['scores']):.4f} on the {len(test)} test customers, "
        f"{noise_floor(found['sigmoid']['oof']):.4f} on the {len(train)} out-of-fold scores. "
        "The train stage fits the calibrator on all the out-of-fold scores and then maps them "
        "(in sample: isotonic is exact on them by construction); cross-fitted, each fold is "
        "mapped by a calibrator fitted on the other folds.",
        "",
        "CPU seconds per round (none, sigmoid, isotonic): "
        + "; ".join(
            ", ".join(f"{times[name]['cpu'][i]:.1f}" for name in CALIBRATIONS)
            for i in range(args.repeats)
        )
        + ".",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("calibration", text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
