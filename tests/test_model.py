import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier

from churnlab.data import ID_COLUMN, TARGET_COLUMN
from churnlab.errors import ChurnlabError
from churnlab.model import (
    TRUSTED_TYPES,
    build_model,
    calibrate_model,
    canonical_skops,
    cross_validate,
    fit_model,
    load_model,
    predict_scores,
    save_model,
)

NUMERIC, CATEGORICAL = ["months", "spend"], ["plan"]


def customers(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    months = rng.integers(0, 72, rows).astype(float)
    plan = rng.choice(["basic", "pro"], rows)
    churn = rng.random(rows) < np.where(plan == "basic", 0.5, 0.1) * (months < 24) + 0.05
    return pd.DataFrame(
        {
            ID_COLUMN: [f"c{i}" for i in range(rows)],
            "months": months,
            "spend": rng.normal(50, 10, rows),
            "plan": plan,
            TARGET_COLUMN: churn.astype("int8"),
        }
    )


def trained(table, family, calibration, folds=3, **hyper):
    """The train notebook's steps: cross-validate, fit on every row, calibrate."""
    model = build_model(NUMERIC, CATEGORICAL, family, seed=1, **{family: hyper})
    cv = cross_validate(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN, folds, 1)
    fitted = fit_model(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN)
    calibrated, out_of_fold = calibrate_model(
        fitted, cv, table[TARGET_COLUMN].to_numpy(), calibration
    )
    return cv, calibrated, out_of_fold


@pytest.mark.parametrize(
    ("family", "calibration"),
    [
        ("logistic_regression", "none"),
        ("gradient_boosting", "none"),
        ("gradient_boosting", "sigmoid"),
        ("gradient_boosting", "isotonic"),
    ],
)
def test_both_families_fit_cross_validate_and_round_trip(tmp_path, family, calibration):
    table = customers()
    hyper = {"max_iter": 30} if family == "gradient_boosting" else {"C": 1.0}
    cv, fitted, oof = trained(table, family, calibration, **hyper)
    assert len(cv.folds) == 3 and oof.shape == (len(table),) and ((0 <= oof) & (oof <= 1)).all()
    features = {"numeric": NUMERIC, "categorical": CATEGORICAL}
    save_model(fitted, features, tmp_path / "m.skops", tmp_path / "f.json")
    first = (tmp_path / "m.skops").read_bytes()
    loaded, loaded_features = load_model(tmp_path / "m.skops", tmp_path / "f.json")
    assert loaded_features == features
    np.testing.assert_array_equal(
        predict_scores(loaded, table, features), predict_scores(fitted, table, features)
    )
    # trained again from nothing: the same bytes
    save_model(
        trained(table, family, calibration, **hyper)[1],
        features,
        tmp_path / "m.skops",
        tmp_path / "f.json",
    )
    assert (tmp_path / "m.skops").read_bytes() == first


def test_the_same_model_gives_the_same_bytes(tmp_path):
    table = customers()
    model = build_model(
        NUMERIC, CATEGORICAL, "gradient_boosting", seed=1, gradient_boosting={"max_iter": 20}
    )
    first = fit_model(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN)
    second = fit_model(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN)
    assert skops.io.dumps(first) != skops.io.dumps(second)  # what canonical_skops fixes
    assert canonical_skops(skops.io.dumps(first)) == canonical_skops(skops.io.dumps(second))
    names = zipfile.ZipFile(io.BytesIO(canonical_skops(skops.io.dumps(first)))).namelist()
    assert names[0] == "schema.json" and names[1].startswith("000000")


def test_a_model_file_with_an_untrusted_type_does_not_load(tmp_path):
    data = skops.io.dumps({"payload": pd.Timestamp("2024-01-01")})
    (tmp_path / "m.skops").write_bytes(data)
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(ChurnlabError, match="cannot load the model"):
        load_model(tmp_path / "m.skops", tmp_path / "f.json")
    assert "pandas._libs.tslibs.timestamps.Timestamp" not in TRUSTED_TYPES


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Mean |observed churn rate - mean score| over score deciles, weighted by their size."""
    edges = np.quantile(scores, np.linspace(0, 1, bins + 1))
    band = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    return float(
        sum(
            np.mean(band == b) * abs(labels[band == b].mean() - scores[band == b].mean())
            for b in np.unique(band)
        )
    )


def test_calibration_lowers_the_calibration_error_on_held_out_customers():
    """An over-confident model (few trees, large steps, small leaves, 600 customers) scores
    4,000 customers it never saw; its calibrated versions are far closer to the truth."""
    train, held = customers(600, seed=1), customers(4000, seed=2)
    features = {"numeric": NUMERIC, "categorical": CATEGORICAL}
    labels = held[TARGET_COLUMN].to_numpy()
    errors = {}
    for calibration in ("none", "sigmoid", "isotonic"):
        fitted = trained(
            train,
            "gradient_boosting",
            calibration,
            max_iter=40,
            learning_rate=0.5,
            min_samples_leaf=5,
        )[1]
        errors[calibration] = expected_calibration_error(
            labels, predict_scores(fitted, held, features)
        )
    assert errors["none"] > 0.08, errors  # the over-confidence to correct is there
    assert errors["sigmoid"] < errors["none"] / 2, errors
    assert errors["isotonic"] < errors["none"] / 2, errors


class CountingTrees(HistGradientBoostingClassifier):
    """A real gradient-boosted classifier that counts its fits (clones share the count)."""

    fits = 0

    def fit(self, X, y, sample_weight=None):
        CountingTrees.fits += 1
        return super().fit(X, y, sample_weight=sample_weight)


@pytest.mark.parametrize("calibration", ["sigmoid", "isotonic"])
def test_the_calibrator_is_fitted_on_the_out_of_fold_scores_with_no_extra_fit(calibration):
    """5 folds + 1 final fit, as without calibration; the calibrator is the one fitted on
    out-of-fold margins computed here independently, not on the final model's own."""
    from scipy.special import expit
    from sklearn.base import clone
    from sklearn.calibration import _SigmoidCalibration
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import StratifiedKFold

    table, held = customers(300, seed=5), customers(200, seed=6)
    labels = table[TARGET_COLUMN].to_numpy()
    model = build_model(NUMERIC, CATEGORICAL, "gradient_boosting", seed=1)
    model.set_params(estimator=CountingTrees(max_iter=20, random_state=1))
    CountingTrees.fits = 0
    cv = cross_validate(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN, 5, 1)
    fitted = fit_model(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN)
    calibrated, out_of_fold = calibrate_model(fitted, cv, labels, calibration)
    assert CountingTrees.fits == 6

    features = table[[*NUMERIC, *CATEGORICAL]].astype({"plan": object})
    margins = np.zeros(len(table))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=1)
    for fit_rows, held_rows in folds.split(features, labels):
        fold_model = clone(model).fit(features.iloc[fit_rows], labels[fit_rows])
        margins[held_rows] = fold_model.decision_function(features.iloc[held_rows])
    in_sample = fitted.decision_function(features)
    held_features = held[[*NUMERIC, *CATEGORICAL]].astype({"plan": object})
    held_margins = fitted.decision_function(held_features)
    held_scores = calibrated.predict_proba(held_features)[:, 1]
    if calibration == "sigmoid":
        expected = _SigmoidCalibration().fit(margins, labels)
        a, b = expected.a_, expected.b_
        wrong = _SigmoidCalibration().fit(in_sample, labels)
        assert abs(wrong.a_ - a) > 0.05  # the final model's own margins give another map
        np.testing.assert_allclose(out_of_fold, expit(-(a * margins + b)), rtol=1e-12)
        np.testing.assert_allclose(held_scores, expit(-(a * held_margins + b)), rtol=1e-12)
    else:
        expected = IsotonicRegression(out_of_bounds="clip").fit(margins, labels)
        np.testing.assert_allclose(out_of_fold, expected.predict(margins), rtol=1e-12)
        np.testing.assert_allclose(held_scores, expected.predict(held_margins), rtol=1e-12)


def test_sigmoid_calibration_keeps_the_ranking_and_the_customers_flagged():
    """Sigmoid calibration is strictly increasing: the same ROC AUC on new customers, and
    the threshold the evaluate stage picks on the calibrated out-of-fold scores flags the
    same new customers as the one picked on the uncalibrated scores."""
    from sklearn.metrics import roc_auc_score

    from churnlab.evaluation import choose_threshold

    train, held = customers(400, seed=3), customers(600, seed=4)
    features = {"numeric": NUMERIC, "categorical": CATEGORICAL}
    labels = train[TARGET_COLUMN].to_numpy()
    scores, flagged = {}, {}
    for calibration in ("none", "sigmoid"):
        _, fitted, out_of_fold = trained(train, "gradient_boosting", calibration, max_iter=30)
        scores[calibration] = predict_scores(fitted, held, features)
        threshold = choose_threshold(labels, out_of_fold, "max_f1")
        flagged[calibration] = scores[calibration] >= threshold
    held_labels = held[TARGET_COLUMN].to_numpy()
    assert not np.allclose(scores["none"], scores["sigmoid"])
    assert roc_auc_score(held_labels, scores["sigmoid"]) == pytest.approx(
        roc_auc_score(held_labels, scores["none"]), abs=1e-12
    )
    assert 0 < flagged["none"].sum() < len(held)
    np.testing.assert_array_equal(flagged["sigmoid"], flagged["none"])


@pytest.mark.parametrize(
    ("family", "hyper", "message"),
    [
        ("random_forest", {}, r"train.family: 'random_forest' is not one of"),
        (
            "gradient_boosting",
            {"learnign_rate": 0.1},
            r"train.gradient_boosting: unknown hyper-parameter\(s\) \['learnign_rate'\]",
        ),
    ],
)
def test_bad_model_params_are_named(family, hyper, message):
    with pytest.raises(ChurnlabError, match=message):
        build_model(NUMERIC, CATEGORICAL, family, seed=1, **{family: hyper})


def test_an_unknown_calibration_is_named():
    with pytest.raises(
        ChurnlabError,
        match=r"params/train.yaml: train.calibration: expected one of 'none', 'isotonic', "
        r"'sigmoid', found 'platt'",
    ):
        trained(customers(), "logistic_regression", "platt")


def test_a_missing_model_file_says_which_stage_to_run(tmp_path):
    with pytest.raises(ChurnlabError, match="m.skops: file not found \\(run the train stage"):
        load_model(tmp_path / "m.skops", tmp_path / "f.json")


def test_more_folds_than_leavers_in_training_is_a_clear_error():
    table = customers(60).assign(**{TARGET_COLUMN: [1] * 4 + [0] * 56})
    model = build_model(NUMERIC, CATEGORICAL, "logistic_regression", seed=1)
    with pytest.raises(
        ChurnlabError,
        match=r"train.cv_folds: 5 folds need at least 5 leavers and 5 stayers in the training "
        r"split; it has 4 leavers and 56 stayers",
    ):
        cross_validate(model, table, NUMERIC, CATEGORICAL, TARGET_COLUMN, 5, 1)


@pytest.mark.parametrize("calibration", ["none", "sigmoid"])
def test_the_saved_model_does_not_depend_on_the_thread_count(tmp_path, calibration):
    """Same data, seed and params give the same bytes on a machine with other cores (a
    calibrated model holds its estimator one level down)."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
        "from test_model import NUMERIC, CATEGORICAL, customers;"
        "from churnlab.data import TARGET_COLUMN;"
        "from test_model import trained;"
        "from churnlab.model import save_model;"
        f"f = trained(customers(200), 'gradient_boosting', {calibration!r}, max_iter=20)[1];"
        "save_model(f, {}, Path(sys.argv[1]) / 'model.skops', Path(sys.argv[1]) / 'f.json')"
    )
    written = []
    for threads in ("1", "2"):
        out = tmp_path / threads
        out.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        subprocess.run(
            [sys.executable, "-c", script, str(out), str(Path(__file__).parent)],
            env=env,
            check=True,
        )
        written.append((out / "model.skops").read_bytes())
    assert written[0] == written[1]


@pytest.mark.parametrize(
    ("family", "calibration"),
    [("logistic_regression", "none"), ("gradient_boosting", "sigmoid")],
)
@pytest.mark.parametrize("batch_rows", [500_000, 700])
@pytest.mark.parametrize("missing", [False, True])
def test_permutation_importance_is_scikit_learns_bit_for_bit(
    family, calibration, batch_rows, missing
):
    """Scoring only the rows a shuffle changed, each (row, new value) once, in one call to
    the model (or a few, by batch_rows) gives the numbers of scikit-learn's own function,
    which scores every row of every copy; with missing values too (which equal nothing)."""
    from sklearn.inspection import permutation_importance as scikit_learns

    from churnlab.evaluation import permutation_importance
    from churnlab.model import model_input

    table = customers(300, seed=3)
    if missing:
        table.loc[::7, "months"] = np.nan
        table["plan"] = table["plan"].astype(object)
        table.loc[::11, "plan"] = None
        table.loc[5::13, "plan"] = np.nan
    _, model, _ = trained(table, family, calibration, max_iter=20)
    features = model_input(table, NUMERIC, CATEGORICAL)
    labels = table[TARGET_COLUMN].to_numpy()
    expected = scikit_learns(
        model, features, labels, scoring="roc_auc", n_repeats=4, random_state=11, n_jobs=1
    )
    mean, std = permutation_importance(model, features, labels, 4, 11, batch_rows=batch_rows)
    assert np.array_equal(mean, expected.importances_mean)
    assert np.array_equal(std, expected.importances_std)
    assert (mean != 0).any()  # the columns matter: a test that could fail


def test_the_projects_calibration_error_is_this_tests_own_computation():
    """churnlab.evaluation's ECE (used by bench/calibration.py) against the copy above."""
    from churnlab.evaluation import expected_calibration_error as projects

    rng = np.random.default_rng(4)
    scores = rng.random(2_000)
    labels = (rng.random(2_000) < scores**2).astype(int)  # over-confident scores
    assert projects(labels, scores) == pytest.approx(expected_calibration_error(labels, scores))
    assert projects(labels, scores) > 0.1  # far from calibrated: the test can fail
    assert projects(labels, labels * 0.9 + 0.05) == pytest.approx(0.05)
