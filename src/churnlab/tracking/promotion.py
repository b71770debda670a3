"""The promotion decision: its rules, and its record (``paths.promotion``).

The rules are pure functions of scores, signatures and ids: whether a challenger becomes
champion, and on which customers the two may be compared. ``churnlab.tracking.registry``
gathers them from the store and applies these rules. The record says what was decided and
why, also when nothing was registered (tracking off, or a stage that is not the register
stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab.config import load_params
from churnlab.errors import ChurnlabError
from churnlab.files import write_json
from churnlab.tracking.settings import PROMOTION_METRICS, SETTINGS_FILE, Settings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def promotion_decision(
    challenger: float, champion: float | None, metric: str, margin: float
) -> tuple[bool, str]:
    """Whether the challenger becomes champion, and why, from both scores on the same data."""
    if champion is None:
        return True, "there was no champion"
    gain = challenger - champion if PROMOTION_METRICS[metric] else champion - challenger
    promoted = gain >= margin
    return promoted, (
        f"{metric} {challenger:.4f} against the champion's {champion:.4f}: "
        f"{'better' if promoted else 'not better'} by at least the margin {margin}"
    )


def input_columns(signature) -> list[tuple[str, str]]:
    """A model signature's inputs as sorted ``(column, type)`` pairs."""
    return sorted(
        (spec.get("name", ""), str(spec.get("type"))) for spec in signature.inputs.to_dict()
    )


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )


def describe_input_change(
    champion: list[tuple[str, str]], challenger: list[tuple[str, str]]
) -> str:
    """How the champion's input columns differ from the challenger's, in a few words."""
    old, new = dict(champion), dict(challenger)
    parts = []
    gone = sorted(set(old) - set(new))
    if gone:
        parts.append(f"it takes {len(gone)} column(s) the data no longer has: {_some(gone)}")
    added = sorted(set(new) - set(old))
    if added:
        parts.append(f"the data has {len(added)} column(s) it does not take: {_some(added)}")
    retyped = sorted(f"{c} {old[c]} -> {new[c]}" for c in set(old) & set(new) if old[c] != new[c])
    if retyped:
        parts.append(f"{len(retyped)} column(s) changed type: {_some(retyped)}")
    return "; ".join(parts)


def unseen_customers(
    test_ids: pd.Series, labels: np.ndarray, trained_ids: set[str], minimum: int
) -> tuple[np.ndarray, str | None]:
    """The test customers the champion was not trained on (a mask), and why they are too
    few to compare on (None when they are enough: ``minimum`` customers, both classes)."""
    unseen = ~test_ids.astype(str).isin(trained_ids).to_numpy()
    count, classes = int(unseen.sum()), len(set(labels[unseen].tolist()))
    if count >= minimum and classes == 2:
        return unseen, None
    found = f"only {count} of the {len(labels)} test customers were not in its training data"
    if count and classes < 2:
        found += ", all of one class"
    return unseen, (
        f"{found}, and a comparison needs at least {minimum} such customers of both classes "
        f"({SETTINGS_FILE} tracking.promotion.min_customers)"
    )


def promotion_record(
    settings: Settings, found: Mapping[str, Any], version: str, test_customers: int
) -> dict[str, Any]:
    """The promotion record: the settings it was made under, both scores and the outcome."""
    return {
        "registered_model": settings.registered_model,
        "metric": settings.promotion_metric,
        "margin": settings.promotion_margin,
        "min_customers": settings.promotion_min_customers,
        "test_customers": test_customers,
        "compared_customers": found["compared_customers"],
        "challenger": {"version": int(version), "score": found["challenger_score"]},
        "champion_before": found["champion_before"],
        "promoted": found["promoted"],
        "outcome": found["outcome"],
        "reason": found["reason"],
    }


def write_promotion(path: Path, decision: Mapping[str, Any]) -> None:
    """Write the promotion record; a folder that cannot be written is a ChurnlabError."""
    try:
        write_json(path, dict(decision))
    except OSError as exc:
        raise ChurnlabError(
            f"{path}: cannot write the promotion record ({exc.strerror or exc}): make "
            f"{path.parent} writable and run the stage again; the registry is unchanged"
        ) from None


def record_no_promotion(root: Path, path: str, tracked: bool, stage: str) -> None:
    """The promotion record of a stage that declares it but registered nothing."""
    if tracked:
        reason = (
            f"stage '{stage}' writes the promotion record but is not {SETTINGS_FILE} "
            "tracking.register_stage: no model was registered and the aliases did not move"
        )
    else:
        reason = (
            "tracking was off (CHURNLAB_TRACKING, tracking.enabled, or an unreachable store "
            f"with tracking.on_unreachable: continue in {SETTINGS_FILE}): no model was "
            "registered and the aliases did not move"
        )
    write_promotion(
        root / path,
        {"promoted": False, "outcome": "not registered", "tracked": tracked, "reason": reason},
    )


def promotion_output(root: Path, stage) -> str | None:
    """``paths.promotion`` when the stage declares it as an output, else None."""
    path = (load_params(root).get("paths") or {}).get("promotion")
    return path if path in stage.outs else None
