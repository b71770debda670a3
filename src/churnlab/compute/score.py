"""``churnlab score`` over a partitioned dataset or a large file, part by part on a cluster.

Each task scores one part with ``churnlab.serving.score.score_frame`` (the same pure core
as the local run) and sends back its scored rows and rejects, the rejects' row numbers
shifted by the rows of the parts before it. The caller puts them together in part order,
checks the reject share over the whole input and writes both files at once, atomically:
the output has the bytes of the local run. One check needs the whole input: a customer id
repeated in two parts; each part sends the hashes of its ids, and a repeat across parts
refuses the input (nothing written) instead of scoring it differently from the local run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab.compute.cluster import ComputeSettings, gather, share
from churnlab.data import TableSpec, _as_text
from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic_all
from churnlab.monitoring.months import dataset_parts
from churnlab.serving.rows import ROW
from churnlab.serving.score import (
    ScoreSettings,
    ScoringModel,
    check_reject_share,
    encode,
    read_customers,
    score_frame,
)


def input_parts(source: Path) -> list[Path]:
    """The scoring command's INPUT: a file, or a dataset folder's ``part-*.parquet`` files."""
    return dataset_parts(source, "INPUT")


def read_input(source: Path) -> pd.DataFrame:
    """The whole input in one frame: a file, or every part of a dataset folder in order."""
    frames = [read_customers(part) for part in input_parts(source)]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def score_part(
    part: str | pd.DataFrame,
    offset: int,
    spec: TableSpec,
    model: ScoringModel,
    fill_missing: dict | None,
    where: str,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """One part's scored rows, its rejects (rows numbered across the input), its id hashes."""
    if isinstance(part, str):
        raw = read_customers(Path(part))
    else:
        raw = part.reset_index(drop=True)
    scored, rejects = score_frame(raw, spec, model, fill_missing, where, max(len(raw), 1))
    rejects = rejects.assign(**{ROW: rejects[ROW] + offset})
    ids = _as_text(raw[spec.id_column]).dropna()
    return scored, rejects, np.unique(pd.util.hash_array(ids.to_numpy(dtype=object)))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The parts' frames as one, with the dtypes the whole input's frame has.

    An empty frame's text columns are ``object``, a filled one's ``str``: concatenated,
    they become ``object`` and the Parquet bytes differ from the local run's. Only the
    frames with rows go in (all empty: the first, as the local run has it).
    """
    filled = [f for f in frames if len(f)]
    return pd.concat(filled, ignore_index=True) if filled else frames[0].reset_index(drop=True)


def _repeated_across_parts(hashes: list[np.ndarray]) -> int:
    every = np.concatenate(hashes)
    _, counts = np.unique(every, return_counts=True)
    return int((counts > 1).sum())


def score_on_cluster(
    source: Path,
    output: Path,
    rejects: Path,
    spec: TableSpec,
    model: ScoringModel,
    settings: ScoreSettings,
    fill_missing: dict | None,
    client: Any,
    compute: ComputeSettings,
) -> dict:
    """``score_file`` with the parts scored on the cluster's workers; the same bytes.

    A dataset folder's parts are read by the workers; a single file is read here and cut
    into ``compute.partition_rows`` rows per task.

    Raises:
        ChurnlabError: as ``score_file``; an id repeated across parts; a task that killed
            its workers (``churnlab.compute.cluster.gather``).
    """
    import pyarrow.parquet as pq

    parts = input_parts(source)
    if len(parts) == 1:
        raw = read_customers(parts[0])
        size = compute.partition_rows or len(raw)
        tasks = [raw.iloc[i : i + size] for i in range(0, max(len(raw), 1), size)]
        sizes = [len(t) for t in tasks]
        tasks = share(client, tasks, "scoring-input")  # made again if their worker dies
        where = [str(source)] * len(sizes)
    else:
        sizes = [pq.read_metadata(part).num_rows for part in parts]
        # workers started elsewhere have another working folder: absolute paths for them
        tasks = [str(part.resolve()) for part in parts]
        where = [str(part) for part in parts]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    shared = share(client, [spec, model, fill_missing], "scoring")
    futures = client.map(
        score_part,
        tasks,
        offsets,
        *[[item] * len(sizes) for item in shared],
        where,
        pure=False,
    )
    results = gather(client, futures, compute, f"scoring {source}")
    repeated = _repeated_across_parts([r[2] for r in results])
    if repeated:
        raise ChurnlabError(
            f"{source}: column '{spec.id_column}': {repeated} ids appear in more than one "
            "part; every row of a repeated id is rejected, which needs the whole input at "
            "once: score it with compute.engine local, or remove the repeats; nothing written"
        )
    scored = _concat([r[0] for r in results])
    rejected = _concat([r[1] for r in results])
    total = int(sum(sizes))
    check_reject_share(rejected, total, settings.max_reject_fraction, str(source))
    write_atomic_all(
        {Path(output): encode(scored, output), Path(rejects): encode(rejected, rejects)}
    )
    return {"rows": total, "scored": len(scored), "rejected": len(rejected)}
