"""Drift statistics of one column (a month against the reference) and their thresholds.

Numeric columns: the Wasserstein distance divided by the reference standard deviation, and
the population stability index (PSI) on the reference deciles. Categorical columns: the
Jensen-Shannon distance (base 2) and the chi-square statistic of the month-vs-reference
table. The distances come from scipy; PSI has no library function there and is the usual
sum of ``(m - r) * ln(m / r)``.

Thresholds are calibrated on the reference for the month's size (``calibrate``): the
statistic between ``n`` customers drawn from the reference and a redraw of the reference,
``chunks`` times; the threshold is a quantile of those values. Draws are multinomial counts
over the reference's distinct values (or bins, or categories), so the cost does not grow
with ``n``, and a month larger than the reference is judged as fairly as a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, wasserstein_distance

PSI_FLOOR = 1e-4  # a share of 0 would make PSI infinite
MISSING = "(blank)"  # the category of a blank value


def psi(reference_shares: np.ndarray, month_shares: np.ndarray) -> np.ndarray:
    """Population stability index over the last axis (shares floored at ``PSI_FLOOR``)."""
    r = np.maximum(np.asarray(reference_shares, dtype=float), PSI_FLOOR)
    m = np.maximum(np.asarray(month_shares, dtype=float), PSI_FLOOR)
    return np.sum((m - r) * np.log(m / r), axis=-1)


def decile_edges(values: np.ndarray) -> np.ndarray:
    """The inner edges of the reference deciles (repeated edges merged)."""
    values = values[~np.isnan(values)]
    return np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9))) if len(values) else np.array([])


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per decile bin (right-closed, as quantiles are), plus a last bin for blanks."""
    values = np.asarray(values, dtype=float)
    missing = np.isnan(values)
    bins = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return np.append(counts, missing.sum()).astype(float)


@dataclass(frozen=True)
class NumericReference:
    """A numeric reference column: its distinct values with counts, sd, decile bins."""

    support: np.ndarray  # distinct non-blank values, sorted
    counts: np.ndarray  # how many reference customers have each
    missing: int  # blank reference values
    sd: float
    edges: np.ndarray
    bins: np.ndarray  # reference counts per decile bin (last: blanks)

    @classmethod
    def of(cls, values: np.ndarray) -> NumericReference:
        values = np.asarray(values, dtype=float)
        present = values[~np.isnan(values)]
        support, counts = np.unique(present, return_counts=True)
        sd = float(np.std(present)) if len(present) else 0.0
        edges = decile_edges(values)
        return cls(
            support,
            counts.astype(float),
            int(np.isnan(values).sum()),
            sd,
            edges,
            bin_counts(values, edges),
        )


def _scale(sd: float) -> float:
    return sd if sd > 0 else 1.0  # a constant reference column: distances in its own units


def numeric_statistics(reference: NumericReference, month: np.ndarray) -> dict[str, float | None]:
    """``wasserstein`` (normalised by the reference sd) and ``psi`` of a month's column.

    ``wasserstein`` is None when the month has no value in the column (blank throughout).
    """
    month = np.asarray(month, dtype=float)
    present = month[~np.isnan(month)]
    distance = None
    if len(present) and len(reference.support):
        raw = wasserstein_distance(present, reference.support, None, reference.counts)
        distance = float(raw / _scale(reference.sd))
    shares = bin_counts(month, reference.edges)
    value = psi(reference.bins / reference.bins.sum(), shares / max(shares.sum(), 1))
    return {"wasserstein": distance, "psi": float(value)}


def categorical_shares(values: pd.Series) -> pd.Series:
    """Counts per category, blanks as ``MISSING``."""
    text = values.astype(object).where(values.notna(), MISSING).astype(str)
    return text.value_counts(sort=False).sort_index()


def categorical_statistics(
    reference_counts: pd.Series, month_counts: pd.Series
) -> dict[str, float | None]:
    """``jensen_shannon`` distance (base 2), ``chi2`` statistic and its ``p_value``."""
    categories = sorted(set(reference_counts.index) | set(month_counts.index))
    r = reference_counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    m = month_counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    js = float(jensenshannon(r / r.sum(), m / m.sum(), base=2))
    if len(categories) < 2:
        return {"jensen_shannon": js, "chi2": 0.0, "p_value": 1.0}
    result = chi2_contingency(np.vstack([m, r]), correction=False)
    return {"jensen_shannon": js, "chi2": float(result.statistic), "p_value": float(result.pvalue)}


def _draws(rng: np.random.Generator, n: int, m: int, probabilities: np.ndarray, chunks: int):
    """Counts of ``n`` customers drawn from the reference, and of a redraw of its ``m``."""
    return rng.multinomial(n, probabilities, size=chunks), rng.multinomial(
        m, probabilities, size=chunks
    )


def _quantile(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=float), q))


def wasserstein_on_support(support: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wasserstein distances between rows of counts ``a`` and ``b`` over one sorted support.

    The same value as ``scipy.stats.wasserstein_distance(support, support, a_i, b_i)`` (the
    area between the two distribution functions), for many draws at once: calibration
    needs hundreds of them per column.
    """
    cdf_a = np.cumsum(a, axis=-1) / np.sum(a, axis=-1, keepdims=True)
    cdf_b = np.cumsum(b, axis=-1) / np.sum(b, axis=-1, keepdims=True)
    return np.sum(np.abs(cdf_a - cdf_b)[..., :-1] * np.diff(support), axis=-1)


def chi2_statistics(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chi-square statistics of the 2 x k tables ``[a_i, b_i]`` (rows of counts).

    The statistic ``scipy.stats.chi2_contingency(..., correction=False)`` gives, for many
    tables at once; a category empty in both rows adds nothing.
    """
    table = np.stack([a, b], axis=-2).astype(float)
    total = table.sum(axis=(-2, -1), keepdims=True)
    expected = table.sum(axis=-1, keepdims=True) * table.sum(axis=-2, keepdims=True) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return cells.sum(axis=(-2, -1))


def calibrate_numeric(
    reference: NumericReference, n: int, chunks: int, q: float, rng: np.random.Generator
) -> dict[str, float]:
    """Thresholds of ``wasserstein`` and ``psi`` for a month of ``n`` customers."""
    m = int(reference.counts.sum() + reference.missing)
    thresholds = {}
    if len(reference.support):
        # a blank is not a value to move: the present values are drawn in their proportion
        p = reference.counts / reference.counts.sum()
        present = int(round(n * reference.counts.sum() / m))
        month, again = _draws(rng, max(present, 1), int(reference.counts.sum()), p, chunks)
        values = wasserstein_on_support(reference.support, month, again)
        thresholds["wasserstein"] = _quantile(values, q) / _scale(reference.sd)
    p_bins = reference.bins / reference.bins.sum()
    month, again = _draws(rng, n, m, p_bins, chunks)
    thresholds["psi"] = _quantile(psi(again / m, month / n), q)
    return thresholds


def calibrate_categorical(
    reference_counts: pd.Series, n: int, chunks: int, q: float, rng: np.random.Generator
) -> dict[str, float]:
    """Thresholds of ``jensen_shannon`` and ``chi2`` for a month of ``n`` customers."""
    r = reference_counts.to_numpy(dtype=float)
    m = int(r.sum())
    month, again = _draws(rng, n, m, r / m, chunks)
    js = jensenshannon(again / m, month / n, axis=1, base=2)
    return {"jensen_shannon": _quantile(js, q), "chi2": _quantile(chi2_statistics(month, again), q)}


def calibrate_share(share: float, m: int, n: int, chunks: int, q: float, rng) -> float:
    """Threshold of the absolute change of a share (flagged customers) for ``n`` customers."""
    month = rng.binomial(n, share, size=chunks) / n
    again = rng.binomial(m, share, size=chunks) / m
    return _quantile(np.abs(month - again), q)
