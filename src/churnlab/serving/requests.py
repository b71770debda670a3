"""What a ``POST /predict`` body may be, generated from the ``schema`` in params/data.yaml.

A body is one customer (a JSON object of its fields) or a list of them. Every field of the
schema is required; the id column is optional and echoed back; the target column is ignored
(scoring last month's labelled customers is common); any other field is refused. Each
problem is reported with the field's path (``body[2].age``), the rule it breaks and what was
found, so that the caller can fix the request; nothing here knows a column name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from churnlab.data import TableSpec

SCHEMA_FILE = "params/data.yaml"
BODY = "body"  # the path of the whole body: body[2].age is a field of the third customer
MAX_PROBLEMS = 20  # a list of 1,000 bad customers is answered with the first few
_SHOWN_CHARS = 40  # a found value is shown cut to this length, never a whole payload


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where, which rule, what was there."""

    path: str
    rule: str
    found: str

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "rule": self.rule, "found": self.found}


class RequestError(Exception):
    """A request the service refuses, with its HTTP status and the problems found."""

    def __init__(self, status: int, problems: list[Problem], total: int | None = None):
        super().__init__(problems[0].rule if problems else "bad request")
        self.status = status
        self.problems = problems
        self.total = len(problems) if total is None else total

    def as_json(self) -> dict[str, Any]:
        first = self.problems[0]
        more = self.total - 1
        line = f"{first.path}: {first.rule}; found {first.found}"
        if more:
            line += f" [and {more} more problem(s)]"
        return {"error": line, "problems": [p.as_json() for p in self.problems]}


@dataclass(frozen=True)
class RequestRules:
    """The fields a customer has and what each may hold (from ``schema``), and the limits."""

    id_column: str
    target: str
    numeric: dict[str, dict]
    categorical: dict[str, frozenset[str] | None]
    fill_missing: dict[str, float]
    max_customers: int

    @classmethod
    def from_params(cls, params: dict, max_customers: int) -> RequestRules:
        """Rules from the merged params (``schema``, ``prepare.fill_missing``)."""
        spec = TableSpec.from_params(params.get("schema"))
        fill = (params.get("prepare") or {}).get("fill_missing") or {}
        return cls(
            id_column=spec.id_column,
            target=spec.target,
            numeric=spec.numeric,
            categorical={
                name: None if allowed is None else frozenset(allowed)
                for name, allowed in spec.categorical.items()
            },
            fill_missing={str(k): float(v) for k, v in fill.items()},
            max_customers=max_customers,
        )

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def example(self) -> dict[str, Any]:
        """One valid customer (the middle of each range, the first category): a warm-up."""
        customer: dict[str, Any] = {}
        for name, rule in self.numeric.items():
            low, high = rule.get("min"), rule.get("max")
            if low is not None and high is not None:
                customer[name] = (low + high) / 2
            else:
                customer[name] = low if low is not None else high if high is not None else 0.0
        for name, allowed in self.categorical.items():
            customer[name] = sorted(allowed)[0] if allowed else "example"
        return customer


def _shown(value: Any) -> str:
    """A found value as the caller wrote it (JSON), cut short."""
    if isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    elif isinstance(value, dict):
        text = "an object"
    elif isinstance(value, list):
        text = f"a list of {len(value)}"
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def parse_json(body: bytes) -> Any:
    """The JSON value of a body.

    Raises:
        RequestError: 400 for a body that is not UTF-8 JSON, naming the line and column.
    """
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(
            400, [Problem(BODY, "a body of UTF-8 JSON", f"bytes not UTF-8 at {exc.start}")]
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            400,
            [Problem(BODY, "valid JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}")],
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits, deep nesting
        found = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise RequestError(400, [Problem(BODY, "JSON a parser can read", found)]) from None


def _numeric(value: Any, name: str, rule: dict, path: str) -> tuple[float, Problem | None]:
    if value is None:
        if rule.get("nullable"):
            return math.nan, None
        return math.nan, Problem(path, f"a number ({SCHEMA_FILE} schema.numeric.{name})", "null")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan, Problem(path, "a number", f"{_kind(value)} {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        return math.nan, Problem(path, "a finite number", _shown(value))
    low, high = rule.get("min"), rule.get("max")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"from {low:g} to {high:g}" if low is not None and high is not None else ""
        bounds = bounds or (f"at least {low:g}" if low is not None else f"at most {high:g}")
        where = f"{SCHEMA_FILE} schema.numeric.{name}"
        return math.nan, Problem(path, f"a number {bounds} ({where})", _shown(value))
    return number, None


def _category(
    value: Any, name: str, allowed: frozenset[str] | None, path: str
) -> tuple[str, Problem | None]:
    # numbers stand for categories such as 0/1 as the CSV reader sees them: 1 and 1.0 are "1"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        text = str(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, str):
        text = value.strip()
    else:
        return "", Problem(path, "a category (text)", f"{_kind(value)} {_shown(value)}")
    if allowed is not None and text not in allowed:
        choices = sorted(allowed)
        shown = ", ".join(choices[:8]) + (", ..." if len(choices) > 8 else "")
        where = f"{SCHEMA_FILE} schema.categorical.{name}"
        return "", Problem(path, f"one of {shown} ({where})", _shown(value))
    if not text:
        return "", Problem(path, "a category (not blank)", _shown(value))
    return text, None


def customers_table(payload: Any, rules: RequestRules) -> tuple[dict[str, np.ndarray], list, bool]:
    """The model's input columns from a parsed body, with the ids and whether it was one.

    Returns:
        ``(columns, ids, single)``: one array per feature in schema order (numbers as
        float64, missing values of ``prepare.fill_missing`` filled as prepare fills them,
        categories as text objects), each customer's id (None when not given), and True
        for a single object.

    Raises:
        RequestError: 422 with every problem (the first ``MAX_PROBLEMS`` listed).
    """
    single = isinstance(payload, dict)
    if single:
        customers = [payload]
    elif isinstance(payload, list):
        customers = payload
        if not customers:
            raise RequestError(422, [Problem(BODY, "at least one customer", "an empty list")])
        if len(customers) > rules.max_customers:
            raise RequestError(
                422,
                [
                    Problem(
                        BODY,
                        f"at most {rules.max_customers} customers in one request "
                        "(params/serve.yaml serve.max_customers); split the list",
                        f"{len(customers)}",
                    )
                ],
            )
    else:
        raise RequestError(
            422,
            [
                Problem(
                    BODY,
                    "a JSON object (one customer) or a list of them",
                    f"{_kind(payload)} {_shown(payload)}",
                )
            ],
        )
    known = {*rules.features, rules.id_column, rules.target}
    columns: dict[str, list] = {name: [] for name in rules.features}
    ids: list = []
    problems: list[Problem] = []
    for index, customer in enumerate(customers):
        base = BODY if single else f"{BODY}[{index}]"
        if not isinstance(customer, dict):
            problems.append(
                Problem(base, "a JSON object of one customer's fields", _kind(customer))
            )
            continue
        for field in customer:
            if field not in known:
                problems.append(
                    Problem(
                        f"{base}.{field}",
                        f"a field of the schema ({SCHEMA_FILE}): unknown field",
                        _shown(customer[field]),
                    )
                )
        customer_id = customer.get(rules.id_column)
        if customer_id is not None and (
            isinstance(customer_id, bool) or not isinstance(customer_id, (str, int))
        ):
            problems.append(
                Problem(f"{base}.{rules.id_column}", "an id (text or integer)", _kind(customer_id))
            )
        ids.append(customer_id)
        for name in rules.features:
            path = f"{base}.{name}"
            if name not in customer:
                problems.append(Problem(path, f"a required field ({SCHEMA_FILE})", "missing"))
                columns[name].append(None)
                continue
            if name in rules.numeric:
                value, problem = _numeric(customer[name], name, rules.numeric[name], path)
            else:
                value, problem = _category(customer[name], name, rules.categorical[name], path)
            if problem:
                problems.append(problem)
            columns[name].append(value)
        if len(problems) >= MAX_PROBLEMS * 5:  # enough to tell the caller what is wrong
            break
    if problems:
        raise RequestError(422, problems[:MAX_PROBLEMS], len(problems))
    table = {}
    for name in rules.numeric:
        values = np.asarray(columns[name], dtype="float64")
        if name in rules.fill_missing:
            values = np.where(np.isnan(values), rules.fill_missing[name], values)
        table[name] = values
    for name in rules.categorical:
        table[name] = np.asarray(columns[name], dtype=object)
    return table, ids, single
