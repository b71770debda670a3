"""Scoring a few customers fast: the fitted preprocessing of a churnlab model done in numpy.

scikit-learn's ColumnTransformer checks and converts its pandas input on every call: about
ten times the cost of the estimator itself for one customer. For the Pipeline that
``churnlab.model.build_model`` makes (median imputer and standard scaler on the numeric
columns, one-hot encoder on the categorical ones), the same arithmetic on numpy arrays gives
the same matrix, and the estimator the same probabilities. The service uses this only after
checking, on customers drawn from the schema, that its probabilities equal the Pipeline's
bit for bit; any other model is scored by its Pipeline.

For a few customers, HistGradientBoosting's own ``predict_proba`` costs about 10 us per tree
(a Python call and an output array for each of its 200 trees: 1.5 ms for one customer, most
of a request's time). :class:`FlatTrees` walks all the trees at once, one numpy step per tree
level, and adds the leaves' values in the estimator's order, so the sums have the same bits;
it too is used only once checked against the estimator (``with_fast_scorer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# up to this many customers the flat trees are faster than the estimator's own loop over its
# trees; beyond it every level's arrays grow with rows x trees and the estimator's Cython wins
FLAT_TREES_MAX_ROWS = 32


@dataclass(frozen=True)
class FlatTrees:
    """A fitted binary HistGradientBoostingClassifier's trees as one table of nodes.

    A leaf is its own child on both sides, so every tree can be walked ``depth`` levels.
    """

    feature: np.ndarray  # the column a node splits on (0 for a leaf)
    threshold: np.ndarray  # go left when the value is <= this
    missing_left: np.ndarray  # where a missing value goes
    children: np.ndarray  # node n's right child at 2n, its left child at 2n + 1
    value: np.ndarray  # a leaf's value
    roots: np.ndarray  # each tree's first node, in the estimator's order
    depth: int
    baseline: np.ndarray  # the estimator's starting raw prediction, shape (1, 1)
    loss: object  # the estimator's loss: raw predictions to probabilities
    # a calibrated model's calibrator (train.calibration): raw predictions to probabilities
    # instead of the loss, as scikit-learn's calibrated classifier maps them
    calibrator: object | None = None

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """The probability of the positive class for each row of the estimator's input."""
        rows, width = matrix.shape
        cells = np.ascontiguousarray(matrix, dtype=np.float64).ravel()
        row_start = (np.arange(rows) * width)[:, None]
        missing = bool(np.isnan(cells).any())  # never, after the imputer: skip that test
        node = np.broadcast_to(self.roots, (rows, len(self.roots)))
        for _ in range(self.depth):
            values = cells[row_start + self.feature[node]]
            left = values <= self.threshold[node]
            if missing:
                left = np.where(np.isnan(values), self.missing_left[node], left)
            node = self.children[2 * node + left]
        # as the estimator adds: zeros plus the baseline, then each tree in turn (a cumulative
        # sum runs left to right; np.sum would pair the terms and round otherwise)
        start = np.zeros((rows, 1)) + self.baseline
        raw = np.cumsum(np.concatenate([start, self.value[node]], axis=1), axis=1)[:, -1:]
        if self.calibrator is None:
            return self.loss.predict_proba(raw)[:, 1]
        # scikit-learn's _CalibratedClassifier: the calibrator on the decision function (the
        # raw prediction), then a probability a hair over 1 is made 1
        scores = np.asarray(self.calibrator.predict(raw[:, 0]), dtype=np.float64)
        scores[(scores > 1.0) & (scores <= 1.0 + 1e-5)] = 1.0
        return scores


def flat_trees(estimator) -> FlatTrees | None:
    """FlatTrees for a fitted binary HistGradientBoostingClassifier on numeric columns, bare or
    calibrated as ``churnlab.model.calibrate_model`` makes it (one estimator, one calibrator);
    None for any other estimator (it then predicts by itself)."""
    if type(estimator).__name__ == "CalibratedClassifierCV":
        return _calibrated_flat_trees(estimator)
    if type(estimator).__name__ != "HistGradientBoostingClassifier":
        return None
    try:
        predictors = list(estimator._predictors)
        baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64)
        loss = estimator._loss
        categorical = estimator.is_categorical_
    except AttributeError:  # another scikit-learn's internals: let it predict
        return None
    if categorical is not None or baseline.shape != (1, 1) or any(len(t) != 1 for t in predictors):
        return None
    tables, roots, offset = [], [], 0
    for (predictor,) in predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            return None
        tables.append((nodes, offset))
        roots.append(offset)
        offset += len(nodes)
    feature = np.concatenate([n["feature_idx"] for n, _ in tables]).astype(np.intp)
    leaf = np.concatenate([n["is_leaf"] for n, _ in tables]).astype(bool)
    own = np.arange(offset)
    left = np.concatenate([n["left"].astype(np.intp) + at for n, at in tables])
    right = np.concatenate([n["right"].astype(np.intp) + at for n, at in tables])
    left, right = np.where(leaf, own, left), np.where(leaf, own, right)
    return FlatTrees(
        feature=np.where(leaf, 0, feature),
        threshold=np.concatenate([n["num_threshold"] for n, _ in tables]).astype(np.float64),
        missing_left=np.concatenate([n["missing_go_to_left"] for n, _ in tables]).astype(bool),
        children=np.column_stack([right, left]).ravel(),
        value=np.concatenate([n["value"] for n, _ in tables]).astype(np.float64),
        roots=np.asarray(roots, dtype=np.intp),
        depth=max(int(n["depth"].max()) for n, _ in tables),
        baseline=baseline,
        loss=loss,
    )


def _calibrated_flat_trees(model) -> FlatTrees | None:
    """FlatTrees for a calibrated model of one binary estimator and one calibrator."""
    from dataclasses import replace

    try:
        (calibrated,) = model.calibrated_classifiers_
        (calibrator,) = calibrated.calibrators
        classes = list(model.classes_)
        inner = calibrated.estimator
    except (AttributeError, ValueError):  # several folds' models, or another shape
        return None
    if len(classes) != 2 or list(getattr(inner, "classes_", [])) != classes:
        return None
    trees = flat_trees(inner) if type(inner).__name__ != "CalibratedClassifierCV" else None
    return None if trees is None else replace(trees, calibrator=calibrator)


@dataclass(frozen=True)
class FastScorer:
    """The fitted preprocessing as arrays, and the fitted estimator."""

    numeric: list[str]
    categorical: list[str]
    fill: np.ndarray  # the imputer's value per numeric column
    mean: np.ndarray | None
    scale: np.ndarray | None
    categories: list[np.ndarray]
    estimator: object
    trees: FlatTrees | None = None  # set by with_fast_scorer once checked

    def matrix(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The estimator's input: scaled numbers, then one 0/1 column per category."""
        rows = len(columns[self.numeric[0]] if self.numeric else columns[self.categorical[0]])
        width = len(self.numeric) + sum(len(c) for c in self.categories)
        out = np.zeros((rows, width), dtype=np.float64)
        if self.numeric:
            numbers = np.column_stack([columns[name] for name in self.numeric]).astype(np.float64)
            numbers = np.where(np.isnan(numbers), self.fill, numbers)
            if self.mean is not None:
                numbers -= self.mean
            if self.scale is not None:
                numbers /= self.scale
            out[:, : len(self.numeric)] = numbers
        offset = len(self.numeric)
        for name, categories in zip(self.categorical, self.categories, strict=True):
            values = columns[name]
            # an unknown category gets no 1 (handle_unknown="ignore"), as in the encoder
            out[:, offset : offset + len(categories)] = values[:, None] == categories[None, :]
            offset += len(categories)
        return out

    def scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        matrix = self.matrix(columns)
        if self.trees is not None and len(matrix) <= FLAT_TREES_MAX_ROWS:
            return self.trees.probabilities(matrix)
        return self.estimator.predict_proba(matrix)[:, 1]


def fast_scorer(model) -> FastScorer | None:
    """A FastScorer for a Pipeline built by ``churnlab.model.build_model``; None for any
    other shape (the caller then scores with the Pipeline)."""
    try:
        preprocess = model.named_steps["preprocess"]
        estimator = model.named_steps["estimator"]
        steps = dict(preprocess.named_transformers_)
        names = [name for name, _, _ in preprocess.transformers_ if name != "remainder"]
        columns = {name: list(cols) for name, _, cols in preprocess.transformers_}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if names != ["numeric", "categorical"] or preprocess.sparse_output_:
        return None
    if getattr(estimator, "feature_names_in_", None) is not None:
        return None  # fitted on a DataFrame: it checks column names an array lacks
    numeric_steps = getattr(steps["numeric"], "named_steps", {})
    imputer, scaler = numeric_steps.get("impute"), numeric_steps.get("scale")
    encoder = steps["categorical"]
    if (
        type(imputer).__name__ != "SimpleImputer"
        or type(scaler).__name__ != "StandardScaler"
        or list(numeric_steps) != ["impute", "scale"]
        or type(encoder).__name__ != "OneHotEncoder"
        or encoder.drop is not None
        or encoder.handle_unknown != "ignore"
        or getattr(encoder, "_infrequent_enabled", False)
        or imputer.add_indicator
    ):
        return None
    return FastScorer(
        numeric=columns["numeric"],
        categorical=columns["categorical"],
        fill=np.asarray(imputer.statistics_, dtype=np.float64),
        mean=np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None,
        scale=np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None,
        categories=[np.asarray(c, dtype=object) for c in encoder.categories_],
        estimator=estimator,
    )
