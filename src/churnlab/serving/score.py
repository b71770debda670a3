"""Batch scoring: a file of customers in, each one's churn probability and decision out.

:func:`score_frame` is the pure core (a frame in, the scored rows and the rejects out);
``churnlab score`` (:func:`score_file`) adds the edges: reading CSV or Parquet, the reject
limit of ``params/score.yaml``, and one atomic write of the scores and the rejects together.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab.data import TableSpec, _header, file_problem
from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic_all
from churnlab.model import model_input
from churnlab.serving.rows import REASON, check_rows

SETTINGS_FILE = "params/score.yaml"
FORMATS = (".csv", ".parquet")
# the columns after the id (named as the schema's id column)
PROBABILITY, DECISION, MODEL_VERSION = "probability", "decision", "model_version"


@dataclass(frozen=True)
class ScoringModel:
    """A fitted churnlab model with what scoring needs besides it.

    Attributes:
        model: the scikit-learn Pipeline (``churnlab.model.build_model``).
        numeric, categorical: its input columns.
        threshold: the operating threshold: a probability at or above it is decision 1.
        version: what the output's ``model_version`` says: the registry version (``"3"``),
            or ``file:`` and the first 12 hex digits of a model file's SHA-256.
        label: how messages name it.
    """

    model: object
    numeric: list[str]
    categorical: list[str]
    threshold: float
    version: str
    label: str

    @classmethod
    def from_champion(cls, champion, alias: str | None = "champion") -> ScoringModel:
        """From a loaded registry model (``churnlab.monitoring.champion.load_champion``)."""
        label = f"{champion.name} version {champion.version}" + (f" ({alias})" if alias else "")
        return cls(
            champion.model,
            champion.numeric,
            champion.categorical,
            champion.threshold,
            str(champion.version),
            label,
        )

    def probabilities(self, typed: pd.DataFrame) -> np.ndarray:
        """The churn probability of each row: the model's ``predict_proba``, the same bits."""
        encoded = one_hot_inputs(self.model, typed, self.numeric, self.categorical)
        if encoded is None:
            inputs = model_input(typed, self.numeric, self.categorical)
            return self.model.predict_proba(inputs)[:, 1]
        return self.model.named_steps["estimator"].predict_proba(encoded)[:, 1]


def one_hot_inputs(
    model, typed: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> np.ndarray | None:
    """The matrix the model's preprocessing makes of ``typed``, one-hot columns built directly.

    scikit-learn's OneHotEncoder works on Python objects (and so needs the text columns as
    objects first): two thirds of a million-row prediction's time besides the trees. Built
    from category codes instead, the matrix holds the same numbers in the same places, so
    the estimator gives the same probabilities bit for bit (tests/test_score.py compares
    them with ``predict_proba``).

    Returns:
        None when the model is not the shape ``churnlab.model.build_model`` makes (the caller
        then uses the model's own ``predict_proba``).
    """
    from sklearn.preprocessing import OneHotEncoder

    steps = getattr(model, "named_steps", {})
    preprocess = steps.get("preprocess")
    if list(steps) != ["preprocess", "estimator"] or not numeric or not categorical:
        return None
    kept = [(name, cols) for name, step, cols in preprocess.transformers_ if step != "drop"]
    encoder = preprocess.named_transformers_.get("categorical")
    if (
        kept != [("numeric", numeric), ("categorical", categorical)]
        or getattr(preprocess, "sparse_output_", False)
        or not isinstance(encoder, OneHotEncoder)
        or encoder.handle_unknown != "ignore"
        or getattr(encoder, "drop_idx_", True) is not None
        or getattr(encoder, "_infrequent_enabled", True)
        or encoder.sparse_output
        or encoder.dtype is not np.float64
        or not all(isinstance(c, str) for cats in encoder.categories_ for c in cats)
    ):
        return None
    blocks = [np.asarray(preprocess.named_transformers_["numeric"].transform(typed[numeric]))]
    rows = np.arange(len(typed))
    for name, categories in zip(categorical, encoder.categories_, strict=True):
        codes = pd.Index(categories).get_indexer(typed[name])
        block = np.zeros((len(typed), len(categories)))
        known = codes >= 0  # an unknown category is all zeros, as handle_unknown="ignore"
        block[rows[known], codes[known]] = 1.0
        blocks.append(block)
    return np.hstack(blocks)


@dataclass(frozen=True)
class ScoreSettings:
    """The ``score`` section of ``params/score.yaml``."""

    max_reject_fraction: float
    rejects: str
    chunk_rows: int

    @classmethod
    def from_params(cls, params: dict) -> ScoreSettings:
        from churnlab.config import get_key

        section = get_key(params, "score", SETTINGS_FILE)
        return cls(
            float(section["max_reject_fraction"]),
            str(section["rejects"]),
            int(section["chunk_rows"]),
        )


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - DVC's file hash, compared with dvc.lock
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _locked_md5(lock: dict, stage: str, path: str, kind: str) -> str | None:
    entries = (lock.get("stages", {}).get(stage) or {}).get(kind) or []
    return next((e.get("md5") for e in entries if e.get("path") == path), None)


def load_file_model(root: Path, path: Path, params: dict) -> ScoringModel:
    """A model file (``models/model.skops``) with the threshold the evaluate stage chose.

    The threshold is ``threshold`` in the test metrics (``paths.test_metrics``), which the
    evaluate stage computed for the model file it read: ``dvc.lock`` records both, so the
    file given must be that model and the metrics file the one evaluate wrote.

    Raises:
        ChurnlabError: an unreadable model file; no evaluate run recorded for this model
            file or these metrics (say what to run).
    """
    import skops.io
    import yaml

    from churnlab.config import get_key
    from churnlab.model import TRUSTED_TYPES
    from churnlab.monitoring.champion import model_columns

    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ChurnlabError(f"{path}: --model: {problem}")
    model_path = get_key(params, "paths.model", "params/paths.yaml")
    metrics_path = get_key(params, "paths.test_metrics", "params/paths.yaml")
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except FileNotFoundError:
        lock = {}
    rerun = "run `dvc repro evaluate` (or score with the registry's champion)"
    if _locked_md5(lock, "evaluate", model_path, "deps") != _md5(path):
        raise ChurnlabError(
            f"{path}: --model: not the model the evaluate stage chose its threshold for "
            f"(dvc.lock: evaluate's {model_path}): {rerun}"
        )
    metrics_file = root / metrics_path
    if not metrics_file.is_file() or _locked_md5(lock, "evaluate", metrics_path, "outs") != _md5(
        metrics_file
    ):
        raise ChurnlabError(
            f"{metrics_path}: threshold: expected the file the evaluate stage wrote "
            f"(dvc.lock), found it missing or changed since: {rerun}"
        )
    threshold = json.loads(metrics_file.read_text()).get("threshold")
    if not isinstance(threshold, int | float):
        raise ChurnlabError(f"{metrics_path}: threshold: expected a number, found {threshold!r}")
    try:
        model = skops.io.load(path, trusted=TRUSTED_TYPES)
    except Exception as exc:  # skops, zip: whatever the damage, the same advice
        raise ChurnlabError(
            f"{path}: --model: cannot be loaded as a churnlab model ({exc}): {rerun}"
        ) from None
    numeric, categorical = model_columns(model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ScoringModel(
        model, numeric, categorical, float(threshold), f"file:{digest[:12]}", str(path)
    )


def score_frame(
    raw: pd.DataFrame,
    spec: TableSpec,
    model: ScoringModel,
    fill_missing: dict | None = None,
    where: str = "input",
    chunk_rows: int = 200_000,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the rows of ``raw`` that pass the schema; reject the others with their reasons.

    Args:
        raw: the customers (text columns as read, or typed Parquet columns); the target
            column and columns the schema does not name are ignored.
        spec: the data description (``params/data.yaml`` ``schema``).
        model: the model and its threshold.
        fill_missing: values for blanks of nullable numeric columns, as the training data
            had them (``prepare.fill_missing``).
        where: the input, for messages.
        chunk_rows: rows predicted at a time; ``progress(done, total)`` after each chunk.

    Returns:
        ``(scored, rejects)``: scored has the id column, ``probability``, ``decision`` (1 at
        or above the threshold) and ``model_version``, in the input's order; rejects has
        ``row`` (1 = the first row after the header), the id as given and ``reason``
        (``churnlab.serving.rows``).

    Raises:
        ChurnlabError: a schema column missing from ``raw``; a model column the schema
            does not describe.
    """
    unknown = [c for c in (*model.numeric, *model.categorical) if c not in spec.features]
    if unknown:
        raise ChurnlabError(
            f"params/data.yaml: schema: {model.label} takes column(s) {unknown} that the schema "
            "does not describe as features: score with a model trained on this schema "
            "(`make repro`), or describe those columns again"
        )
    checked = check_rows(raw, spec, where)
    typed = checked.valid
    for name, value in (fill_missing or {}).items():
        if name in typed.columns:
            typed = typed.assign(**{name: typed[name].fillna(float(value))})
    parts = []
    for start in range(0, len(typed), chunk_rows):
        parts.append(model.probabilities(typed.iloc[start : start + chunk_rows]))
        if progress is not None:
            progress(min(start + chunk_rows, len(typed)), len(typed))
    probabilities = np.concatenate(parts) if parts else np.empty(0)
    scored = pd.DataFrame(
        {
            spec.id_column: typed[spec.id_column].astype("str").to_numpy(),
            PROBABILITY: probabilities,
            DECISION: (probabilities >= model.threshold).astype("int8"),
            MODEL_VERSION: pd.array([model.version] * len(typed), dtype="str"),
        }
    )
    return scored, checked.rejects


def _format(path: Path, what: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ChurnlabError(
            f"{path}: {what}: expected a .csv or .parquet file name, found "
            f"'{Path(path).suffix or 'no suffix'}'"
        )
    return suffix


def read_customers(path: Path) -> pd.DataFrame:
    """A CSV (every column as text) or Parquet file (its own types) of customers.

    Raises:
        ChurnlabError: not a .csv or .parquet name; a missing, empty, unreadable file or not
            a regular file; a repeated column name; a header without rows.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    path = Path(path)
    suffix = _format(path, "INPUT")
    problem = file_problem(path)
    if problem:
        raise ChurnlabError(f"{path}: INPUT: {problem}")
    if path.stat().st_size == 0:
        raise ChurnlabError(f"{path}: INPUT: the file is empty")
    try:
        header = _header(path)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ChurnlabError(
                f"{path}: column(s) {repeated} appear more than once in the header: rename "
                "or drop the copies so that each column has one name"
            )
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            # every column as text, blanks as empty text (types come from the schema); a BOM
            # is dropped by the reader
            table = pa_csv.read_csv(
                path,
                convert_options=pa_csv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            frame = table.to_pandas()
    except ChurnlabError:
        raise
    except Exception as exc:  # pyarrow raises many types for a file that is not a table
        raise ChurnlabError(f"{path}: INPUT: cannot be read as a table: {exc}") from None
    if frame.empty:
        raise ChurnlabError(f"{path}: INPUT: the file has a header but no rows")
    return frame


def encode(frame: pd.DataFrame, path: Path) -> bytes:
    """The bytes of ``frame`` as the file ``path`` names it: CSV or Parquet."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    if Path(path).suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buffer)
    else:
        import pyarrow.csv as pa_csv

        # shortest round-trip digits: the probabilities read back are the ones computed
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="needed"))
    return buffer.getvalue()


def rejects_path(output: Path, pattern: str) -> Path:
    """Where the rejects of ``output`` go: ``pattern`` (``score.rejects``) beside it.

    Raises:
        ChurnlabError: a pattern with unknown placeholders, one that names the output
            itself, or a name that is not .csv or .parquet.
    """
    output = Path(output)
    try:
        name = pattern.format(stem=output.stem, suffix=output.suffix)
    except (KeyError, IndexError, ValueError) as exc:
        raise ChurnlabError(
            f"{SETTINGS_FILE}: score.rejects: expected a file name with {{stem}} and "
            f"{{suffix}} (the output's), found {pattern!r} ({exc!r})"
        ) from None
    target = output.parent / name
    if target.resolve() == output.resolve():
        raise ChurnlabError(
            f"{SETTINGS_FILE}: score.rejects: {pattern!r} names the output file itself: "
            "give the rejects a name of their own, e.g. '{stem}.rejects{suffix}'"
        )
    _format(target, f"{SETTINGS_FILE} score.rejects")
    return target


def _common_reasons(rejects: pd.DataFrame, shown: int = 3) -> str:
    """The most frequent ``column: rule`` among the rejects, with their counts."""
    rules = (
        rejects[REASON]
        .str.split("; ")
        .explode()
        .str.extract(r"^(.*?: .*?): found", expand=False)
        .value_counts()
    )
    return ", ".join(f"{rule} ({count:,} rows)" for rule, count in rules.head(shown).items())


def check_reject_share(rejects: pd.DataFrame, total: int, limit: float, where: str) -> None:
    """Refuse the batch when more than ``limit`` of its ``total`` rows are rejected.

    Raises:
        ChurnlabError: naming the input, the share against the limit and the commonest
            reasons.
    """
    if total and len(rejects) / total > limit:
        raise ChurnlabError(
            f"{where}: {len(rejects):,} of {total:,} rows ({len(rejects) / total:.1%}) break "
            f"params/data.yaml schema, more than score.max_reject_fraction {limit:.1%} "
            f"({SETTINGS_FILE}); most often: {_common_reasons(rejects)}; nothing was written: "
            "fix the file (or its schema), or raise the limit"
        )


def score_file(
    source: Path,
    output: Path,
    rejects: Path,
    spec: TableSpec,
    model: ScoringModel,
    settings: ScoreSettings,
    fill_missing: dict | None = None,
    raw: pd.DataFrame | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Score the file ``source``; write the scores to ``output`` and the rejects beside them.

    Both files are written together and atomically, only when the reject share is within
    the limit: a refused batch leaves whatever was there before as it was.

    Args:
        raw: ``read_customers(source)`` when the caller has read it already.

    Returns:
        The counts: ``rows``, ``scored``, ``rejected``.

    Raises:
        ChurnlabError: see :func:`read_customers`, :func:`score_frame` and
            :func:`check_reject_share`.
    """
    _format(output, "OUTPUT")
    _format(rejects, "the rejects file")
    if Path(output).resolve() == Path(source).resolve():
        raise ChurnlabError(f"{output}: OUTPUT: the input file itself: name another file")
    if Path(rejects).resolve() in (Path(output).resolve(), Path(source).resolve()):
        raise ChurnlabError(
            f"{rejects}: the rejects file: the same file as OUTPUT or INPUT: name another file"
        )
    raw = read_customers(source) if raw is None else raw
    scored, rejected = score_frame(
        raw, spec, model, fill_missing, str(source), settings.chunk_rows, progress
    )
    check_reject_share(rejected, len(raw), settings.max_reject_fraction, str(source))
    write_atomic_all(
        {Path(output): encode(scored, output), Path(rejects): encode(rejected, rejects)}
    )
    return {"rows": len(raw), "scored": len(scored), "rejected": len(rejected)}
