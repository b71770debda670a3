"""Months of new customers and their labels: names, where their files are, reading them.

A month is named ``YYYY-MM``; its batch is ``<monitor.batches>/YYYY-MM.csv`` or ``.parquet``
and its labels ``<monitor.labels>/YYYY-MM.csv`` or ``.parquet`` (params/monitor.yaml). A
large month may be a partitioned Parquet dataset instead: a folder ``YYYY-MM.parquet/`` of
``part-*.parquet`` files (``churnlab simulate --month``), read part by part in name order.
"""

from __future__ import annotations

import hashlib
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


def dataset_parts(path: Path, what: str) -> list[Path]:
    """A file itself, or the ``part-*.parquet`` files of a dataset folder in name order.

    Args:
        path: a file, or a partitioned dataset folder.
        what: what the path is, for the error (a month, the scoring command's INPUT).

    Raises:
        ChurnlabError: a dataset folder without a part file.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise ChurnlabError(
            f"{path}: {what}: a partitioned dataset without a part file (part-*.parquet): "
            "expected its parts, found none"
        )
    return parts


def month_parts(path: Path) -> list[Path]:
    """The files of a month: itself, or the ``part-*.parquet`` files of a dataset folder."""
    return dataset_parts(path, "a month")


def read_month(path: Path) -> pd.DataFrame:
    """A month's file, or every part of its dataset folder, as one text table."""
    parts = [read_table(part) for part in month_parts(path)]
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def table_sha256(path: Path) -> str:
    """SHA-256 of a month's file; of a dataset folder: over its parts' names and hashes."""
    parts = month_parts(path)
    if parts == [Path(path)]:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.name} {hashlib.sha256(part.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


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


def read_labels(path: Path, spec: TableSpec, month_ids: pd.Series | None) -> Labels:
    """Read and check a month's labels against the month's ids.

    ``month_ids`` None leaves the last check (ids the month does not have) to the caller:
    the monitor on a cluster counts matches partition by partition
    (``unknown_labels_error``).

    Raises:
        ChurnlabError: naming the file and the column: a missing column, a value other than
            the two labels, a repeated id, or ids that are not in the month.
    """
    table = read_month(path)
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
    if month_ids is not None:
        unknown = sorted(set(ids) - set(month_ids.astype(str)))
        if unknown:
            raise unknown_labels_error(path, spec, len(unknown), unknown[:3])
    return Labels(path, ids.to_numpy(), (values == spec.positive_label).to_numpy(dtype=int))


def unknown_labels_error(path: Path, spec: TableSpec, count: int, examples: list) -> ChurnlabError:
    """The error for labels of customers the month does not have."""
    shown = f" (e.g. {examples})" if examples else ""
    return ChurnlabError(
        f"{path}: column '{spec.id_column}': {count} ids are not customers of the "
        f"month's batch{shown}: labels belong to the month of the same name"
    )
