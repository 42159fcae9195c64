"""A Prometheus histogram read twice off ``/metrics``, and its quantiles over what it counted between.

``bench/scale.py`` scrapes the leader before and after a phase (the mass failure) and reports the
scheduler's own stage histograms for that phase alone (``scheduler.timings``): the difference of the two
scrapes' cumulative bucket counts, and quantiles from it as PromQL's ``histogram_quantile`` computes them
(linear within the bucket that holds the rank; the highest finite bound when the rank falls in ``+Inf``).
A bucket's figure is therefore an estimate within its bounds, which the report says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def buckets(samples: Mapping[str, float], **match: str) -> dict[float, float]:
    """``{le: cumulative count}`` of a histogram's ``_bucket`` samples (``{label text: value}``, as
    ``bench/scale.py``'s ``scrape_counter`` reads them) whose labels include ``match``, summed over the
    rest (``sum by (le)``)."""
    out: dict[float, float] = {}
    for text, count in samples.items():
        labels = dict(_LABEL.findall(text))
        if "le" not in labels or any(labels.get(k) != v for k, v in match.items()):
            continue
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        out[le] = out.get(le, 0.0) + count
    return out


def between(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """What the histogram counted between two scrapes (a bucket missing before counted from zero)."""
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def quantile(counts: Mapping[float, float], fraction: float) -> float | None:
    """``histogram_quantile(fraction, ...)`` of cumulative ``counts``; None when nothing was counted."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"quantile fraction must be in [0, 1], got {fraction}")
    ordered = sorted(counts.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = fraction * total
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound: nothing above it is known
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def summary(counts: Mapping[float, float], *, digits: int = 3) -> dict[str, float | int | None]:
    """``{"p50", "p90", "p99", "n"}`` of cumulative ``counts`` (seconds, rounded)."""
    def q(fraction: float) -> float | None:
        value = quantile(counts, fraction)
        return None if value is None else round(value, digits)

    total = max(counts.values(), default=0.0)
    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "n": int(total)}


__all__ = ["between", "buckets", "quantile", "summary"]
