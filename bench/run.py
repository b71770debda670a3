"""Benchmark: the DVC pipeline against the same computation as plain function calls.

For the default data (and, unless ``--quick``, for synthetic tables of ``--sizes`` customers
made by :func:`churnlab.synth.generate_customers`) the script

1. copies the project (git-tracked and untracked-but-not-ignored files) into a temporary
   folder, makes it a git repository and runs the full ``dvc repro`` there, timing every
   stage from DVC's and the runner's own progress lines;
2. runs the no-op ``dvc repro`` three times (median);
3. runs the same churnlab calls the four notebooks make, as plain function calls in one
   fresh Python process, timed per stage (the physical limit);
4. measures where the notebook-stage overhead goes: interpreter and CLI start-up, kernel
   start-up (an empty notebook through papermill), the imports the notebooks make, the HTML
   export and DVC's own work (hashing and caching outputs, the lock file);

then prints the figures and writes them, with the machine they came from, to
``bench/RESULTS.md``. Run it with the project's Python (``make bench``)::

    .venv/bin/python bench/run.py                  # default data, 100k and 1M customers
    .venv/bin/python bench/run.py --quick          # default data only
    .venv/bin/python bench/run.py --sizes 100000   # default data and 100k customers

The project's own workspace is never touched: everything runs in temporary copies.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (100_000, 1_000_000)
DEFAULT_SEED = 20240601
REPEATS = 3
TARGET_NOOP_S = 1.0
TARGET_OVERHEAD_S = 1.5
TARGET_RATIO = 1.2
TARGET_RATIO_ROWS = 1_000_000
SYNTH_DIR = "synth"
QUIET = ("Kernel is running over TCP without encryption",)
VERSIONS = (
    "dvc",
    "papermill",
    "nbconvert",
    "nbclient",
    "jupytext",
    "ipykernel",
    "pandas",
    "scikit-learn",
    "pandera",
    "matplotlib",
)

STAGE_START = re.compile(r"^Running stage '([^']+)'")
RUNNER_START = re.compile(r"^\[([\w-]+)\] running ")
RUNNER_DONE = re.compile(r"^\[([\w-]+)\] done in ([\d.]+) s")


@dataclass(frozen=True)
class Run:
    """One timed command: wall time and every output line with its time since the start."""

    wall: float
    lines: list[tuple[float, str]]


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    """Print one progress line with the wall-clock time."""
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def bench_env(bin_dir: Path) -> dict[str, str]:
    """The environment for every command: the project's venv first, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def stream(command: list[str], cwd: Path, env: dict[str, str], echo: bool = True) -> Run:
    """Run a command, timestamping each line of its merged stdout and stderr.

    Raises:
        RuntimeError: a non-zero exit, with the last lines of output.
    """
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for text in proc.stdout:
            text = text.rstrip("\n")
            lines.append((time.perf_counter() - started, text))
            if echo and text.strip() and not any(q in text for q in QUIET):
                print(f"    {lines[-1][0]:7.1f} s | {text}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}) in {cwd}:\n{tail}")
    return Run(wall, lines)


def wall_seconds(command: list[str], cwd: Path, env: dict[str, str], repeats: int) -> float:
    """Median wall time of a quiet command over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def import_seconds(
    python: str, modules: list[str], cwd: Path, env: dict[str, str], repeats: int
) -> float:
    """Median time to import ``modules`` in a fresh interpreter (start-up not counted)."""
    code = (
        "import time; s = time.perf_counter(); "
        f"import {', '.join(modules)}; print(time.perf_counter() - s)"
    )
    times = [
        float(
            subprocess.run(
                [python, "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(times)


def notebook_imports(script: Path) -> list[str]:
    """The top-level modules a notebook script imports (its ``import`` statements)."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.append(node.module)
    return sorted(set(modules))


def run_worker(kind: str, root: Path, out: Path, env: dict[str, str]) -> dict:
    """Run one measurement in a fresh interpreter (this script with ``--worker``)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            "--root",
            str(root),
            "--out",
            str(out),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind!r} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the project copy


def copy_project(source: Path, dest: Path) -> None:
    """Copy the git-tracked and the untracked-but-not-ignored files of ``source``."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=source,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        path = source / name
        if path.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)


def git_commit(root: Path, env: dict[str, str]) -> None:
    """Make ``root`` a git repository with everything committed (DVC wants an SCM)."""
    git = [
        "git",
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "core.hooksPath=/dev/null",
    ]
    subprocess.run([*git, "init", "-q"], cwd=root, env=env, check=True)
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text(f"/{SYNTH_DIR}/\n")
    subprocess.run([*git, "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "benchmark copy"], cwd=root, env=env, check=True)


def point_data_at(root: Path, source: str) -> None:
    """Set ``data.source`` in the copy's ``params/data.yaml``; a user file has no digest."""
    import yaml

    path = root / "params" / "data.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["source"] = source
    params["data"]["sha256"] = None
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def write_customers(root: Path, template: Any, rows: int, seed: int) -> str:
    """Write ``rows`` synthetic customers as CSV into the copy; return the relative path."""
    import yaml

    from churnlab.synth import generate_customers

    schema = yaml.safe_load((root / "params" / "data.yaml").read_text())["schema"]
    table = generate_customers(
        template, rows, seed, schema["id_column"], schema["target"], schema.get("numeric") or {}
    )
    relative = f"{SYNTH_DIR}/customers_{rows}.csv"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / relative, index=False, lineterminator="\n")
    return relative


# --------------------------------------------------------------------------- parsing repro


def stage_spans(run: Run) -> tuple[float, dict[str, dict]]:
    """Split a ``dvc repro`` run into DVC start-up and one span per stage.

    A stage's span runs from DVC's ``Running stage`` line to the next one (the last to the
    end of the run), so the spans and the start-up add up to the wall time. Notebook stages
    are split further by the runner's lines: ``cli`` (to ``[stage] running``: interpreter,
    imports, reading the notebook), ``runner`` (papermill, kernel, HTML export, writes) and
    ``after`` (process exit, then DVC hashing and caching the outputs, the lock file).
    """
    starts = [i for i, (_, text) in enumerate(run.lines) if STAGE_START.match(text)]
    if not starts:
        return run.wall, {}
    spans: dict[str, dict] = {}
    for number, first in enumerate(starts):
        last = starts[number + 1] if number + 1 < len(starts) else len(run.lines)
        begin = run.lines[first][0]
        end = run.lines[last][0] if last < len(run.lines) else run.wall
        name = STAGE_START.match(run.lines[first][1]).group(1)
        span = {"span": end - begin}
        segment = run.lines[first:last]
        running = next((t for t, text in segment if RUNNER_START.match(text)), None)
        done = next((t for t, text in segment if RUNNER_DONE.match(text)), None)
        if running is not None and done is not None:
            span.update({"cli": running - begin, "runner": done - running, "after": end - done})
        spans[name] = span
    return run.lines[starts[0]][0], spans


# --------------------------------------------------------------------------- workers


def _render(fig: Any) -> None:
    """Draw a figure to PNG as the inline backend does, then close it."""
    import io

    import matplotlib.pyplot as plt

    fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
    plt.close(fig)


def plain_fetch(root: Path, out: Path) -> dict:
    """The fetch stage: ``fetch_raw`` with the project's params, into ``out``."""
    from churnlab.config import get_key, load_params
    from churnlab.fetch import fetch_raw

    params = load_params(root)
    fetch_raw(
        get_key(params, "data.source", "data"),
        get_key(params, "data.sha256", "data"),
        out / get_key(params, "paths.raw", "paths"),
        root,
    )
    return {}


def plain_explore(p: dict) -> dict:
    """What ``notebooks/01_explore.py`` computes: summaries and three figures."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from churnlab.data import TARGET_COLUMN, churn_rate, load_prepared
    from churnlab.explore import associations, churn_by, missing_values

    train, _, spec = load_prepared(
        Path(p["paths_raw"]),
        p["schema"],
        {
            "seed": p["prepare_seed"],
            "test_size": p["prepare_test_size"],
            "fill_missing": {},
            "sample_rows": p["prepare_sample_rows"],
        },
    )
    numeric, categorical = list(spec.numeric), list(spec.categorical)
    overall = churn_rate(train[TARGET_COLUMN])
    missing_values(train)
    segments = {name: churn_by(train, name) for name in p["explore_segments"]}
    fig, axes = plt.subplots(1, len(segments), figsize=(4.5 * len(segments), 3.6), squeeze=False)
    for ax, (name, table) in zip(axes[0], segments.items(), strict=True):
        ax.bar([str(v) for v in table.index], table["churn_rate"], color="#4c72b0")
        ax.axhline(overall, color="#c44e52", linestyle="--", label="overall")
        ax.set_title(f"churn rate by {name}")
        ax.tick_params(axis="x", labelrotation=30)
    axes[0][0].legend()
    fig.tight_layout()
    _render(fig)
    for name in numeric:
        churn_by(train, name, bands=p["explore_bands"])
    fig, axes = plt.subplots(1, len(numeric), figsize=(4.5 * len(numeric), 3.4), squeeze=False)
    for ax, name in zip(axes[0], numeric, strict=True):
        for label, color in ((0, "#4c72b0"), (1, "#c44e52")):
            values = train.loc[train[TARGET_COLUMN] == label, name].dropna()
            ax.hist(
                values,
                bins=30,
                alpha=0.6,
                density=True,
                color=color,
                label="churned" if label else "stayed",
            )
        ax.set_title(name)
    axes[0][0].legend()
    fig.tight_layout()
    _render(fig)
    strength = associations(train, numeric, categorical)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(strength) + 1))
    ax.barh(strength["feature"][::-1], strength["strength"].abs()[::-1], color="#55a868")
    fig.tight_layout()
    _render(fig)
    return {"train_rows": len(train)}


def plain_prepare(p: dict) -> dict:
    """What ``notebooks/02_prepare.py`` computes: the checked, cleaned, split tables."""
    from pathlib import Path

    from churnlab.data import ID_COLUMN, TARGET_COLUMN, churn_rate, load_prepared
    from churnlab.files import write_json, write_parquet

    train, test, _ = load_prepared(
        Path(p["paths_raw"]),
        p["schema"],
        {
            "seed": p["prepare_seed"],
            "test_size": p["prepare_test_size"],
            "fill_missing": p["prepare_fill_missing"],
            "sample_rows": p["prepare_sample_rows"],
        },
    )
    summary = {
        "rows": {"train": len(train), "test": len(test)},
        "churn_rate": {
            "train": round(churn_rate(train[TARGET_COLUMN]), 6),
            "test": round(churn_rate(test[TARGET_COLUMN]), 6),
        },
        "missing_after_cleaning": int(train.isna().sum().sum() + test.isna().sum().sum()),
    }
    if set(train[ID_COLUMN]) & set(test[ID_COLUMN]):
        raise RuntimeError("a customer is in both splits")
    write_parquet(Path(p["paths_train"]), train)
    write_parquet(Path(p["paths_test"]), test)
    write_json(Path(p["paths_prepare_summary"]), summary)
    return summary["rows"]


def plain_train(p: dict) -> dict:
    """What ``notebooks/03_train.py`` computes: cross-validation, the final fit, the files."""
    from pathlib import Path

    import pandas as pd

    from churnlab.data import ID_COLUMN, TARGET_COLUMN, feature_columns
    from churnlab.files import write_json, write_parquet
    from churnlab.model import build_model, cross_validate, fit_model, save_model

    train = pd.read_parquet(p["paths_train"])
    numeric, categorical = feature_columns(train)
    family = p["train_family"]
    hyperparams = {
        "logistic_regression": p["train_logistic_regression"],
        "gradient_boosting": p["train_gradient_boosting"],
    }.get(family, {})
    model = build_model(numeric, categorical, family, hyperparams, p["train_seed"])
    folds, out_of_fold = cross_validate(
        model, train, numeric, categorical, TARGET_COLUMN, p["train_cv_folds"], p["train_seed"]
    )
    cv_metrics = {
        "folds": p["train_cv_folds"],
        "roc_auc_mean": round(float(folds["roc_auc"].mean()), 6),
        "roc_auc_std": round(float(folds["roc_auc"].std(ddof=1)), 6),
        "pr_auc_mean": round(float(folds["pr_auc"].mean()), 6),
        "pr_auc_std": round(float(folds["pr_auc"].std(ddof=1)), 6),
    }
    fitted = fit_model(model, train, numeric, categorical, TARGET_COLUMN)
    features = {"numeric": numeric, "categorical": categorical, "family": family}
    save_model(fitted, features, Path(p["paths_model"]), Path(p["paths_features"]))
    write_parquet(
        Path(p["paths_oof_scores"]),
        pd.DataFrame(
            {ID_COLUMN: train[ID_COLUMN], TARGET_COLUMN: train[TARGET_COLUMN], "score": out_of_fold}
        ),
    )
    write_json(Path(p["paths_cv_metrics"]), cv_metrics)
    return {"cv_roc_auc_mean": cv_metrics["roc_auc_mean"]}


def plain_evaluate(p: dict) -> dict:
    """What ``notebooks/04_evaluate.py`` computes: metrics, plot data, importance, figures."""
    from pathlib import Path

    import matplotlib.pyplot as plt
    import pandas as pd

    from churnlab.data import TARGET_COLUMN
    from churnlab.evaluation import (
        check_gates,
        choose_threshold,
        evaluate_scores,
        feature_importance,
        plot_tables,
    )
    from churnlab.files import write_csv, write_json
    from churnlab.model import load_model, model_input, predict_scores

    model, features = load_model(Path(p["paths_model"]), Path(p["paths_features"]))
    test = pd.read_parquet(p["paths_test"])
    oof = pd.read_parquet(p["paths_oof_scores"])
    labels = test[TARGET_COLUMN].to_numpy()
    scores = predict_scores(model, test, features)
    costs = {
        "cost_missed_churner": p["evaluate_cost_missed_churner"],
        "cost_wasted_offer": p["evaluate_cost_wasted_offer"],
    }
    threshold = choose_threshold(
        oof[TARGET_COLUMN].to_numpy(),
        oof["score"].to_numpy(),
        {"threshold_rule": p["evaluate_threshold_rule"], **costs},
    )
    metrics = evaluate_scores(
        labels, scores, oof[TARGET_COLUMN].to_numpy(), threshold, p["evaluate_top_fraction"], costs
    )
    tables = plot_tables(labels, scores, threshold)
    importance = feature_importance(
        model,
        model_input(test, features["numeric"], features["categorical"]),
        labels,
        p["evaluate_importance_repeats"],
        p["evaluate_importance_max_rows"],
        p["evaluate_seed"],
    )
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    axes[0][0].plot(tables["roc"]["fpr"], tables["roc"]["tpr"])
    axes[0][0].plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axes[0][1].plot(tables["precision_recall"]["recall"], tables["precision_recall"]["precision"])
    axes[0][1].axhline(metrics["churn_rate"], color="k", linestyle="--", linewidth=0.8)
    axes[1][0].plot(tables["calibration"]["predicted"], tables["calibration"]["observed"], "o-")
    axes[1][0].plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axes[1][1].plot(tables["gains"]["customers_contacted"], tables["gains"]["churners_captured"])
    axes[1][1].plot([0, 1], [0, 1], "k--", linewidth=0.8)
    fig.tight_layout()
    _render(fig)
    top = importance.head(15)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(top) + 1))
    ax.barh(top["feature"][::-1], top["importance"][::-1], xerr=top["std"][::-1], color="#55a868")
    fig.tight_layout()
    _render(fig)
    plots = Path(p["paths_plots"])
    for name, table in tables.items():
        write_csv(plots / f"{name}.csv", table)
    write_csv(plots / "feature_importance.csv", importance)
    write_json(Path(p["paths_test_metrics"]), metrics)
    return {
        "roc_auc": metrics["roc_auc"],
        "gates_missed": check_gates(metrics, p["evaluate_gates"]),
    }


def plain_pipeline(root: Path, out: Path) -> dict:
    """Every stage's computation in this one process, writing under ``out``; timed."""
    started = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import pandas  # noqa: F401
    import skops.io  # noqa: F401

    import churnlab.data
    import churnlab.evaluation
    import churnlab.explore
    import churnlab.fetch
    import churnlab.files
    import churnlab.model  # noqa: F401
    from churnlab.runner import load_stage, notebook_stages

    imported = time.perf_counter() - started
    steps = {
        "explore": plain_explore,
        "prepare": plain_prepare,
        "train": plain_train,
        "evaluate": plain_evaluate,
    }
    times = {}
    results: dict[str, Any] = {}
    begin = time.perf_counter()
    results["fetch"] = plain_fetch(root, out)
    times["fetch"] = time.perf_counter() - begin
    print(f"    plain fetch: {times['fetch']:.2f} s", file=sys.stderr, flush=True)
    for name in notebook_stages(root):
        params = load_stage(root, name).parameters
        params = {
            key: str(out / value) if key.startswith("paths_") else value
            for key, value in params.items()
        }
        begin = time.perf_counter()
        results[name] = steps[name](params)
        times[name] = time.perf_counter() - begin
        print(f"    plain {name}: {times[name]:.2f} s", file=sys.stderr, flush=True)
    return {"import": imported, "stages": times, "results": results}


def kernel_startup(out: Path) -> dict:
    """Import papermill, then run an empty notebook on the project's kernel (median)."""
    started = time.perf_counter()
    import nbformat
    import papermill

    from churnlab.runner import KERNEL_NAME

    imported = time.perf_counter() - started
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("pass")]
    nb.cells[0].metadata["tags"] = []
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": KERNEL_NAME,
        "language": "python",
    }
    times = []
    for number in range(REPEATS):
        begin = time.perf_counter()
        papermill.execute_notebook(
            nb,
            str(out / f"empty-{number}.ipynb"),
            kernel_name=KERNEL_NAME,
            language="python",
            cwd=str(out),
            progress_bar=False,
        )
        times.append(time.perf_counter() - begin)
    return {"papermill_import": imported, "empty_notebook": statistics.median(times)}


def html_export(root: Path) -> dict:
    """Time the runner's HTML export of each executed notebook of the copy.

    Like the runner process, papermill is imported first; then nbconvert's import, the
    first export in the process (template set-up) and each stage's export are timed.
    """
    import nbformat
    import papermill  # noqa: F401

    from churnlab.runner import load_stage, notebook_stages

    started = time.perf_counter()
    import nbconvert  # noqa: F401

    from churnlab.runner import to_html

    imported = time.perf_counter() - started
    stages = notebook_stages(root)
    notebooks = {
        name: nbformat.read(root / load_stage(root, name).executed_path, as_version=4)
        for name in stages
    }
    begin = time.perf_counter()
    to_html(notebooks[stages[0]])
    first = time.perf_counter() - begin
    times = {}
    for name, nb in notebooks.items():
        begin = time.perf_counter()
        to_html(nb)
        times[name] = time.perf_counter() - begin
    return {"nbconvert_import": imported, "first_setup": first - times[stages[0]], "export": times}


# --------------------------------------------------------------------------- measuring


def measure_data(
    label: str, rows: int | None, template: Any, seed: int, workdir: Path, env: dict[str, str]
) -> dict:
    """Full repro, no-op repro and the plain computation for one data set, in a fresh copy."""
    from churnlab.config import read_yaml

    root = workdir / f"project-{label}"
    root.mkdir(parents=True)
    log(f"{label}: copying the project to {root}")
    copy_project(PROJECT, root)
    source = "telco (default)"
    if rows is not None:
        log(f"{label}: generating {rows:,} customers (seed {seed})")
        begin = time.perf_counter()
        source = write_customers(root, template, rows, seed)
        point_data_at(root, source)
        log(
            f"{label}: wrote {source} ({(root / source).stat().st_size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - begin:.1f} s"
        )
    git_commit(root, env)
    expected = list((read_yaml(root / "dvc.yaml") or {}).get("stages") or {})
    log(f"{label}: full dvc repro")
    full = stream(["dvc", "repro"], root, env)
    startup, spans = stage_spans(full)
    if sorted(spans) != sorted(expected):
        raise RuntimeError(f"{label}: dvc repro ran {sorted(spans)}, expected {expected}")
    log(f"{label}: full repro {full.wall:.1f} s; no-op dvc repro x{REPEATS}")
    noops = []
    for _ in range(REPEATS):
        noop = stream(["dvc", "repro"], root, env, echo=False)
        if any(STAGE_START.match(text) for _, text in noop.lines):
            raise RuntimeError(f"{label}: the second dvc repro ran a stage")
        noops.append(noop.wall)
    log(f"{label}: no-op {statistics.median(noops):.2f} s; plain computation")
    started = time.perf_counter()
    plain = run_worker("plain", root, workdir / f"plain-{label}", env)
    plain["wall"] = time.perf_counter() - started
    test = json.loads((root / "metrics" / "test.json").read_text())
    cv = json.loads((root / "metrics" / "cv.json").read_text())
    same = (
        abs(test["roc_auc"] - plain["results"]["evaluate"]["roc_auc"]) < 1e-9
        and abs(cv["roc_auc_mean"] - plain["results"]["train"]["cv_roc_auc_mean"]) < 1e-9
    )
    log(
        f"{label}: plain {sum(plain['stages'].values()):.1f} s "
        f"(+ imports {plain['import']:.1f} s); same metrics as the pipeline: {same}"
    )
    return {
        "label": label,
        "rows": rows,
        "source": source,
        "repro": full.wall,
        "dvc_startup": startup,
        "spans": spans,
        "noop": statistics.median(noops),
        "noops": noops,
        "plain": plain,
        "same_metrics": same,
        "test_roc_auc": test["roc_auc"],
        "customers": sum(plain["results"]["prepare"].values()),
        "root": str(root),
    }


def measure_components(root: Path, workdir: Path, env: dict[str, str]) -> dict:
    """Where a notebook stage's overhead goes, each part measured on its own."""
    from churnlab.runner import load_stage, notebook_stages

    python = sys.executable
    log("components: interpreter start, imports, kernel start, HTML export, DVC start-up")
    parts: dict[str, Any] = {
        "python_start": wall_seconds([python, "-c", "pass"], root, env, REPEATS),
        "cli_imports": import_seconds(
            python, ["churnlab.runner", "papermill", "jupytext"], root, env, REPEATS
        ),
        "dvc_version": wall_seconds(["dvc", "--version"], root, env, REPEATS),
        "dvc_status": wall_seconds(["dvc", "status"], root, env, REPEATS),
        "pandas_sklearn_import": import_seconds(python, ["pandas", "sklearn"], root, env, REPEATS),
        "jsonschema_import": import_seconds(python, ["jsonschema"], root, env, REPEATS),
    }
    parts["kernel_imports"] = {}
    parts["kernel_import_modules"] = {}
    for name in notebook_stages(root):
        modules = notebook_imports(root / load_stage(root, name).notebook)
        parts["kernel_import_modules"][name] = modules
        parts["kernel_imports"][name] = import_seconds(python, modules, root, env, REPEATS)
    parts.update(run_worker("kernel", root, workdir / "kernel", env))
    parts["html"] = run_worker("html", root, workdir / "html", env)
    return parts


# --------------------------------------------------------------------------- reporting


def machine() -> dict[str, str]:
    """CPU, cores, RAM, Python, OS, package versions, the project's commit and the date."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if total:
            ram = f"{int(total.group(1)) / 2**20:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=PROJECT, capture_output=True, text=True
    ).stdout.strip()
    versions = []
    for name in VERSIONS:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "RAM": ram,
        "Python": f"{platform.python_version()} ({sys.executable})",
        "OS": platform.platform(),
        "packages": ", ".join(versions),
        "project commit": commit + (" + uncommitted changes" if dirty else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def size_table(result: dict) -> list[str]:
    """Per stage: repro span, plain time and the difference (the overhead)."""
    plain = result["plain"]["stages"]
    lines = [
        "| stage | dvc repro (s) | plain (s) | overhead (s) | repro / plain |",
        "|---|---:|---:|---:|---:|",
        f"| dvc start-up | {_s(result['dvc_startup'])} | – | {_s(result['dvc_startup'])} | – |",
    ]
    for name, span in result["spans"].items():
        cost = plain[name]
        lines.append(
            f"| {name} | {_s(span['span'])} | {_s(cost)} | {_s(span['span'] - cost)} "
            f"| {span['span'] / cost:.1f} |"
        )
    total_plain = sum(plain.values())
    with_imports = total_plain + result["plain"]["import"]
    lines += [
        f"| imports (once, plain only) | – | {_s(result['plain']['import'])} | – | – |",
        f"| **total** | **{_s(result['repro'])}** | **{_s(with_imports)}** | "
        f"**{_s(result['repro'] - with_imports)}** | **{result['repro'] / with_imports:.2f}** |",
    ]
    return lines


def breakdown_table(result: dict, parts: dict) -> list[str]:
    """Each notebook stage's overhead split into measured parts."""
    html = parts["html"]
    lines = [
        "| stage | overhead | CLI start-up | kernel start | kernel imports | "
        "HTML export | DVC after the stage | rest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, span in result["spans"].items():
        if "cli" not in span:
            continue
        overhead = span["span"] - result["plain"]["stages"][name]
        export = html["nbconvert_import"] + html["first_setup"] + html["export"][name]
        known = (
            span["cli"]
            + parts["empty_notebook"]
            + parts["kernel_imports"][name]
            + export
            + span["after"]
        )
        lines.append(
            f"| {name} | {_s(overhead)} | {_s(span['cli'])} | "
            f"{_s(parts['empty_notebook'])} | {_s(parts['kernel_imports'][name])} | "
            f"{_s(export)} | {_s(span['after'])} | {_s(overhead - known)} |"
        )
    return lines


def overheads(result: dict) -> dict[str, float]:
    """Overhead per notebook stage: repro span minus plain time."""
    return {
        name: span["span"] - result["plain"]["stages"][name]
        for name, span in result["spans"].items()
        if "cli" in span
    }


def ratio(result: dict) -> float:
    """Full repro time over the plain computation (with its one-off imports)."""
    plain = result["plain"]
    return result["repro"] / (sum(plain["stages"].values()) + plain["import"])


def targets(results: list[dict]) -> list[str]:
    """One line per target: the figure, and met or missed."""
    default = results[0]
    worst = max(max(overheads(r).values()) for r in results)
    lines = [
        f"- no-op `dvc repro` ≤ {TARGET_NOOP_S:g} s: "
        + ", ".join(f"{r['label']} {r['noop']:.2f} s" for r in results)
        + f" — **{'met' if default['noop'] <= TARGET_NOOP_S else 'missed'}**",
        f"- overhead ≤ {TARGET_OVERHEAD_S:g} s per notebook stage: worst "
        f"{worst:.2f} s — **{'met' if worst <= TARGET_OVERHEAD_S else 'missed'}**",
    ]
    big = [r for r in results if r["rows"] == TARGET_RATIO_ROWS]
    if big:
        value = ratio(big[0])
        lines.append(
            f"- repro / plain ≤ {TARGET_RATIO:g} at {TARGET_RATIO_ROWS:,} customers: "
            f"{value:.2f} — **{'met' if value <= TARGET_RATIO else 'missed'}**"
        )
    else:
        lines.append(
            f"- repro / plain ≤ {TARGET_RATIO:g} at {TARGET_RATIO_ROWS:,} customers: "
            "not measured in this run"
        )
    return lines


def where_time_goes(results: list[dict], parts: dict) -> list[str]:
    """The measured explanation of the overhead, in sentences with numbers."""
    default = results[0]
    html = parts["html"]
    spans = [s for s in default["spans"].values() if "cli" in s]
    cli = statistics.mean(s["cli"] for s in spans)
    after = statistics.mean(s["after"] for s in spans)
    imports = parts["kernel_imports"]
    lines = [
        f"- **No-op repro ({default['noop']:.2f} s)**: starting the `dvc` CLI alone "
        f"(`dvc --version`) takes {parts['dvc_version']:.2f} s and `dvc status` (the same "
        f"dependency and params checks, nothing run) {parts['dvc_status']:.2f} s, so the "
        "no-op time is DVC's own start-up and checking, not churnlab code.",
        f"- **CLI start-up ({cli:.2f} s per stage on average)**: from DVC's `Running stage` to "
        f"the runner's first line. A fresh interpreter starts in {parts['python_start']:.2f} s; "
        f"importing `churnlab.runner`, `papermill` and `jupytext` takes "
        f"{parts['cli_imports']:.2f} s (papermill imports nbformat → jsonschema, and "
        f"`import jsonschema` alone takes {parts['jsonschema_import']:.2f} s).",
        f"- **Kernel start-up ({parts['empty_notebook']:.2f} s)**: an empty notebook run "
        f"through papermill on the `churnlab` kernel, papermill already imported.",
        "- **Imports inside the kernel** (each notebook's import statements, fresh "
        "interpreter): "
        + ", ".join(f"{n} {v:.2f} s" for n, v in imports.items())
        + f"; `import pandas, sklearn` alone takes {parts['pandas_sklearn_import']:.2f} s. "
        "The plain run pays this once "
        f"({default['plain']['import']:.2f} s), the pipeline once per notebook stage.",
        f"- **HTML export**: importing nbconvert after papermill {html['nbconvert_import']:.2f} s, "
        f"setting up the exporter (first export in a process) {html['first_setup']:.2f} s, "
        "exporting: " + ", ".join(f"{n} {v:.2f} s" for n, v in html["export"].items()) + ".",
        f"- **DVC after each stage ({after:.2f} s on average on the default data)**: the "
        "runner process exiting, then DVC hashing the outputs, copying them into its cache "
        "and writing `dvc.lock`. By data size: "
        + "; ".join(
            f"{r['label']} "
            + ", ".join(f"{n} {s['after']:.2f} s" for n, s in r["spans"].items() if "after" in s)
            for r in results
        )
        + ".",
        "- **rest**: what the parts measured on their own do not explain (displaying tables "
        "and figures in the notebook, papermill saving the notebook after every cell, "
        "scrubbing and writing the executed notebook, lazy imports such as skops); it can "
        "be negative because parts measured on their own do not add up exactly.",
    ]
    return lines


def report(results: list[dict], parts: dict, info: dict[str, str], argv: list[str]) -> str:
    """The whole report as Markdown."""
    out = [
        "# Benchmark: `dvc repro` against the plain computation",
        "",
        f"Made by `{' '.join(['python', 'bench/run.py', *argv])}`.",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {key}: {value}" for key, value in info.items()]
    out += [
        "",
        "## Targets",
        "",
        *targets(results),
        "",
        "## Summary",
        "",
        "| data | customers | full repro (s) | plain (s) | plain incl. imports (s) | "
        "repro / plain | no-op repro (s) | same metrics |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        plain = sum(r["plain"]["stages"].values())
        out.append(
            f"| {r['label']} | {r['customers']:,} | {r['repro']:.1f} | {plain:.1f} | "
            f"{plain + r['plain']['import']:.1f} | {ratio(r):.2f} | {r['noop']:.2f} | "
            f"{'yes' if r['same_metrics'] else 'NO'} |"
        )
    for r in results:
        out += [
            "",
            f"## {r['label']}: per stage",
            "",
            f"Data: {r['source']}; test ROC AUC {r['test_roc_auc']:.4f}; no-op repro runs "
            + ", ".join(f"{v:.2f}" for v in r["noops"])
            + " s.",
            "",
            *size_table(r),
            "",
            "Overhead of each notebook stage, split into measured parts (seconds):",
            "",
            *breakdown_table(r, parts),
        ]
    out += [
        "",
        "## Where the time goes",
        "",
        *where_time_goes(results, parts),
        "",
        "## Method",
        "",
        "- Each data set runs in a fresh temporary copy of the project (git-tracked and "
        "untracked-but-not-ignored files, then `git init` and a commit); the project's "
        "own workspace is not touched. The package itself is the one installed in the "
        "venv (editable: the working tree's `src/`).",
        "- Stage times of `dvc repro` come from timestamping its output lines: a stage "
        "runs from DVC's `Running stage` line to the next one, so start-up and stages "
        "add up to the wall time. *CLI start-up* ends at the runner's `[stage] running` "
        "line, *DVC after the stage* starts at its `[stage] done` line.",
        "- *plain* runs the churnlab calls each notebook makes (including its figures, "
        "drawn to PNG as the inline backend does) in one fresh process; its imports are "
        "timed once and shown apart. *overhead* = repro span − plain time of the stage. "
        "*repro / plain* = full repro ÷ (plain stages + imports).",
        "- Synthetic customers: `churnlab.synth.generate_customers` (rows of the real "
        "table drawn with replacement, stratified on the target, numeric columns "
        "jittered within the schema ranges, fresh ids), written as CSV into the copy, "
        "with `data.source` pointing at it and `data.sha256: null`.",
        f"- Medians of {REPEATS} runs: no-op repro, interpreter start, import times, "
        "empty-notebook kernel runs, `dvc --version`, `dvc status`.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        metavar="N",
        help="synthetic customer counts (default: 100000 1000000)",
    )
    parser.add_argument("--quick", action="store_true", help="default data only")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic customers"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "RESULTS.md",
        help="where the report goes (default bench/RESULTS.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--worker", choices=["plain", "kernel", "html"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        worker = {
            "plain": lambda: plain_pipeline(args.root, args.out),
            "kernel": lambda: kernel_startup(args.out),
            "html": lambda: html_export(args.root),
        }[args.worker]
        print(json.dumps(worker()))
        return 0
    env = bench_env(Path(sys.executable).parent)
    sizes = [] if args.quick else args.sizes
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="churnlab-bench-"))
    log(f"working in {workdir}; data: default" + "".join(f", {n:,}" for n in sizes))
    try:
        results = [measure_data("default", None, None, args.seed, workdir, env)]
        parts = measure_components(Path(results[0]["root"]), workdir, env)
        from churnlab.data import read_table

        template = read_table(Path(results[0]["root"]) / "data" / "raw" / "churn.csv")
        for rows in sizes:
            label = f"{rows // 1000}k" if rows < 1_000_000 else f"{rows / 1e6:g}M"
            results.append(measure_data(label, rows, template, args.seed, workdir, env))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(results, parts, machine(), argv)
    args.output.write_text(text)
    print(text)
    log(f"wrote {args.output} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
