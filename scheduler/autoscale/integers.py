"""Kubernetes' integer arithmetic, made explicit: int32 replica counts, int64 milli-values, truncation.

The HPA controller computes in Go: replica counts are ``int32``, metric values ``int64`` milli-units,
integer division truncates toward zero, and a float becomes an integer by truncation (``int32(x)``) or
after ``math.Ceil``. Python's integers never overflow and its ``//`` floors, so each of these steps is
spelled out here. Where Go would silently wrap on overflow, Shoal saturates at the type's bounds, as
newer Kubernetes releases do for replica counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def _convert(x: float, rounding: Callable[[float], int], low: int, high: int, what: str) -> int:
    """Go's float → int conversion after ``rounding``, saturated at ``low``/``high`` instead of Go's
    undefined out-of-range result. NaN is unreachable with validated inputs (targets are > 0 and counts
    finite): refuse rather than guess."""
    if math.isnan(x):
        raise ValueError(f"a {what} computed as NaN")
    if x >= high:
        return high
    if x <= low:
        return low
    return rounding(x)


def ceil_int32(x: float) -> int:
    """``int32(math.Ceil(x))``, saturated."""
    return _convert(x, math.ceil, MIN_INT32, MAX_INT32, "replica count")


def trunc_int32(x: float) -> int:
    """``int32(x)``: truncation toward zero, saturated."""
    return _convert(x, math.trunc, MIN_INT32, MAX_INT32, "replica count")


def ceil_int64(x: float) -> int:
    """``int64(math.Ceil(x))``, saturated (an average of int64 values, reported, never a count)."""
    return _convert(x, math.ceil, MIN_INT64, MAX_INT64, "metric value")


def div_trunc(a: int, b: int) -> int:
    """Go's ``a / b`` on integers: the quotient truncated toward zero (Python's ``//`` floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
