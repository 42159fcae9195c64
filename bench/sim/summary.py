"""Summaries of measured durations: p50, p99 and max of a list of seconds, the way every scale figure is
reported (``bench/scale.py``'s JSON and the plots and tables drawn from it).

The p99 is the nearest-rank value (the smallest sample at or above 99 % of them), not an interpolation:
with few samples it is the largest but one or the largest, which is what a reader of a table expects of
"p99 of 20 calls". An empty list has no quantiles: ``summarize`` says so with ``n: 0`` and no values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank quantile of an already sorted, non-empty sequence (``fraction`` in (0, 1])."""
    if not ordered:
        raise ValueError("no samples")
    if not 0 < fraction <= 1:
        raise ValueError(f"quantile fraction must be in (0, 1], got {fraction}")
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(values: Sequence[float], *, digits: int = 5) -> dict[str, float | int | None]:
    """``{"p50", "p99", "max", "n"}`` of ``values`` (seconds), rounded to ``digits``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": round(nearest_rank(ordered, 0.5), digits),
            "p99": round(nearest_rank(ordered, 0.99), digits),
            "max": round(ordered[-1], digits), "n": len(ordered)}


__all__ = ["nearest_rank", "summarize"]
