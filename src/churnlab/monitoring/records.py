"""JSON records whose bytes depend only on their values: the verdicts and the decision log."""

from __future__ import annotations

import math
from typing import Any


def tidy(value: Any) -> Any:
    """JSON-ready: 6 significant digits, NaN and infinity as null, numpy as Python."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): tidy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [tidy(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value)
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value
