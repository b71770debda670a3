"""Months of new customers and their labels: names, where their files are, reading them.

A month is named ``YYYY-MM``; its batch is ``<monitor.batches>/YYYY-MM.csv`` or ``.parquet``
and its labels ``<monitor.labels>/YYYY-MM.csv`` or ``.parquet`` (params/monitor.yaml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab.data import TableSpec, read_table
from churnlab.errors import ChurnlabError

MONITOR_FILE = "params/monitor.yaml"
SUFFIXES = (".csv", ".parquet")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def check_month(month: str, where: str = "MONTH") -> str:
    """``month`` if it is ``YYYY-MM``.

    Raises:
        ChurnlabError: naming ``where``.
    """
    if not isinstance(month, str) or not _MONTH.match(month):
        raise ChurnlabError(f"{where}: expected a month as YYYY-MM (2026-03), found {month!r}")
    return month


def add_months(month: str, count: int) -> str:
    year, number = int(month[:4]), int(month[5:])
    index = year * 12 + number - 1 + count
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def month_file(folder: Path, month: str, what: str) -> Path | None:
    """The one ``folder/month.csv`` or ``.parquet``; None when there is none.

    Raises:
        ChurnlabError: when both exist (which one is meant cannot be told).
    """
    found = [folder / f"{month}{s}" for s in SUFFIXES if (folder / f"{month}{s}").exists()]
    found += [
        folder / f"{month}{s}"
        for s in SUFFIXES
        if (folder / f"{month}{s}").is_symlink() and not (folder / f"{month}{s}").exists()
    ]
    if len(found) > 1:
        raise ChurnlabError(
            f"{found[0]}: {what} of {month} is there twice ({found[0].name}, {found[1].name}): "
            "keep one"
        )
    return found[0] if found else None


def batch_months(folder: Path) -> list[str]:
    """The months with a batch file in ``folder``, in order."""
    if not folder.is_dir():
        return []
    return sorted(
        {p.stem for p in folder.iterdir() if p.suffix in SUFFIXES and _MONTH.match(p.stem)}
    )


@dataclass(frozen=True)
class Labels:
    """Who left: the ids and 0/1 labels of (part of) a month's customers."""

    path: Path
    ids: np.ndarray
    churned: np.ndarray


def read_labels(path: Path, spec: TableSpec, month_ids: pd.Series) -> Labels:
    """Read and check a month's labels against the month's ids.

    Raises:
        ChurnlabError: naming the file and the column: a missing column, a value other than
            the two labels, a repeated id, or ids that are not in the month.
    """
    table = read_table(path)
    for column in (spec.id_column, spec.target):
        if column not in table.columns:
            raise ChurnlabError(
                f"{path}: column '{column}': missing; labels need the id column "
                f"'{spec.id_column}' and the target '{spec.target}' (params/data.yaml schema); "
                f"the file has {list(table.columns)}"
            )
    ids = table[spec.id_column].astype(str).str.strip()
    values = table[spec.target].astype(str).str.strip()
    allowed = {spec.positive_label, spec.negative_label}
    wrong = sorted(set(values) - allowed)
    if wrong:
        raise ChurnlabError(
            f"{path}: column '{spec.target}': expected only {spec.positive_label!r} or "
            f"{spec.negative_label!r} (params/data.yaml schema), found {wrong[:5]} in "
            f"{int((~values.isin(allowed)).sum())} rows: fix the labels file"
        )
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        raise ChurnlabError(
            f"{path}: column '{spec.id_column}': each customer once, found {len(repeated)} ids "
            f"more than once (e.g. {repeated[:3]})"
        )
    unknown = sorted(set(ids) - set(month_ids.astype(str)))
    if unknown:
        raise ChurnlabError(
            f"{path}: column '{spec.id_column}': {len(unknown)} ids are not customers of the "
            f"month's batch (e.g. {unknown[:3]}): labels belong to the month of the same name"
        )
    return Labels(path, ids.to_numpy(), (values == spec.positive_label).to_numpy(dtype=int))
