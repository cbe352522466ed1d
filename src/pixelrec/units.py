"""One unit policy for ranking metrics: fractions in JSON files and the Python API (results.json,
metrics.jsonl), percent with three decimals wherever a person reads them (console lines and tables,
the paper's unit); fractions printed as JSON keep five decimals, the same precision."""

from __future__ import annotations

import math

PERCENT_DECIMALS = 3
FRACTION_DECIMALS = PERCENT_DECIMALS + 2


def percent(value: float, sign: bool = True) -> str:
    """A fraction as percent with three decimals: 0.0251234 -> '2.512%' ('2.512' without `sign`)."""
    shown = f"{100 * value:.{PERCENT_DECIMALS}f}" if math.isfinite(value) else str(value)
    return f"{shown}%" if sign else shown


def fraction(value: float) -> float:
    """A fraction rounded to five decimals (the precision of `percent`)."""
    return round(value, FRACTION_DECIMALS) if math.isfinite(value) else value


def is_metric(name: object) -> bool:
    """A ranking metric's name: NAME@K (Recall@10, NDCG@5)."""
    return isinstance(name, str) and "@" in name and name.rpartition("@")[2].isdigit()
