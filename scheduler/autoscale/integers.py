"""Kubernetes' integer arithmetic, made explicit: int32 replica counts, int64 milli-values, truncation.

The HPA controller computes in Go: replica counts are ``int32``, metric values ``int64`` milli-units,
integer division truncates toward zero, and a float becomes an integer by truncation (``int32(x)``) or
after ``math.Ceil``. Python's integers never overflow and its ``//`` floors, so each of these steps is
spelled out here. Where Go would silently wrap on overflow, Shoal saturates at the type's bounds, as
newer Kubernetes releases do for replica counts.
"""

from __future__ import annotations

import math

MAX_INT32 = 2**31 - 1
MIN_INT32 = -(2**31)
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)


def saturate_int32(n: int) -> int:
    """``n`` clamped to int32's range."""
    return max(MIN_INT32, min(MAX_INT32, n))


def saturate_int64(n: int) -> int:
    """``n`` clamped to int64's range."""
    return max(MIN_INT64, min(MAX_INT64, n))


def ceil_int32(x: float) -> int:
    """``int32(math.Ceil(x))`` with saturation instead of Go's undefined out-of-range conversion."""
    if math.isnan(x):
        # Unreachable with validated inputs (targets are > 0 and counts finite); refuse rather than guess.
        raise ValueError("a replica count computed as NaN")
    if x >= MAX_INT32:
        return MAX_INT32
    if x <= MIN_INT32:
        return MIN_INT32
    return math.ceil(x)


def trunc_int32(x: float) -> int:
    """``int32(x)``: truncation toward zero, saturated."""
    if math.isnan(x):
        raise ValueError("a replica count computed as NaN")
    if x >= MAX_INT32:
        return MAX_INT32
    if x <= MIN_INT32:
        return MIN_INT32
    return math.trunc(x)


def ceil_int64(x: float) -> int:
    """``int64(math.Ceil(x))``, saturated (an average of int64 values, reported, never a count)."""
    if math.isnan(x):
        raise ValueError("a metric value computed as NaN")
    if x >= MAX_INT64:
        return MAX_INT64
    if x <= MIN_INT64:
        return MIN_INT64
    return math.ceil(x)


def div_trunc(a: int, b: int) -> int:
    """Go's ``a / b`` on integers: the quotient truncated toward zero (Python's ``//`` floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
