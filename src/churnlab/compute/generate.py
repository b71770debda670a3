"""A large simulated month as a partitioned Parquet dataset, on a cluster or in this process.

The month is cut into partitions of ``compute.partition_rows`` customers. Partition ``k`` is
drawn by ``churnlab.monitoring.simulate.simulate_month`` (the same resampling of the real
customers and the same scenarios as ``churnlab simulate``) with its own generator, seeded by
``[seed, month, k]``: the data depends on the seed and the partition size, never on how many
workers draw it or in which order. Each partition is one file, ``part-00000.parquet``, of the
batch folder ``<monitor.batches>/YYYY-MM.parquet/`` and of the labels folder beside it.
Parts are written into hidden staging folders; only when every part is there do the two
folders replace an earlier month of the same name, so a failed job leaves no half month.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab.compute.cluster import gather, share
from churnlab.data import TableSpec
from churnlab.files import write_atomic
from churnlab.monitoring.simulate import Scenario, simulate_month, table_bytes

PART = "part-{:05d}.parquet"


@dataclass(frozen=True)
class MonthPlan:
    """What to draw: a month of ``customers`` in partitions of ``partition_rows``."""

    month: str
    customers: int
    partition_rows: int
    seed: int

    @property
    def partitions(self) -> int:
        return -(-self.customers // self.partition_rows)

    @property
    def id_width(self) -> int:
        return max(6, len(str(self.customers)))

    def rows(self, part: int) -> tuple[int, int]:
        """The first customer number (from 1) and the size of partition ``part``."""
        first = part * self.partition_rows
        return first + 1, min(self.partition_rows, self.customers - first)

    def rng(self, part: int) -> np.random.Generator:
        year, number = int(self.month[:4]), int(self.month[5:])
        return np.random.default_rng([self.seed, year * 12 + number, part])


def draw_partition(
    raw: pd.DataFrame,
    typed: pd.DataFrame,
    spec: TableSpec,
    scenarios: list[Scenario],
    plan: MonthPlan,
    part: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Partition ``part`` of the month: its batch and labels, ids numbered across the month."""
    first, size = plan.rows(part)
    batch, labels = simulate_month(raw, typed, spec, plan.month, size, scenarios, plan.rng(part))
    ids = [f"{plan.month}-{n:0{plan.id_width}d}" for n in range(first, first + size)]
    return batch.assign(**{spec.id_column: ids}), labels.assign(**{spec.id_column: ids})


def write_partition(
    raw: pd.DataFrame,
    typed: pd.DataFrame,
    spec: TableSpec,
    scenarios: list[Scenario],
    plan: MonthPlan,
    part: int,
    staging: tuple[str, str],
) -> int:
    """Draw partition ``part`` and write its two files into the staging folders (a task).

    Run again (a retried task), it writes the same bytes. Returns its number of customers.
    """
    batch, labels = draw_partition(raw, typed, spec, scenarios, plan, part)
    for folder, frame in zip(staging, (batch, labels), strict=True):
        write_atomic(Path(folder) / PART.format(part), table_bytes(frame, ".parquet"))
    return len(batch)


def generate_month(
    raw: pd.DataFrame,
    typed: pd.DataFrame,
    spec: TableSpec,
    scenarios: list[Scenario],
    plan: MonthPlan,
    targets: tuple[Path, Path],
    client: Any = None,
    settings: Any = None,
) -> int:
    """Write the month's batch and labels datasets (``targets``); returns the customers.

    Args:
        client: a ``distributed.Client`` to draw the partitions on its workers (they must see
            the same file system: a shared disk on a multi-machine cluster); None draws them
            here, one after the other, with the same bytes.
        settings: the ``ComputeSettings`` of the cluster (for its errors).

    Raises:
        ChurnlabError: from the cluster (``churnlab.compute.cluster.worker_failure``) when a
            partition could not be drawn; the staging folders are removed and an earlier
            month of the same name stays.
    """
    token = uuid.uuid4().hex[:8]
    staging = tuple(t.parent / f".{t.name}.partial-{token}" for t in targets)
    for folder in staging:
        folder.mkdir(parents=True)
    parts = range(plan.partitions)
    names = (str(staging[0]), str(staging[1]))
    try:
        if client is None:
            sizes = [write_partition(raw, typed, spec, scenarios, plan, k, names) for k in parts]
        else:
            shared = share(client, [raw, typed], f"drawing-{plan.month}")
            futures = client.map(
                write_partition,
                *([shared[0]] * len(parts), [shared[1]] * len(parts)),
                [spec] * len(parts),
                [scenarios] * len(parts),
                [plan] * len(parts),
                list(parts),
                [names] * len(parts),
                key=[f"churnlab-generate-{plan.month}-{token}-{k}" for k in parts],
            )
            sizes = gather(client, futures, settings, f"simulating {plan.month}")
        expected = {PART.format(k) for k in parts}
        for folder, target in zip(staging, targets, strict=True):
            _drop_leftovers(folder, expected)
            _replace_folder(folder, target)
    finally:
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
    return int(sum(sizes))


def _drop_leftovers(staging: Path, expected: set[str]) -> None:
    """Remove what a killed task left in ``staging``: the half-written temporary file of a
    worker that died mid-write (its task ran again elsewhere and wrote the part).

    Raises:
        RuntimeError: when a part is missing, which ``gather`` returning should rule out.
    """
    found = {entry.name: entry for entry in staging.iterdir()}
    missing = sorted(expected - found.keys())
    if missing:
        raise RuntimeError(f"{staging}: parts {missing[:3]} were not written")
    for name, entry in found.items():
        if name not in expected:
            entry.unlink()


def _replace_folder(staging: Path, target: Path) -> None:
    """Put a complete staging folder where ``target`` (a folder or a file) was."""
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.is_dir() and not target.is_symlink():
        target.rename(retired)
    elif target.exists() or target.is_symlink():
        target.unlink()
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    other = target.with_suffix(".csv")  # a month is one file or one folder
    other.unlink(missing_ok=True)
