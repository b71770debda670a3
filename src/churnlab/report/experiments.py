"""DVC experiments side by side: changed params, headline metrics, the change from the baseline.

The rows come from DVC's public Python API (``dvc.api.exp_show``), not from its terminal
table. ``churnlab exps`` prints the comparison to fit 120 columns and writes
``reports/experiments.html``, a self-contained page like the report's. It is not a pipeline
stage: experiments are not pipeline inputs, and the page must not change ``dvc.lock``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnlab.config import flatten, get_key, load_params
from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic
from churnlab.report.pages import page_environment
from churnlab.secrets import MASK, is_secret_name, redact, secret_values
from churnlab.tracking.settings import PROMOTION_METRICS, load_settings

# The numbers a person decides on, as named in the evaluate stage's metrics file.
HEADLINE_METRICS = {
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
    "recall": "recall",
    "precision": "precision",
    "cost.model": "expected cost",
}
# The promotion metrics' directions are tracking's; a cost is better lower too.
LOWER_IS_BETTER = {m for m, higher in PROMOTION_METRICS.items() if not higher} | {"cost.model"}
PAGE_NAME = "experiments.html"
WIDTH = 120
_NAME_WIDTH = 24
_CELL_WIDTH = 19
# exp_show's columns that describe the row, not its params or metrics.
_ROW_COLUMNS = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


@dataclass(frozen=True)
class Row:
    """One commit or experiment: its params (as text) and metrics (numbers or None)."""

    name: str
    rev: str
    state: str
    params: Mapping[str, str]
    metrics: Mapping[str, float | None]


@dataclass(frozen=True)
class Change:
    """One experiment against its baseline."""

    row: Row
    deltas: Mapping[str, float | None]
    params: Mapping[str, tuple[str, str]]  # key -> (baseline value, experiment value)


@dataclass(frozen=True)
class Comparison:
    """A baseline commit and its experiments, best first by the promotion metric."""

    baseline: Row
    experiments: list[Change]
    metric: str
    metrics: list[str]
    changed_params: list[str] = field(default_factory=list)


def _value(row: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    """A column by its bare name, or by ``file:name`` when DVC had to qualify it."""
    if name in row:
        return row[name]
    found = [v for k, v in row.items() if k.endswith(f":{name}") and k.startswith(prefix)]
    return found[0] if len(found) == 1 else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _param_columns(row: Mapping[str, Any], param_keys: set[str]) -> dict[str, str]:
    """The row's params as ``{dotted key: text}``; ``param_keys`` tells params from the rest.

    A secret-named param's value is masked here, before any text is made: an experiment can
    set a secret the workspace's params (whose values are redacted from the output) do not hold.
    """
    params = {}
    for column, value in row.items():
        key = column.split(":", 1)[1] if column.startswith("params/") else column
        if column not in _ROW_COLUMNS and key in param_keys:
            params[key] = MASK if is_secret_name(key.rsplit(".", 1)[-1]) else _text(value)
    return params


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # exp_show turns every number into a float: 5 not 5.0
    return str(value)


def _row(raw: Mapping[str, Any], param_keys: set[str], metrics: Iterable[str]) -> Row:
    return Row(
        name=raw.get("Experiment") or str(raw.get("rev") or ""),
        rev=str(raw.get("rev") or ""),
        state=str(raw.get("State") or ""),
        params=_param_columns(raw, param_keys),
        metrics={m: _number(_value(raw, m, prefix="metrics")) for m in metrics},
    )


def _sort_key(change: Change, metric: str) -> tuple:
    value = change.row.metrics.get(metric)
    if value is None:
        return (1, 0.0, change.row.name)
    return (0, value if metric in LOWER_IS_BETTER else -value, change.row.name)


def compare(rows: list[Mapping[str, Any]], param_keys: set[str], metric: str) -> list[Comparison]:
    """Group ``dvc.api.exp_show`` rows by baseline commit and compare each experiment with it.

    Args:
        rows: ``dvc.api.exp_show`` output: a ``baseline`` row per commit, then its experiments.
        param_keys: every dotted param key (tells the params columns from metrics and deps).
        metric: the promotion metric; experiments are sorted on it, best first.

    Returns:
        One comparison per baseline commit that has experiments (the workspace row is left
        out: it is not a result anyone ran).
    """
    metrics = list(HEADLINE_METRICS) + ([metric] if metric not in HEADLINE_METRICS else [])
    groups: list[tuple[Row, list[Row]]] = []
    for raw in rows:
        if raw.get("typ") == "baseline":
            if raw.get("rev") == "workspace":
                groups.append((None, []))  # a workspace row's experiments are none
                continue
            groups.append((_row(raw, param_keys, metrics), []))
        elif groups and groups[-1][0] is not None:
            groups[-1][1].append(_row(raw, param_keys, metrics))
    comparisons = []
    for baseline, experiments in groups:
        if baseline is None or not experiments:
            continue
        shown = [baseline, *experiments]
        changed = sorted(
            key
            for key in set().union(*(r.params for r in shown))
            if len({r.params.get(key, "-") for r in shown}) > 1
        )
        changes = [
            Change(
                row=exp,
                deltas={
                    m: None
                    if exp.metrics[m] is None or baseline.metrics[m] is None
                    else exp.metrics[m] - baseline.metrics[m]
                    for m in metrics
                },
                params={
                    k: (baseline.params.get(k, "-"), exp.params.get(k, "-"))
                    for k in changed
                    if exp.params.get(k, "-") != baseline.params.get(k, "-")
                },
            )
            for exp in experiments
        ]
        changes.sort(key=lambda c: _sort_key(c, metric))
        comparisons.append(Comparison(baseline, changes, metric, metrics, changed))
    return comparisons


def format_metric(metric: str, value: float | None) -> str:
    """One metric as both the terminal and the page show it."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if metric.startswith("cost.") else f"{value:.4f}"


def format_delta(metric: str, delta: float | None) -> str:
    """A change from the baseline, signed, in the metric's own format."""
    if delta is None:
        return ""
    return f"{delta:+,.0f}" if metric.startswith("cost.") else f"{delta:+.4f}"


def delta_class(metric: str, delta: float | None) -> str:
    """``better``, ``worse`` or ``""`` for a change, by the metric's direction."""
    if not delta:
        return ""
    better = delta < 0 if metric in LOWER_IS_BETTER else delta > 0
    return "better" if better else "worse"


def metric_label(metric: str) -> str:
    return HEADLINE_METRICS.get(metric, metric)


def _sorted_by(comparison: Comparison) -> str:
    direction = "lower" if comparison.metric in LOWER_IS_BETTER else "higher"
    return (
        f"best {metric_label(comparison.metric)} first (tracking.promotion.metric; "
        f"{direction} is better)"
    )


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(metric: str, value: float | None, delta: float | None) -> str:
    shown = format_metric(metric, value)
    return f"{shown} ({format_delta(metric, delta)})" if delta is not None else shown


def format_table(comparisons: list[Comparison], width: int = WIDTH) -> str:
    """The comparisons as plain text, every line at most ``width`` characters.

    Each experiment is one line of metrics, each with its change from the baseline, then its
    changed params (``key: baseline -> experiment``) wrapped on the lines below.
    """
    if not comparisons:
        return (
            "No experiments of the current commit yet: run one with\n"
            "  dvc exp run -S 'params/train.yaml:train.cv_folds=3'"
        )
    blocks = []
    for comparison in comparisons:
        base = comparison.baseline
        cells = _NAME_WIDTH + _CELL_WIDTH * len(comparison.metrics)
        lines = [
            _fit(
                f"Experiments of {base.name}, {_sorted_by(comparison)}; (+/-) is the change "
                f"from {base.name}",
                width,
            ),
            "",
            "experiment".ljust(_NAME_WIDTH)
            + "".join(metric_label(m).ljust(_CELL_WIDTH) for m in comparison.metrics),
            "-" * min(cells, width),
            _fit(f"{base.name} (baseline)", _NAME_WIDTH - 1).ljust(_NAME_WIDTH)
            + "".join(
                format_metric(m, base.metrics[m]).ljust(_CELL_WIDTH) for m in comparison.metrics
            ),
        ]
        for change in comparison.experiments:
            row = change.row
            name = row.name + (f" [{row.state.lower()}]" if row.state else "")
            lines.append(
                _fit(name, _NAME_WIDTH - 1).ljust(_NAME_WIDTH)
                + "".join(
                    _cell(m, row.metrics[m], change.deltas[m]).ljust(_CELL_WIDTH)
                    for m in comparison.metrics
                )
            )
            described = "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in change.params.items())
            lines += textwrap.wrap(
                described or "no param changed",
                width=width,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        blocks.append("\n".join(line.rstrip() for line in lines))
    return "\n\n".join(blocks)


def render_page(comparisons: list[Comparison], title: str) -> str:
    """The comparisons as a self-contained HTML page (values escaped by Jinja2)."""
    env = page_environment()  # one Jinja2 setup (autoescape) for every page
    env.filters["metric"] = lambda v, m: format_metric(m, v)
    env.filters["delta"] = lambda v, m: format_delta(m, v)
    env.filters["delta_class"] = lambda v, m: delta_class(m, v)
    env.filters["label"] = metric_label
    return env.get_template(PAGE_NAME).render(
        comparisons=[(c, _sorted_by(c)) for c in comparisons], title=title
    )


# --- I/O: the edges ------------------------------------------------------------------------


def read_experiments(root: Path) -> list[dict[str, Any]]:
    """``dvc.api.exp_show`` on the project: the current commit and its experiments."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.exp_show(repo=str(root))
    except DvcException as exc:
        raise ChurnlabError(
            f"{root}: dvc exp show: {exc}; run `dvc exp show` there to see why"
        ) from None


def show_experiments(root: Path) -> tuple[str, Path]:
    """Compare the project's experiments; write the page; return the text and the page path.

    Secret values (by param or variable name, as everywhere in churnlab) are masked in both.
    """
    params = load_params(root)
    metric = load_settings(root).promotion_metric
    comparisons = compare(read_experiments(root), set(flatten(params)), metric)
    secrets = secret_values(params)
    title = get_key(params, "report.title", "params/report.yaml")
    page = (root / get_key(params, "paths.report_index", "params/paths.yaml")).parent / PAGE_NAME
    write_atomic(page, redact(render_page(comparisons, title), secrets).encode())
    return redact(format_table(comparisons), secrets), page
