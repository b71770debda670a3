"""What every param may be: one declaration, checked before any stage runs.

``rules()`` holds, per params section, the type and range (or choices) of each key, written
once. ``check_params`` checks every ``params/*.yaml`` against it, and the few rules that
join two params (a segment must be a categorical column of the schema, the register stage a
stage of ``dvc.yaml``), so that a wrong value stops the pipeline with the file, the key,
what was expected and what was found, instead of reaching a notebook as a raw Python error.

A section no rule declares belongs to a stage the user added; its notebook checks it.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from churnlab.errors import ChurnlabError
from churnlab.param_types import (
    FRACTION,
    SEED,
    SHARE,
    Anything,
    EnvironmentName,
    Flag,
    Integer,
    ListOf,
    Nullable,
    Number,
    OpenMapping,
    Problem,
    Rule,
    Scalar,
    Section,
    Text,
    is_number,
)
from churnlab.tracking.settings import PROMOTION_METRICS
from churnlab.tracking.settings import SETTINGS_FILE as TRACKING_FILE

# the kinds of simulated month (churnlab.monitoring.simulate; docs/monitoring.md)
SCENARIO_KINDS = (
    "category_mix",
    "numeric_shift",
    "concept_drift",
    "missing_column",
    "blank_column",
    "new_category",
)
# what `churnlab cycle` tells people about, and the webhook formats (churnlab.cycle.notify)
NOTIFY_EVENTS = ("drift_alert", "quality_failure", "retrain", "promotion", "kept_champion")
NOTIFY_FORMATS = ("slack", "teams")
# where heavy work runs (churnlab.compute.cluster; params/compute.yaml)
ENGINES = ("local", "dask")
MONTH = Text(hint='a month as YYYY-MM, quoted: "2026-01"')

# Each fold fits the model once more and more folds barely sharpen the estimate (2,000
# folds once ran for 812 s); 20 folds already hold out 5% each.
MAX_CV_FOLDS = 20


# Sections read by churnlab commands, not by DVC stages. The check for keys no stage reads
# passes over them (a stage must not re-run when they change); their rules below refuse an
# unknown key instead, so a typo in them is still caught. A new command's section goes here.
COMMAND_SECTIONS: dict[str, str] = {
    "monitor": "churnlab monitor and churnlab simulate",
    "compute": "churnlab monitor, simulate and score (the train stage declares what it reads)",
    "score": "churnlab score",
    "serve": "churnlab serve",
    "cycle": "churnlab cycle and churnlab history",
    "notify": "churnlab cycle (its messages) and churnlab schedule",
    "replay": "churnlab replay (make replay)",
}


def rules() -> dict[str, Rule]:
    """The declaration: per params section, what each key may be.

    Choices that code elsewhere defines (estimator families, threshold rules, gates,
    promotion metrics) are taken from there, so that each is written once.
    """
    from churnlab.evaluation import GATES, THRESHOLD_RULES
    from churnlab.model import CALIBRATIONS, FAMILIES

    text_list = ListOf(Text())
    gate_range = {name: SHARE for name in GATES}
    gate_range.update(min_top_lift=Number(0), min_brier_skill=Number(high=1))
    # simulated months and their drift scenarios (monitor.simulate, replay.simulate)
    simulated_months = Section(
        {
            "seed": SEED,
            "start": MONTH,
            "months": Integer(1, 600),
            "customers": Integer(1, 10_000_000),
            "format": Text(("parquet", "csv")),
            "scenarios": ListOf(
                Section(
                    {
                        "kind": Text(SCENARIO_KINDS),
                        "start": MONTH,
                        "months": Nullable(Integer(1)),
                        "column": Text(),
                        "category": Scalar(),
                        "size": Number(),
                        "by": Text(),
                    },
                    optional=frozenset({"months", "category", "size", "by"}),
                )
            ),
        }
    )
    return {
        "data": Section(
            {
                "source": Text(hint="the built-in data set's name or a .csv or .parquet file"),
                "sha256": Nullable(Text()),
            }
        ),
        "schema": Section(
            {
                "id_column": Text(),
                "target": Text(),
                "positive_label": Scalar(),
                "negative_label": Scalar(),
                "numeric": OpenMapping(
                    Section(
                        {
                            "min": Nullable(Number()),
                            "max": Nullable(Number()),
                            "nullable": Flag(),
                        },
                        optional=frozenset({"min", "max", "nullable"}),
                    )
                ),
                "categorical": OpenMapping(Nullable(ListOf(Scalar(), min_items=1))),
            },
            optional=frozenset({"numeric", "categorical"}),
        ),
        "prepare": Section(
            {
                "seed": SEED,
                "test_size": FRACTION,
                "fill_missing": Nullable(OpenMapping(Number())),
                "sample_rows": Nullable(Integer(20, hint="null keeps every row")),
            }
        ),
        "explore": Section({"segments": Nullable(text_list), "bands": Integer(2, 50)}),
        "train": Section(
            {
                "seed": SEED,
                "cv_folds": Integer(
                    2,
                    MAX_CV_FOLDS,
                    hint="each fold fits the model once more: more than 20 barely changes "
                    "the estimate and multiplies the run time",
                ),
                "family": Text(tuple(FAMILIES)),
                "calibration": Text(CALIBRATIONS),
                # other hyper-parameters: the estimator's own names, checked by build_model
                "logistic_regression": OpenMapping(
                    Anything(), C=Number(0, low_open=True), max_iter=Integer(1, 100_000)
                ),
                "gradient_boosting": OpenMapping(
                    Anything(),
                    learning_rate=Number(0, 1, low_open=True),
                    max_iter=Integer(1, 10_000),
                    max_leaf_nodes=Nullable(Integer(2)),
                    min_samples_leaf=Integer(1),
                    l2_regularization=Number(0),
                ),
                "search": Section(
                    {
                        "enabled": Flag(),
                        "method": Text(("grid", "random")),
                        "candidates": Integer(1, 10_000),
                        "seed": SEED,
                        # values per hyper-parameter: build_model checks the names
                        "space": OpenMapping(ListOf(Anything(), min_items=1)),
                    }
                ),
            },
            optional=frozenset({"logistic_regression", "gradient_boosting", "search"}),
        ),
        "evaluate": Section(
            {
                "threshold_rule": Text(THRESHOLD_RULES),
                "cost_missed_churner": Number(0),
                "cost_wasted_offer": Number(0),
                "top_fraction": Number(0, 1, low_open=True, hint="a share of the customers"),
                "importance_repeats": Integer(1, 100),
                "importance_max_rows": Integer(10),
                "seed": SEED,
                "gates": Section(gate_range, optional=frozenset(gate_range)),
            }
        ),
        "report": Section(
            {
                "title": Text(),
                "purpose": Text(),
                "currency": Text(),
                "sensitive_columns": ListOf(Text()),
                "bootstrap_samples": Integer(10, 100_000),
                "confidence": FRACTION,
                "seed": SEED,
                "min_segment_size": Integer(1),
                "segments": ListOf(
                    Section(
                        {
                            "column": Text(),
                            "label": Text(),
                            "bins": ListOf(Number(), min_items=1),
                            "names": OpenMapping(Text()),
                        },
                        optional=frozenset({"label", "bins", "names"}),
                    )
                ),
                "model_card": Section(
                    {
                        "intended_use": Text(),
                        "out_of_scope": text_list,
                        "limitations": text_list,
                        "ethical_considerations": text_list,
                    }
                ),
            }
        ),
        "tracking": Section(
            {
                "enabled": Flag(),
                "uri": Nullable(Text()),
                "experiment": Text(),
                "registered_model": Text(),
                "on_unreachable": Text(("stop", "continue")),
                "register_stage": Text(hint="the name of a stage in dvc.yaml"),
                "promotion": Section(
                    {
                        "metric": Text(tuple(PROMOTION_METRICS)),
                        "margin": Number(0, 1),
                        "min_customers": Integer(1),
                    }
                ),
            }
        ),
        # where stages read and write: dvc.yaml interpolates them
        "paths": OpenMapping(Text()),
        "compute": Section(
            {
                "engine": Text(ENGINES),
                "scheduler": Nullable(
                    Text(hint="a scheduler address (tcp://host:8786), or null for a local one")
                ),
                "workers": Integer(1, 1024),
                "memory_per_worker": Text(hint="a size as Dask writes it: 4GiB, 512MiB"),
                "partition_rows": Integer(1000, 100_000_000),
            }
        ),
        "score": Section(
            {
                "max_reject_fraction": SHARE,
                "rejects": Text(hint="a file name with {stem} and {suffix}: the output's"),
                "chunk_rows": Integer(1000, hint="smaller chunks only print more progress"),
            }
        ),
        "monitor": Section(
            {
                "batches": Text(hint="a folder of the project"),
                "labels": Text(hint="a folder of the project"),
                "verdicts": Text(hint="a folder of the project"),
                "reference_month": MONTH,
                "chunks": Integer(20, 100_000, hint="fewer draws make the thresholds noisy"),
                "threshold_quantile": Number(0.5, 1, high_open=True),
                "alert_importance": SHARE,
                "confidence": FRACTION,
                "importance_repeats": Integer(1, 100),
                "importance_max_rows": Integer(10),
                "seed": SEED,
                "simulate": simulated_months,
            }
        ),
        "serve": Section(
            {
                "host": Text(hint="an address of this machine: 127.0.0.1 keeps it local"),
                "port": Integer(1, 65_535),
                "model": Text(hint='"champion" (the registry alias) or a .skops model file'),
                "threshold": Nullable(
                    Number(0, 1, hint="null: the threshold in the test metrics file")
                ),
                "max_customers": Integer(1, 1_000_000),
                "max_body_bytes": Integer(1_024, 1_073_741_824),
                "reload_poll_seconds": Number(0.1, 86_400),
            }
        ),
        "cycle": Section(
            {
                "log": Text(hint="a file of the project"),
                "window": Integer(1, 120),
                "recent_half_life": Nullable(Number(0, low_open=True)),
                "retrain": Section(
                    {
                        "realised_margin": SHARE,
                        "estimated_margin": SHARE,
                        "drifted_features": Integer(1),
                        "max_age_days": Integer(1),
                    }
                ),
                "promote": Section(
                    {
                        "holdout": FRACTION,
                        "better_by": Number(-1, 1),
                        "test_margin": SHARE,
                        "bootstrap_samples": Integer(50, 100_000),
                        "confidence": FRACTION,
                        "seed": SEED,
                    }
                ),
            }
        ),
        "notify": Section(
            {
                "url_variable": EnvironmentName(),
                "format": Text(NOTIFY_FORMATS),
                "timeout": Number(0, 120, low_open=True),
                "attempts": Integer(1, 10),
                "backoff": Number(0, 60),
                "report_url": Nullable(Text(hint="an http(s) address where reports/ is served")),
                "events": ListOf(Text(NOTIFY_EVENTS)),
            }
        ),
        "replay": Section(
            {
                "simulate": simulated_months,
                "draw_from": Text(("unseen", "all")),
                "unseen_share": FRACTION,
                "label_lag": Integer(0, 12),
                "acceptance": Section(
                    {
                        "within_months": Integer(0, 12),
                        "unneeded_retrains": Integer(0),
                        "roc_auc_tolerance": SHARE,
                        "max_minutes": Number(0, low_open=True),
                    }
                ),
            }
        ),
    }


def check_section(file_name: str, section: str, value: Any) -> None:
    """Check one section against its rule.

    Raises:
        ChurnlabError: the first problem, naming the file and the key.
    """
    problems = list(rules()[section].problems(value, section))
    if problems:
        raise ChurnlabError(_one_line(problems[0].line(file_name), len(problems) - 1))


def _one_line(first: str, more: int) -> str:
    return first + (f" [and {more} more problem(s) after this one]" if more else "")


def _join_problems(params: Mapping[str, Any], stage_names: list[str]) -> Iterator[Problem]:
    """Rules between two params (or a param and ``dvc.yaml``)."""
    schema = params.get("schema") if isinstance(params.get("schema"), dict) else {}
    numeric = schema.get("numeric") or {}
    categorical = schema.get("categorical") or {}
    for name, rule in numeric.items() if isinstance(numeric, dict) else ():
        low, high = (rule or {}).get("min"), (rule or {}).get("max")
        if is_number(low) and is_number(high) and low > high:
            yield Problem(f"schema.numeric.{name}", f"min <= max, min {low:g}", f"max {high:g}")
    explore = params.get("explore")
    if schema and isinstance(explore, dict) and isinstance(explore.get("segments"), list):
        names = [str(c) for c in categorical]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") or "none"
        for index, column in enumerate(explore["segments"]):
            if column not in categorical:
                hint = (
                    "a numeric column: numeric columns are shown in bands (explore.bands)"
                    if column in numeric
                    else "not a column of the schema"
                )
                yield Problem(
                    f"explore.segments[{index}]",
                    f"a column of params/data.yaml schema.categorical ({shown})",
                    column,
                    hint,
                )
    prepare = params.get("prepare")
    if schema and isinstance(prepare, dict) and isinstance(prepare.get("fill_missing"), dict):
        for column in prepare["fill_missing"]:
            if column not in numeric:
                yield Problem(
                    f"prepare.fill_missing.{column}",
                    "a numeric column of params/data.yaml schema.numeric",
                    column,
                )
    report = params.get("report")
    if schema and isinstance(report, dict):
        columns = [*numeric, *categorical]
        shown = ", ".join(map(str, columns[:6])) + (", ..." if len(columns) > 6 else "")
        named = [
            (f"report.sensitive_columns[{i}]", c)
            for i, c in enumerate(report.get("sensitive_columns") or [])
        ]
        named += [
            (f"report.segments[{i}].column", s.get("column"))
            for i, s in enumerate(report.get("segments") or [])
            if isinstance(s, dict)
        ]
        for key, column in named:
            if column not in columns:
                yield Problem(
                    key,
                    f"a column of params/data.yaml schema ({shown or 'none'})",
                    column,
                    "point the report at your own columns, or [] for none",
                )
    yield from _monitor_problems(params.get("monitor"))
    replay = params.get("replay")
    yield from _monitor_problems(replay, "replay") if isinstance(replay, dict) else ()
    tracking = params.get("tracking")
    if isinstance(tracking, dict) and stage_names:
        stage = tracking.get("register_stage")
        if isinstance(stage, str) and stage not in stage_names:
            yield Problem(
                "tracking.register_stage",
                f"a stage of dvc.yaml ({', '.join(stage_names)})",
                stage,
                "no model would ever be logged or registered",
            )


def _monitor_problems(monitor: Any, section: str = "monitor") -> Iterator[Problem]:
    """Months are written as YYYY-MM (in ``monitor`` and in ``replay``, whose simulated
    months have the same form). (The columns of the simulated scenarios are checked by
    `churnlab simulate` and `churnlab replay` themselves: a user's own schema must not stop
    the pipeline over them.)"""
    import re

    if not isinstance(monitor, dict):
        return
    simulate = monitor.get("simulate") if isinstance(monitor.get("simulate"), dict) else {}
    months = (
        []
        if section != "monitor"
        else [("monitor.reference_month", monitor.get("reference_month"))]
    )
    months.append((f"{section}.simulate.start", simulate.get("start")))
    scenarios = simulate.get("scenarios") if isinstance(simulate.get("scenarios"), list) else []
    for index, item in enumerate(scenarios):
        if isinstance(item, dict):
            months.append((f"{section}.simulate.scenarios[{index}].start", item.get("start")))
    for key, value in months:
        if isinstance(value, str) and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
            yield Problem(key, "a month as YYYY-MM", value)


def param_problems(
    files: Mapping[str, Mapping[str, Any]], stage_names: list[str]
) -> tuple[list[str], list[str]]:
    """Every problem with the params, as ``(errors, warnings)``, one line each.

    Args:
        files: ``{params file name: its content}``.
        stage_names: the stages of ``dvc.yaml``.
    """
    declared = rules()
    errors: list[str] = []
    origin: dict[str, str] = {}
    for file_name, content in files.items():
        for section, value in content.items():
            origin[section] = file_name
            if section in declared:
                errors += [p.line(file_name) for p in declared[section].problems(value, section)]
    params = {section: value for content in files.values() for section, value in content.items()}
    for problem in _join_problems(params, stage_names):
        section = problem.key.split(".")[0]
        errors.append(problem.line(origin.get(section, "params")))
    warnings = []
    if "tracking" not in params:
        warnings.append(
            f"{TRACKING_FILE}: not found: this run is not recorded in MLflow and no model is "
            f"registered or promoted; restore it (git checkout {TRACKING_FILE}), or keep it "
            f"with `enabled: false` to switch tracking off without this warning"
        )
    return errors, warnings


def _set_override(params: dict, key: str, value: Any) -> None:
    dotted = key.split(":", 1)[1] if ":" in key else key
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        if not isinstance(node.get(part), dict):
            return  # load_stage names an override that reaches nowhere
        node = node[part]
    if last in node:
        node[last] = value


def check_params(root: Path, overrides: Mapping[str, Any] | None = None) -> None:
    """Check every ``params/*.yaml`` (with ``overrides`` applied) before a stage runs.

    Warnings (a legal setting that is probably not meant) go to stderr, one line each.

    Raises:
        ChurnlabError: the first problem, naming the file, the key, what was expected and
            what was found (and how many more problems there are).
    """
    from churnlab.config import load_param_files, read_yaml

    files = copy.deepcopy(load_param_files(root))
    for key, value in (overrides or {}).items():
        for content in files.values():
            _set_override(content, key, value)
    pipeline = read_yaml(root / "dvc.yaml") or {}
    errors, warnings = param_problems(files, list(pipeline.get("stages") or {}))
    for line in warnings:
        print(f"churnlab: warning: {line}", file=sys.stderr, flush=True)
    if errors:
        raise ChurnlabError(_one_line(errors[0], len(errors) - 1))
