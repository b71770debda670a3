"""Scoring a few customers fast: the fitted preprocessing of a churnlab model done in numpy.

scikit-learn's ColumnTransformer checks and converts its pandas input on every call: about
ten times the cost of the estimator itself for one customer. For the Pipeline that
``churnlab.model.build_model`` makes (median imputer and standard scaler on the numeric
columns, one-hot encoder on the categorical ones), the same arithmetic on numpy arrays gives
the same matrix, and the estimator the same probabilities. The service uses this only after
checking, on customers drawn from the schema, that its probabilities equal the Pipeline's
bit for bit; any other model is scored by its Pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        return self.estimator.predict_proba(self.matrix(columns))[:, 1]


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
