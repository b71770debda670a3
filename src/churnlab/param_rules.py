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
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnlab.errors import ChurnlabError
from churnlab.tracking.settings import PROMOTION_METRICS
from churnlab.tracking.settings import SETTINGS_FILE as TRACKING_FILE

# Each fold fits the model once more and more folds barely sharpen the estimate (2,000
# folds once ran for 812 s); 20 folds already hold out 5% each.
MAX_CV_FOLDS = 20
_QUOTE_HINT = "YAML reads unquoted yes/no/on/off as true/false: quote the value ('yes')"
MISSING = object()  # a key that is not there at all


def _shown(value: Any) -> str:
    if value is MISSING:
        return "nothing (the key is missing)"
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 60 else f"{text[:57]}..."


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class Problem:
    """One param that breaks its rule: ``key: expected ..., found ...``."""

    key: str
    expected: str
    found: Any
    hint: str = ""
    text: str = ""  # the whole message, when "expected ..., found ..." does not fit

    def line(self, file_name: str) -> str:
        if self.text:
            return f"{file_name}: {self.key}: {self.text}"
        hint = f" ({self.hint})" if self.hint else ""
        found = _shown(self.found)
        return f"{file_name}: {self.key}: expected {self.expected}, found {found}{hint}"


class Rule:
    """What one param may be. ``expected`` reads as the end of "expected ..."."""

    expected: str = ""
    hint: str = ""

    def problems(self, value: Any, key: str) -> Iterator[Problem]:
        if not self.accepts(value):
            hint = self.hint
            if isinstance(value, bool) and not isinstance(self, Flag):
                hint = _QUOTE_HINT
            yield Problem(key, self.expected, value, hint)

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        if not low_open and not high_open:
            return f" from {_number(low)} to {_number(high)}"
        start = f"above {_number(low)}" if low_open else f"of at least {_number(low)}"
        end = f"below {_number(high)}" if high_open else f"at most {_number(high)}"
        return f" {start} and {end}"
    if low is not None:
        return f" {'above' if low_open else 'of at least'} {_number(low)}"
    if high is not None:
        return f" {'below' if high_open else 'of at most'} {_number(high)}"
    return ""


@dataclass(frozen=True)
class Number(Rule):
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    hint: str = ""

    @property
    def expected(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return kind + _bounds(self.low, self.high, self.low_open, self.high_open)

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or (self.integer and not isinstance(value, int)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def Integer(low=None, high=None, hint: str = "") -> Number:
    """A whole number in ``[low, high]`` (a fraction such as 2.5 is refused)."""
    return Number(low, high, integer=True, hint=hint)


SEED = Integer(0, 2**32 - 1)  # numpy's seed range
FRACTION = Number(0, 1, low_open=True, high_open=True)
SHARE = Number(0, 1)


@dataclass(frozen=True)
class Text(Rule):
    choices: tuple[str, ...] = ()
    hint: str = ""

    @property
    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return "a non-empty text"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str) or not value.strip():
            return False
        return not self.choices or value in self.choices


@dataclass(frozen=True)
class Flag(Rule):
    expected: str = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Scalar(Rule):
    """A single value as it appears in the data: text or a number (a label, a category)."""

    expected: str = "a text or a number"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str | int | float) and value != ""


@dataclass(frozen=True)
class Anything(Rule):
    """A value churnlab passes on as it is (an estimator's own hyper-parameter)."""

    expected: str = "any value"

    def accepts(self, value: Any) -> bool:
        return True


@dataclass(frozen=True)
class Nullable(Rule):
    rule: Rule = field(default_factory=Text)

    @property
    def expected(self) -> str:
        return f"{self.rule.expected}, or null"

    def problems(self, value: Any, key: str) -> Iterator[Problem]:
        if value is not None:
            for problem in self.rule.problems(value, key):
                if problem.key == key:  # the value itself, not one inside it
                    problem = Problem(key, self.expected, problem.found, problem.hint)
                yield problem


@dataclass(frozen=True)
class ListOf(Rule):
    item: Rule = field(default_factory=Text)
    min_items: int = 0

    @property
    def expected(self) -> str:
        least = f" (at least {self.min_items})" if self.min_items else ""
        return f"a list{least} of: {self.item.expected}"

    def problems(self, value: Any, key: str) -> Iterator[Problem]:
        if not isinstance(value, list) or len(value) < self.min_items:
            yield Problem(key, self.expected, value)
            return
        for index, item in enumerate(value):
            yield from self.item.problems(item, f"{key}[{index}]")


@dataclass(frozen=True)
class Section(Rule):
    """A mapping: ``fields`` with their rules (those in ``optional`` may be left out);
    other keys are refused, or checked by ``others`` (open mappings: columns, gates)."""

    fields: Mapping[str, Rule] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    others: Rule | None = None

    @property
    def expected(self) -> str:
        return "a mapping"

    def problems(self, value: Any, key: str) -> Iterator[Problem]:
        if not isinstance(value, dict):
            yield Problem(key, self.expected, value)
            return
        for name, sub in value.items():
            where = f"{key}.{name}" if key else str(name)
            if name in self.fields:
                yield from self.fields[name].problems(sub, where)
            elif self.others is None:
                known = ", ".join(sorted(self.fields))
                yield Problem(where, "", sub, text=f"unknown key (a typo?); known: {known}")
            else:
                yield from self.others.problems(sub, where)
        for name in sorted(set(self.fields) - set(value) - self.optional):
            yield Problem(f"{key}.{name}" if key else name, self.fields[name].expected, MISSING)


def OpenMapping(values: Rule, **fields: Rule) -> Section:
    """A mapping with keys of the user's choosing (column names, hyper-parameters) whose
    values follow ``values``; ``fields``, when present, follow their own rules."""
    return Section(fields, frozenset(fields), others=values)


def rules() -> dict[str, Rule]:
    """The declaration: per params section, what each key may be.

    Choices that code elsewhere defines (estimator families, threshold rules, gates,
    promotion metrics) are taken from there, so that each is written once.
    """
    from churnlab.evaluation import GATES, THRESHOLD_RULES
    from churnlab.model import FAMILIES

    text_list = ListOf(Text())
    gate_range = {name: SHARE for name in GATES}
    gate_range.update(min_top_lift=Number(0), min_brier_skill=Number(high=1))
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
            },
            optional=frozenset({"logistic_regression", "gradient_boosting"}),
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
        if _is_number(low) and _is_number(high) and low > high:
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
