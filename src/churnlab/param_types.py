"""The types a param may have (numbers in a range, texts from a list, sections of keys ...),
each checking a value and saying, in words, what was expected and what was found.

The declaration of what each param is, written with these, is ``churnlab.param_rules``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

QUOTE_HINT = "YAML reads unquoted yes/no/on/off as true/false: quote the value ('yes')"
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
                hint = QUOTE_HINT
            yield Problem(key, self.expected, value, hint)

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


def is_number(value: Any) -> bool:
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
        if not is_number(value) or (self.integer and not isinstance(value, int)):
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
class EnvironmentName(Rule):
    """The name of an environment variable that holds a secret. A value that is not a name
    (a pasted URL or token) is not repeated in the message: it may be the secret itself."""

    expected: str = "the name of an environment variable (letters, digits and _)"

    def problems(self, value: Any, key: str) -> Iterator[Problem]:
        if isinstance(value, str) and not self.accepts(value):
            text = (
                f"expected {self.expected}, found another text (not repeated here: it may be "
                "the secret itself); put the secret in the environment and its name here"
            )
            yield Problem(key, "", value, text=text)
        elif not self.accepts(value):
            yield Problem(key, self.expected, value)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.isascii() and value.isidentifier()


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
