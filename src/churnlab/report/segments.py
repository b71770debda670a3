"""Performance by segment of customers, and what the model card says of sensitive columns.

A segment is one column of the test customers cut into groups (``report.segments``); the
tables here show how the model treats each group, so that a gap between groups is seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from churnlab.errors import ChurnlabError
from churnlab.report.bootstrap import REPORT_PARAMS, point_metrics


def segment_labels(values: pd.Series, spec: Mapping[str, Any], where: str) -> pd.Series:
    """The group of each customer for one segment of ``report.segments``.

    A segment is ``{column, label}`` plus either ``bins`` (upper edges of numeric bands:
    ``[12, 24]`` gives "up to 12", "12 to 24", "over 24") or ``names`` (display names of
    the column's values); without either, the values themselves are the groups.
    """
    if spec.get("bins") is not None:
        edges = spec["bins"]
        if (
            not isinstance(edges, list)
            or not edges
            or not all(isinstance(e, (int, float)) for e in edges)
            or list(edges) != sorted(set(edges))
        ):
            raise ChurnlabError(f"{where}.bins: expected increasing numbers, found {edges!r}")
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any() and values.notna().all():
            raise ChurnlabError(f"{where}.bins: column '{spec['column']}' is not numeric")
        names = _band_names(edges)[:-1]
        codes = np.searchsorted(np.asarray(edges, dtype=float), numbers.to_numpy(float), "left")
        groups = pd.Series(np.asarray(names, dtype=object)[codes], index=values.index)
        return groups.where(numbers.notna(), "missing").astype(str)
    names = {str(k): str(v) for k, v in (spec.get("names") or {}).items()}
    text = values.astype(str).where(values.notna(), "missing")
    return text.map(lambda v: names.get(v, v))


def segment_performance(
    table: pd.DataFrame,
    labels,
    scores,
    threshold: float,
    segments: Sequence[Mapping[str, Any]],
    min_size: int,
) -> pd.DataFrame:
    """Customers, churn, flags, precision, recall and ROC AUC for each group of each segment.

    Args:
        table: the test customers with the segment columns, in the order of ``labels``.
        segments: ``report.segments`` from params.
        min_size: groups smaller than this are marked ``small`` (too few to judge).

    Raises:
        ChurnlabError: a segment naming a column the table does not have.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    rows = []
    for index, spec in enumerate(segments):
        where = f"{REPORT_PARAMS} report.segments[{index}]"
        if not isinstance(spec, Mapping) or "column" not in spec:
            raise ChurnlabError(f"{where}: expected a mapping with 'column' and 'label'")
        if spec["column"] not in table.columns:
            raise ChurnlabError(
                f"{where}.column: '{spec['column']}' is not a column of the test data; "
                f"columns: {sorted(table.columns)}"
            )
        groups = segment_labels(table[spec["column"]], spec, where).to_numpy()
        order = sorted(set(groups))
        if spec.get("bins") is not None:  # bands low to high, not alphabetically
            order = [g for g in _band_names(spec["bins"]) if g in order]
        for group in order:
            member = groups == group
            metrics = point_metrics(labels[member], scores[member], threshold)
            rows.append(
                {
                    "segment": str(spec.get("label", spec["column"])),
                    "group": str(group),
                    "customers": int(member.sum()),
                    "churn_rate": float(labels[member].mean()),
                    "mean_score": float(scores[member].mean()),
                    "flagged_share": float((scores[member] >= threshold).mean()),
                    "precision": metrics["precision"],
                    "recall": metrics["recall"],  # NaN for a group without leavers
                    "roc_auc": metrics["roc_auc"],  # NaN for a group of one class
                    "small": bool(member.sum() < min_size),
                }
            )
    return pd.DataFrame(rows)


def _band_names(edges: list) -> list[str]:
    """Names of the numeric bands cut at ``edges`` (upper edges, inclusive), low to high."""
    names = [f"up to {edges[0]:g}"]
    names += [f"{low:g} to {high:g}" for low, high in zip(edges, edges[1:], strict=False)]
    return [*names, f"over {edges[-1]:g}", "missing"]


def segment_gaps(performance: pd.DataFrame, metric: str = "recall") -> list[dict[str, Any]]:
    """For each segment, the groups (of judgeable size) with the highest and lowest metric."""
    gaps = []
    for segment, part in performance[~performance["small"]].groupby("segment", sort=False):
        part = part.dropna(subset=[metric])
        if len(part) < 2:
            continue
        best = part.loc[part[metric].idxmax()]
        worst = part.loc[part[metric].idxmin()]
        gaps.append(
            {
                "segment": segment,
                "metric": metric,
                "best_group": best["group"],
                "best": float(best[metric]),
                "worst_group": worst["group"],
                "worst": float(worst[metric]),
                "gap": float(best[metric] - worst[metric]),
            }
        )
    return sorted(gaps, key=lambda g: -g["gap"])


def sensitive_columns(report: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    """``report.sensitive_columns``, checked against the columns of the data.

    Raises:
        ChurnlabError: not a list of names, or a name that is not a column (a typo would
            otherwise read as "not an input of the model").
    """
    names = report.get("sensitive_columns")
    where = f"{REPORT_PARAMS} report.sensitive_columns"
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise ChurnlabError(f"{where}: expected a list of column names (or []), found {names!r}")
    unknown = [name for name in names if name not in set(columns)]
    if unknown:
        raise ChurnlabError(
            f"{where}: {unknown} are not columns of the data; columns: {sorted(columns)}"
        )
    return names


def _listed(names: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def sensitive_inputs(
    sensitive: Sequence[str], inputs: Sequence[str], segments: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The model card's sentences on sensitive attributes, from what the model really uses.

    Args:
        sensitive: ``report.sensitive_columns``: the columns whose effect on a customer's
            treatment must be watched (in law or by the company's rules).
        inputs: the model's input columns (``models/features.json``).
        segments: ``report.segments``; a sensitive column there is shown group by group, and
            is named by its segment label.
    """
    if not sensitive:
        return [
            "No column is marked as sensitive (report.sensitive_columns in "
            f"{REPORT_PARAMS}), so this card cannot say whether the model uses attributes "
            "such as age or sex; list them there."
        ]
    labels = {str(s["column"]): str(s.get("label", s["column"])) for s in segments}
    used = [column for column in sensitive if column in set(inputs)]
    unused = [column for column in sensitive if column not in set(inputs)]
    sentences = []
    for columns, is_input in ((used, True), (unused, False)):
        if not columns:
            continue
        one = len(columns) == 1
        they, them, their = ("it", "it", "its") if one else ("they", "them", "their")
        names = _listed([labels.get(c, c) for c in columns])
        names = names[:1].upper() + names[1:]
        shown = [c for c in columns if c in labels]
        groups = (
            "each group"
            if len(shown) == len(columns)
            else f"the groups of {_listed([labels[c] for c in shown])}"
        )
        if is_input:
            sentence = f"{names} {'is an input' if one else 'are inputs'} of the model"
            if shown:
                sentence += (
                    f"; {they} {'is' if one else 'are'} kept so that {their} effect can be "
                    f"measured here, and the segment table shows how the model treats {groups}"
                )
            sentence += (
                f". Dropping {them} does not by itself remove {their} effect, since other "
                f"attributes correlate with {them}."
            )
        else:
            sentence = (
                f"{names} {'is not an input' if one else 'are not inputs'} of the model, but "
                f"other attributes may correlate with {them}"
            )
            shows = f"; the segment table shows how the model treats {groups}"
            sentence += f"{shows}." if shown else "."
        sentences.append(sentence)
    return sentences
