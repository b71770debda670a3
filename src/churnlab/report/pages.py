"""The stakeholder pages: ``reports/index.html`` and ``reports/model_card.html``.

The pages are for people who decide on retention offers and never read code. Everything on
them is computed from the pipeline's outputs (test scores, metrics, params): headline numbers
in business terms, bootstrap confidence intervals, performance by segment and the comparison
with the baseline. The pages are self-contained: styles inline, figures embedded as PNG, no
script, no font or image from anywhere else, every value HTML-escaped.

:func:`build_context` reads the project's files and :func:`build_reports` writes the pages;
the numbers come from the pure functions of the sibling modules.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from churnlab.config import get_key, load_params
from churnlab.data import ID_COLUMN, TARGET_COLUMN
from churnlab.errors import ChurnlabError
from churnlab.evaluation import plot_tables
from churnlab.files import write_atomic_all
from churnlab.pipeline.pages import CONTENT_SECURITY_POLICY
from churnlab.pipeline.stages import load_stage, notebook_stages
from churnlab.report.baseline import (
    METRIC_LABELS,
    compare_with_baseline,
    data_record,
    load_baseline,
    model_record,
    read_json,
)
from churnlab.report.bootstrap import REPORT_PARAMS, bootstrap_intervals
from churnlab.report.figures import figures
from churnlab.report.segments import (
    segment_gaps,
    segment_performance,
    sensitive_columns,
    sensitive_inputs,
)
from churnlab.secrets import redact, secret_values


def business_summary(metrics: Mapping[str, Any], evaluate: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers in business terms, from the test metrics and the cost params."""
    confusion = metrics["confusion"]
    customers = metrics["rows"]
    flagged = confusion["tp"] + confusion["fp"]
    saving = metrics["cost"]["saving"]
    return {
        "top_fraction": float(evaluate["top_fraction"]),
        "top_precision": float(metrics["top_precision"]),
        "top_capture_rate": float(metrics["top_capture_rate"]),
        "top_lift": float(metrics["top_lift"]),
        "threshold": float(metrics["threshold"]),
        "threshold_rule": str(evaluate["threshold_rule"]),
        "customers": int(customers),
        "flagged": int(flagged),
        "flagged_share": flagged / customers,
        "caught": int(confusion["tp"]),
        "leavers": int(confusion["tp"] + confusion["fn"]),
        "recall": float(metrics["recall"]),
        "precision": float(metrics["precision"]),
        "cost_missed": float(evaluate["cost_missed_churner"]),
        "cost_offer": float(evaluate["cost_wasted_offer"]),
        "cost_model": float(metrics["cost"]["model"]),
        "cost_no_action": float(metrics["cost"]["no_action"]),
        "saving": float(saving),
        "saving_per_1000": float(saving) / customers * 1000,
    }


def page_environment() -> jinja2.Environment:
    """The one Jinja2 setup of the report's pages and the experiments page (autoescape,
    number filters, the content security policy)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("churnlab.report", "templates"),
        autoescape=True,  # every value is text: a payload in the data shows, never runs
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # one policy for these pages and the notebook pages; Markup: its quotes stay as written
    env.globals["content_security_policy"] = Markup(CONTENT_SECURITY_POLICY)
    env.filters["pct"] = lambda v, digits=0: (
        "n/a" if v is None or v != v else (f"{v * 100:.{digits}f}%")
    )
    env.filters["num"] = lambda v, digits=3: "n/a" if v is None or v != v else f"{v:.{digits}f}"
    env.filters["money"] = lambda v, currency: f"{currency}{v:,.0f}"  # report.currency
    env.filters["signed"] = lambda v, digits=3: f"{v:+.{digits}f}"
    env.filters["count"] = lambda v: f"{int(v):,}"
    return env


def render_pages(context: Mapping[str, Any]) -> dict[str, str]:
    """``{"index.html": page, "model_card.html": page}`` from the report context."""
    env = page_environment()
    return {
        name: env.get_template(name).render(**context) for name in ("index.html", "model_card.html")
    }


def _notebook_title(executed: Path) -> str:
    """An executed notebook's title: the first line of its first markdown cell."""
    content = read_json(executed)
    for cell in content.get("cells", []):
        if cell.get("cell_type") == "markdown":
            first = "".join(cell.get("source", "")).strip().splitlines()
            if first:
                return first[0].lstrip("# ").strip()
    return executed.stem


def build_context(root: Path) -> dict[str, Any]:
    """Read the pipeline's outputs and params and compute everything the pages show."""
    params = load_params(root)
    report = get_key(params, "report", REPORT_PARAMS)
    evaluate = get_key(params, "evaluate", "params/evaluate.yaml")
    paths = get_key(params, "paths", "params/paths.yaml")
    metrics = read_json(root / paths["test_metrics"])
    cv = read_json(root / paths["cv_metrics"])
    prepared = read_json(root / paths["prepare_summary"])
    features = read_json(root / paths["features"])
    scores_path = root / paths["test_scores"]
    if not scores_path.is_file():
        raise ChurnlabError(f"{paths['test_scores']}: not found; run `dvc repro evaluate`")
    scored = pd.read_parquet(scores_path)
    test = pd.read_parquet(root / paths["test"])
    table = scored[[ID_COLUMN]].merge(test, on=ID_COLUMN, how="left", validate="one_to_one")
    if table[TARGET_COLUMN].isna().any() or len(table) != len(scored):
        raise ChurnlabError(
            f"{paths['test_scores']}: its customers are not those of {paths['test']}; "
            "run `dvc repro`"
        )
    labels = scored[TARGET_COLUMN].to_numpy().astype(int)
    scores = scored["score"].to_numpy(dtype=float)
    threshold = float(metrics["threshold"])
    top_fraction = float(evaluate["top_fraction"])

    intervals = bootstrap_intervals(
        labels,
        scores,
        threshold,
        top_fraction,
        int(report["bootstrap_samples"]),
        int(report["seed"]),
        float(report["confidence"]),
    )
    performance = segment_performance(
        table,
        labels,
        scores,
        threshold,
        report.get("segments") or [],
        int(report["min_segment_size"]),
    )
    notebooks = []
    for name in notebook_stages(root):
        stage = load_stage(root, name)
        html = Path(stage.html_path)
        notebooks.append(
            {
                "stage": name,
                "title": _notebook_title(root / stage.executed_path),
                "href": html.relative_to(Path(paths["report_index"]).parent).as_posix(),
            }
        )
    tables = plot_tables(labels, scores, threshold)
    calibration = tables["calibration"]
    return {
        "report": report,
        "business": business_summary(metrics, evaluate),
        "metrics": metrics,
        "cv": cv,
        "intervals": intervals,
        "metric_labels": METRIC_LABELS,
        "segments": performance.to_dict("records"),
        "gaps": segment_gaps(performance),
        "sensitive": sensitive_inputs(
            sensitive_columns(report, list(test.columns)),
            [*features["numeric"], *features["categorical"]],
            report.get("segments") or [],
        ),
        "calibration_gap": float((calibration["observed"] - calibration["predicted"]).abs().max()),
        "comparison": compare_with_baseline(
            model_record(params, metrics, cv), load_baseline(root, params)
        ),
        "baseline_file": paths["baseline"],
        "data": {
            **data_record(params),
            "rows": int(sum(prepared["rows"].values())),
            "train_rows": int(prepared["rows"]["train"]),
            "test_rows": int(prepared["rows"]["test"]),
            "churn_rate_train": float(prepared["churn_rate"]["train"]),
            "churn_rate_test": float(prepared["churn_rate"]["test"]),
            "numeric": list(features["numeric"]),
            "categorical": list(features["categorical"]),
        },
        "model": {
            "family": str(get_key(params, "train.family", "params/train.yaml")),
            "calibration": str(get_key(params, "train.calibration", "params/train.yaml")),
            "cv_folds": int(cv["folds"]),
        },
        "notebooks": notebooks,
        "figures": figures(labels, scores, threshold, top_fraction, performance, tables),
    }


def build_reports(root: Path) -> list[Path]:
    """Compute the report and write its pages; nothing is written unless all pages render."""
    params = load_params(root)
    index = root / get_key(params, "paths.report_index", "params/paths.yaml")
    card = root / get_key(params, "paths.model_card", "params/paths.yaml")
    print("[report] computing bootstrap intervals, segments and figures", file=sys.stderr)
    pages = render_pages(build_context(root))
    secrets = secret_values(params)
    # both pages or neither: a full disk must not leave a new index beside an old card
    write_atomic_all(
        {
            path: redact(pages[name], secrets).encode()
            for path, name in ((index, "index.html"), (card, "model_card.html"))
        }
    )
    return [index, card]
