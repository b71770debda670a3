"""The model: a scikit-learn Pipeline built from params, cross-validated, saved with skops."""

from __future__ import annotations

import importlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic, write_json

if TYPE_CHECKING:  # scikit-learn is imported where a model is built, fitted or scored:
    # every stage checks its params against FAMILIES, and most never touch a model
    from sklearn.pipeline import Pipeline

# What a notebook that imports this module will need once it calls it (skops to save or load
# a model; scikit-learn comes with it): a stage's kernel imports these while the runner
# prepares (churnlab.pipeline.kernel), not in the first cell that loads a model
WARM_UP = ("skops.io", "sklearn.pipeline", "sklearn.compose", "sklearn.preprocessing")

# each family's estimator, as module and class, imported when a model is built
FAMILIES = {
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
    "gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
}

# How the estimator's probabilities are calibrated (train.calibration): not at all, or by a
# calibrator of that method fitted on the cross-validation's out-of-fold scores
CALIBRATIONS = ("none", "isotonic", "sigmoid")

# The only types a saved model may contain; skops refuses anything else when loading.
TRUSTED_TYPES = [
    "numpy.dtype",
    "numpy.ndarray",
    "builtins.str",
    "builtins.object",
    "builtins.slice",
    "sklearn.pipeline.Pipeline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "collections.OrderedDict",
    # a calibrated model (train.calibration): the wrapper, the folds of its out-of-fold
    # scores and its calibrator
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.model_selection._split.StratifiedKFold",
]

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def build_model(
    numeric: list[str],
    categorical: list[str],
    family: str,
    seed: int,
    **hyperparams_by_family: dict,
) -> Pipeline:
    """Preprocessing and estimator in one Pipeline (calibrated later: ``calibrate_model``).

    Args:
        numeric, categorical: the feature columns.
        family: ``logistic_regression`` or ``gradient_boosting`` (``train.family``).
        seed: the estimator's seed.
        hyperparams_by_family: each family's hyper-parameters as ``params/train.yaml`` holds
            them (``gradient_boosting={"max_iter": 200, ...}``); those of ``family`` are used.

    Raises:
        ChurnlabError: an unknown family, or a hyper-parameter the estimator does not take.
    """
    if family not in FAMILIES:
        raise ChurnlabError(
            f"params/train.yaml train.family: '{family}' is not one of {sorted(FAMILIES)}"
        )
    hyperparams = hyperparams_by_family.get(family) or {}
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    module, name = FAMILIES[family].rsplit(".", 1)
    estimator_class = getattr(importlib.import_module(module), name)
    known = estimator_class().get_params()
    unknown = sorted(set(hyperparams) - set(known))
    if unknown:
        raise ChurnlabError(
            f"params/train.yaml train.{family}: unknown hyper-parameter(s) {unknown} for "
            f"{estimator_class.__name__}"
        )
    options = dict(hyperparams)
    if "random_state" in known:
        options["random_state"] = seed
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            ),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
        ],
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", preprocess), ("estimator", estimator_class(**options))])


def model_input(frame: pd.DataFrame, numeric: list[str], categorical: list[str]):
    """Features in a form every estimator takes: floats, and text as plain objects."""
    features = frame[[*numeric, *categorical]].copy()
    for name in categorical:
        features[name] = features[name].astype(object)
    return features


class CrossValidation(NamedTuple):
    """What ``cross_validate`` finds on the training split.

    Attributes:
        folds: one row per fold: ``fold``, ``roc_auc``, ``pr_auc`` of its held-out customers.
        scores: each training customer's churn probability from the fold model that did not
            see them (the out-of-fold scores).
        margins: the same customers' out-of-fold input to a calibrator: the estimator's
            ``decision_function`` (``predict_proba`` for one without), the response that
            scikit-learn's calibrated classifier maps.
        splitter: the seeded folds.
    """

    folds: pd.DataFrame
    scores: np.ndarray
    margins: np.ndarray
    splitter: object


def _margins(fitted: Pipeline, features: pd.DataFrame) -> np.ndarray:
    """What a calibrator maps, as ``sklearn.calibration._CalibratedClassifier`` picks it."""
    if hasattr(fitted, "decision_function"):
        return fitted.decision_function(features)
    return fitted.predict_proba(features)[:, 1]


def cross_validate(
    model: Pipeline,
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    target: str,
    folds: int,
    seed: int,
    weights: np.ndarray | None = None,
) -> CrossValidation:
    """Seeded stratified K-fold: per-fold scores and the out-of-fold probabilities and margins
    (one fit per fold, fitted with its rows' ``weights`` when given; the scores count every
    row once)."""
    from sklearn.base import clone
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ChurnlabError(f"params/train.yaml train.cv_folds: expected 2 or more, found {folds}")
    features = model_input(train, numeric, categorical)
    labels = train[target].to_numpy()
    fewest = int(min(np.sum(labels == 1), np.sum(labels == 0)))
    if fewest < folds:  # a fold without leavers has no ROC AUC
        raise ChurnlabError(
            f"params/train.yaml train.cv_folds: {folds} folds need at least {folds} leavers and "
            f"{folds} stayers in the training split; it has {int(np.sum(labels == 1))} leavers "
            f"and {int(np.sum(labels == 0))} stayers: lower train.cv_folds or add customers"
        )
    out_of_fold, margins = np.zeros(len(train)), np.zeros(len(train))
    rows = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_rows) in enumerate(splitter.split(features, labels), start=1):
        fitted = clone(model).fit(
            features.iloc[fit_rows], labels[fit_rows], **_weighted(weights, fit_rows)
        )
        scores = fitted.predict_proba(features.iloc[held_rows])[:, 1]
        out_of_fold[held_rows] = scores
        margins[held_rows] = _margins(fitted, features.iloc[held_rows])
        rows.append(
            {
                "fold": fold,
                "roc_auc": roc_auc_score(labels[held_rows], scores),
                "pr_auc": average_precision_score(labels[held_rows], scores),
            }
        )
    return CrossValidation(pd.DataFrame(rows), out_of_fold, margins, splitter)


def row_weights(train: pd.DataFrame) -> np.ndarray | None:
    """The training rows' weights (``WEIGHT_COLUMN``, written by the cycle when recent months
    weigh more); None when the table has none: every row counts once."""
    from churnlab.data import WEIGHT_COLUMN

    if WEIGHT_COLUMN not in train.columns:
        return None
    return train[WEIGHT_COLUMN].fillna(1.0).to_numpy(float)


def _weighted(weights: np.ndarray | None, rows=slice(None)) -> dict:
    """The fit argument that hands the rows' weights to the pipeline's estimator (scikit-learn
    routes ``estimator__sample_weight``; calibration comes after the fits, unweighted)."""
    return {} if weights is None else {"estimator__sample_weight": weights[rows]}


def fit_model(
    model: Pipeline,
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    target: str,
    weights: np.ndarray | None = None,
) -> Pipeline:
    """Fit a fresh copy of ``model`` on the whole training table (rows weighted by
    ``weights`` when given, :func:`row_weights`)."""
    from sklearn.base import clone

    features = model_input(train, numeric, categorical)
    return clone(model).fit(features, train[target].to_numpy(), **_weighted(weights))


def calibrate_model(
    fitted: Pipeline, cv: CrossValidation, labels: np.ndarray, calibration: str
) -> tuple[Pipeline, np.ndarray]:
    """The fitted model with its scores calibrated on the cross-validation's out-of-fold
    scores, and those out-of-fold scores calibrated the same way. No estimator is fitted.

    The estimator becomes the model scikit-learn's ``CalibratedClassifierCV(ensemble=False)``
    makes: the one estimator fitted on all training rows, whose margins are mapped by a
    calibrator fitted on out-of-fold margins. ``CalibratedClassifierCV`` would fit one
    estimator per fold again to get them; ``cross_validate`` has them already, from the same
    folds. The monitor's estimated recall and precision (CBPE) take the scores for
    probabilities; uncalibrated, gradient-boosted trees are over-confident at the top.

    Args:
        fitted: the model ``fit_model`` fitted on the whole training split.
        cv: ``cross_validate`` of the same model on the same training split.
        labels: the training split's 0/1 labels, in the order of ``cv``.
        calibration: ``none`` (the model and the scores come back as they are), ``sigmoid``
            (Platt scaling of the margin: strictly increasing, so customers keep their order)
            or ``isotonic`` (a non-decreasing step function: customers in one step tie).

    Returns:
        The calibrated model, and the out-of-fold scores it would give each training
        customer (what the evaluate stage picks its threshold on).

    Raises:
        ChurnlabError: an unknown calibration.
    """
    if calibration not in CALIBRATIONS:
        raise ChurnlabError(
            "params/train.yaml: train.calibration: expected one of "
            f"{', '.join(map(repr, CALIBRATIONS))}, found {calibration!r}: "
            "pick one of them"
        )
    if calibration == "none":
        return fitted, cv.scores
    from sklearn.base import clone
    from sklearn.calibration import (
        CalibratedClassifierCV,
        _CalibratedClassifier,
        _SigmoidCalibration,
    )
    from sklearn.isotonic import IsotonicRegression
    from sklearn.pipeline import Pipeline

    estimator = fitted.named_steps["estimator"]
    calibrator = (
        _SigmoidCalibration()
        if calibration == "sigmoid"
        else IsotonicRegression(out_of_bounds="clip")
    ).fit(cv.margins, (np.asarray(labels) == estimator.classes_[1]).astype(int))
    # the fitted state CalibratedClassifierCV.fit leaves for ensemble=False
    wrapper = CalibratedClassifierCV(
        clone(estimator), method=calibration, cv=cv.splitter, ensemble=False
    )
    wrapper.classes_ = estimator.classes_
    wrapper.n_features_in_ = estimator.n_features_in_
    wrapper.calibrated_classifiers_ = [
        _CalibratedClassifier(
            estimator, [calibrator], classes=estimator.classes_, method=calibration
        )
    ]
    model = Pipeline([*fitted.steps[:-1], ("estimator", wrapper)])
    return model, calibrator.predict(cv.margins)


def predict_scores(model: Pipeline, frame: pd.DataFrame, features: dict) -> np.ndarray:
    """The churn probabilities for ``frame`` with the feature lists saved beside the model."""
    return model.predict_proba(model_input(frame, features["numeric"], features["categorical"]))[
        :, 1
    ]


def canonical_skops(data: bytes) -> bytes:
    """Rewrite a skops archive so that the same model always gives the same bytes.

    skops names array files and ``__id__`` fields after Python object ids and stamps the
    current time. Here ids and files are renumbered in order of first appearance in
    ``schema.json`` (the same object keeps one number) and every entry gets a fixed time.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    schema = members.pop("schema.json").decode()
    ids: dict[str, str] = {}
    schema = re.sub(
        r'"__id__": (\d+)',
        lambda m: f'"__id__": {ids.setdefault(m.group(1), str(len(ids)))}',
        schema,
    )
    files: dict[str, str] = {}

    def rename(match: re.Match) -> str:
        old = match.group(1)
        if old not in files:
            files[old] = f"{len(files):06d}{Path(old).suffix}"
        return f'"file": "{files[old]}"'

    schema = re.sub(r'"file": "([^"]+)"', rename, schema)
    leftover = sorted(set(members) - set(files))
    if leftover:
        raise ChurnlabError(f"skops archive holds files its schema does not name: {leftover}")
    out = io.BytesIO()
    entries = [
        ("schema.json", schema.encode()),
        *((new, members[old]) for old, new in files.items()),
    ]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    return out.getvalue()


def _without_thread_count(model: Pipeline) -> Pipeline:
    """A copy whose fitted bin mappers hold no thread count.

    HistGradientBoosting's bin mapper keeps the OpenMP thread count of the machine that
    trained it (2 here, 1 under ``OMP_NUM_THREADS=1``), so the same model would be saved as
    other bytes elsewhere. ``None`` means "the machine's own" when the mapper runs again; the
    count never changes a prediction.
    """
    import copy

    model = copy.deepcopy(model)
    estimators = [step for _, step in model.steps]
    for step in list(estimators):  # a calibrated model holds its estimator one level down
        estimators += [c.estimator for c in getattr(step, "calibrated_classifiers_", [])]
    for estimator in estimators:
        mapper = getattr(estimator, "_bin_mapper", None)
        if mapper is not None:
            mapper.n_threads = None
    return model


def save_model(model: Pipeline, features: dict, model_path: Path, features_path: Path) -> None:
    """Save the model (canonical skops) and its feature list (JSON), checking it loads."""
    import skops.io

    data = canonical_skops(skops.io.dumps(_without_thread_count(model)))
    untrusted = [t for t in skops.io.get_untrusted_types(data=data) if t not in TRUSTED_TYPES]
    if untrusted:
        raise ChurnlabError(
            f"{model_path}: the model holds types not in TRUSTED_TYPES: {untrusted}"
        )
    skops.io.loads(data, trusted=TRUSTED_TYPES)
    write_atomic(Path(model_path), data)
    write_json(Path(features_path), features)


def load_model(model_path: Path, features_path: Path) -> tuple[Pipeline, dict]:
    """Load a saved model without running code from the file: only trusted types load."""
    import skops.io

    model_path, features_path = Path(model_path), Path(features_path)
    for path in (model_path, features_path):
        if not path.is_file():
            raise ChurnlabError(f"{path}: file not found (run the train stage first)")
    try:
        model = skops.io.load(model_path, trusted=TRUSTED_TYPES)
    except Exception as exc:
        raise ChurnlabError(f"{model_path}: cannot load the model: {exc}") from None
    return model, json.loads(features_path.read_text())
