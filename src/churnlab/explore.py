"""Summaries for the exploratory notebook: churn rates by segment and associations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, mannwhitneyu

from churnlab.data import TARGET_COLUMN


def churn_by(table: pd.DataFrame, column: str, bands: int | None = None) -> pd.DataFrame:
    """Customers and churn rate per value of ``column`` (numeric columns in quantile bands)."""
    key = table[column]
    if bands:
        key = pd.qcut(key, q=bands, duplicates="drop").astype(str)
    grouped = table.groupby(key, observed=True, sort=True)[TARGET_COLUMN]
    result = pd.DataFrame({"customers": grouped.size(), "churn_rate": grouped.mean().round(4)})
    result.index.name = column
    return result


def missing_values(table: pd.DataFrame) -> pd.DataFrame:
    """Count and share of missing values per column, only columns that have any."""
    counts = table.isna().sum()
    counts = counts[counts > 0]
    return pd.DataFrame({"missing": counts, "share": (counts / len(table)).round(4)})


def associations(table: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Strength of each feature's association with churn, strongest first.

    Categorical: Cramér's V with a chi-squared test. Numeric: rank-biserial correlation
    (from the Mann-Whitney U test) between churners and stayers.
    """
    rows = []
    labels = table[TARGET_COLUMN]
    for name in categorical:
        crosstab = pd.crosstab(table[name], labels)
        chi2, p_value, _, _ = chi2_contingency(crosstab)
        strength = np.sqrt(chi2 / (crosstab.to_numpy().sum() * (min(crosstab.shape) - 1)))
        rows.append(
            {
                "feature": name,
                "kind": "categorical",
                "measure": "Cramér's V",
                "strength": strength,
                "p_value": p_value,
            }
        )
    for name in numeric:
        values = table[name]
        churned, stayed = values[labels == 1].dropna(), values[labels == 0].dropna()
        u_stat, p_value = mannwhitneyu(churned, stayed)
        rows.append(
            {
                "feature": name,
                "kind": "numeric",
                "measure": "rank-biserial",
                "strength": 2 * u_stat / (len(churned) * len(stayed)) - 1,
                "p_value": p_value,
            }
        )
    result = pd.DataFrame(rows)
    result["strength"] = result["strength"].round(4)
    result["p_value"] = result["p_value"].map(lambda p: float(f"{p:.3g}"))
    order = result["strength"].abs().sort_values(ascending=False, kind="stable").index
    return result.loc[order].reset_index(drop=True)
