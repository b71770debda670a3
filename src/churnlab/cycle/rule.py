"""The decision rule of the cycle and the promotion test: pure functions of numbers.

``decide`` says whether a month's evidence calls for retraining and which rule fired;
``paired_difference`` and ``promotion_verdict`` say whether a challenger replaces the
champion. Both follow ``params/cycle.yaml`` (section ``cycle``); ``RULE_VERSION`` goes into
every decision line, so a changed rule is told apart from changed evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CYCLE_FILE = "params/cycle.yaml"
# 2: feature drift a lost challenger already learnt from does not fire again (``drift_learnt``)
RULE_VERSION = 2
# the order the rules are checked (and named, when several fire: the first)
RULES = ("realised_gate", "realised_drop", "estimated_drop", "feature_drift", "max_age")


@dataclass(frozen=True)
class RuleParams:
    """``cycle.retrain`` of params/cycle.yaml."""

    realised_margin: float
    estimated_margin: float
    drifted_features: int
    max_age_days: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> RuleParams:
        return cls(**{name: section["retrain"][name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Evidence:
    """What the rule looks at for one month, gathered from the verdicts and the registry.

    ``realised_*`` are of the latest labelled month that passed data quality (None without
    one); ``reference_*`` the champion's own figures on the test split.
    """

    month: str
    quality_passed: bool
    drifted_important: tuple[str, ...]  # drifted columns of importance >= alert_importance
    estimated_recall_high: float | None  # upper end of the month's estimated recall interval
    realised_month: str | None
    realised_roc_auc: float | None
    realised_recall: float | None
    reference_roc_auc: float | None
    reference_recall: float | None
    gate_recall: float | None
    age_days: int | None
    trainable_months: tuple[str, ...] = field(default=())  # labelled, usable, in the window
    # drifted columns that a challenger trained under this same champion already had labelled
    # months of, and lost with (from the decision log; empty when none did): that drift alone
    # does not call for the same retrain again
    drift_learnt: tuple[str, ...] = field(default=())
    drift_learnt_month: str | None = None  # the month of that retrain


@dataclass(frozen=True)
class RuleOutcome:
    """The rule's answer: every check with its value and limit, and what it means."""

    checks: list[dict]  # {rule, fired, value, limit, note}
    fired: list[str]
    retrain: bool
    rule: str  # the first rule that fired, "none", or why nothing could be trained
    reason: str


def _check(rule: str, fired: bool, value, limit, note: str) -> dict:
    return {"rule": rule, "fired": bool(fired), "value": value, "limit": limit, "note": note}


def decide(evidence: Evidence, params: RuleParams) -> RuleOutcome:
    """Whether the month calls for retraining, and the rule that fired.

    A month that failed data quality never triggers training on itself: its drift and
    estimated performance are not looked at (its numbers are not to be trusted) and it is
    never among the months to train on; the realised performance of earlier labelled months
    and the age limit still count. A rule that fires with no labelled month to learn from
    does not retrain (a model of the same data again would change nothing).
    """
    e, checks = evidence, []
    realised = e.realised_month is not None
    gate_missed = (
        realised
        and e.gate_recall is not None
        and e.realised_recall is not None
        and e.realised_recall < e.gate_recall
    )
    checks.append(
        _check(
            "realised_gate",
            gate_missed,
            e.realised_recall,
            e.gate_recall,
            f"realised recall of {e.realised_month}" if realised else "no labelled month yet",
        )
    )
    limit = None if e.reference_roc_auc is None else e.reference_roc_auc - params.realised_margin
    dropped = realised and e.realised_roc_auc is not None and limit is not None
    dropped = dropped and e.realised_roc_auc < limit
    checks.append(
        _check(
            "realised_drop",
            dropped,
            e.realised_roc_auc,
            limit,
            f"realised ROC AUC of {e.realised_month} against the champion's test ROC AUC "
            f"minus {params.realised_margin}"
            if realised
            else "no labelled month yet",
        )
    )
    skipped = "not judged: the month failed data quality"
    limit = None if e.reference_recall is None else e.reference_recall - params.estimated_margin
    fell = e.quality_passed and e.estimated_recall_high is not None and limit is not None
    fell = fell and e.estimated_recall_high < limit
    checks.append(
        _check(
            "estimated_drop",
            fell,
            e.estimated_recall_high,
            limit,
            "upper end of the estimated recall interval against the champion's test recall "
            f"minus {params.estimated_margin}"
            if e.quality_passed
            else skipped,
        )
    )
    drifted = len(e.drifted_important) if e.quality_passed else 0
    note = "drifted important columns: " + (", ".join(e.drifted_important) or "none")
    # A challenger that learnt from labelled months of this very drift lost the comparison:
    # more months of the same shift would train the same model again. The drift fires again
    # when a column drifts that it did not learn, when the champion changes (the memory is
    # per champion), and the age limit still counts; a change in how customers behave shows
    # in the realised checks above, not here.
    learnt = bool(e.drift_learnt) and set(e.drifted_important) <= set(e.drift_learnt)
    if learnt and drifted >= params.drifted_features:
        note += (
            f" (all learnt by the challenger of {e.drift_learnt_month}, which lost: not "
            "again until another column drifts or the champion changes)"
        )
    checks.append(
        _check(
            "feature_drift",
            e.quality_passed and drifted >= params.drifted_features and not learnt,
            drifted,
            params.drifted_features,
            note if e.quality_passed else skipped,
        )
    )
    checks.append(
        _check(
            "max_age",
            e.age_days is not None and e.age_days > params.max_age_days,
            e.age_days,
            params.max_age_days,
            "days since the champion was trained",
        )
    )
    fired = [c["rule"] for c in checks if c["fired"]]
    if not fired:
        said = "no rule fired: the champion is kept"
        if not e.quality_passed:
            said = (
                f"{e.month} failed data quality (never trained on, its drift and estimated "
                f"performance not judged); {said}"
            )
        return RuleOutcome(checks, fired, False, "none", said)
    first = next(c for c in checks if c["fired"])
    because = f"{first['rule']} fired ({first['note']}: {_shown(first['value'])} against "
    because += f"{_shown(first['limit'])})"
    if not e.trainable_months:
        return RuleOutcome(
            checks,
            fired,
            False,
            first["rule"],
            f"{because}, but no labelled month that passed data quality is in the window to "
            "train on: the champion is kept",
        )
    return RuleOutcome(
        checks,
        fired,
        True,
        first["rule"],
        f"{because}: retrain on the reference and {', '.join(e.trainable_months)}",
    )


def learnt_drift(log: list[dict], champion_version: int) -> tuple[tuple[str, ...], str | None]:
    """What the last challenger that lost under this champion had learnt of feature drift.

    Args:
        log: the decision log, oldest first.
        champion_version: the champion in use.

    Returns:
        The drifted important columns of the months that challenger was trained on (their
        decision lines), and the month of its retrain; ``((), None)`` when no challenger
        lost under this champion.
    """
    lost = [
        line
        for line in log
        if line["action"] == "retrain"
        and line["outcome"] == "kept champion"
        and line["champion_before"]["version"] == champion_version
    ]
    if not lost:
        return (), None
    months = set((lost[-1].get("training") or {}).get("months") or [])
    columns = {
        column
        for line in log
        if line["month"] in months
        for column in (line.get("statistics") or {}).get("drifted_important") or []
    }
    return tuple(sorted(columns)), lost[-1]["month"]


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def paired_difference(
    labels: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
) -> dict:
    """ROC AUC of the challenger minus the champion's on the same customers, with a paired
    percentile bootstrap interval (each resample scores both models on the same customers).

    Returns:
        ``customers``, ``champion``, ``challenger``, ``difference`` and ``low`` / ``high``
        (the interval of the difference); the numbers are None when the customers hold one
        class only.
    """
    labels = np.asarray(labels).astype(int)
    champion, challenger = np.asarray(champion, float), np.asarray(challenger, float)
    found: dict[str, Any] = {"customers": int(len(labels))}
    if len(set(labels.tolist())) < 2:
        return {**found, **dict.fromkeys(("champion", "challenger", "difference", "low", "high"))}
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(samples):
        pick = rng.integers(0, len(labels), len(labels))
        truth = labels[pick]
        if truth.min() == truth.max():
            continue  # one class only: no AUC for this resample
        differences.append(roc_auc(truth, challenger[pick]) - roc_auc(truth, champion[pick]))
    tail = (1 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    a, b = roc_auc(labels, champion), roc_auc(labels, challenger)
    return {
        **found,
        "champion": float(a),
        "challenger": float(b),
        "difference": float(b - a),
        "low": float(low),
        "high": float(high),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney U, ties averaged): what scikit-learn gives, without
    its input checks, which dominate thousands of small resamples."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = labels == 1
    n1 = int(positives.sum())
    n0 = len(labels) - n1
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def promotion_verdict(
    month: dict, test: dict, better_by: float, test_margin: float
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, from the two paired differences."""
    if month["low"] is None:
        return False, (
            f"the held-out customers of the latest labelled month ({month['customers']}) hold "
            "one class only: the models cannot be compared, the champion is kept"
        )
    if test["low"] is None:
        return False, "the test split holds one class only: the champion is kept"
    better = month["low"] > better_by
    not_worse = test["low"] > -test_margin
    said = (
        f"ROC AUC difference on the held-out month {month['difference']:+.4f} (lower bound "
        f"{month['low']:+.4f}, needed above {better_by:+g}); on the test split "
        f"{test['difference']:+.4f} (lower bound {test['low']:+.4f}, needed above "
        f"{-test_margin:+g})"
    )
    if better and not_worse:
        return True, f"the challenger is better: {said}"
    why = "not better on the latest labelled month" if not better else "worse on the test split"
    return False, f"the champion is kept, the challenger is {why}: {said}"
