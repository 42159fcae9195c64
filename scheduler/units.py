"""The values people type in a service file: sizes, cpus, pids, durations, environment, restart policies.

The scheduler may not import the agent (an import-linter contract keeps the two independent), yet a
service file must accept and refuse exactly what ``shoal run``'s flags do, with the same words, since the
template is handed to the agent unchanged. So these are a re-implementation of ``agent/parsing.py`` and
of the bounds in ``agent/limits.py``; ``tests/unit/scheduler/test_units_agree.py`` runs both on one table
of inputs and fails when they disagree on a value or on a message.
"""

from __future__ import annotations

import decimal
import re

# The agent's minimums (agent/limits.py): below them a container could never start.
MIN_MEMORY_BYTES = 6 << 20
MIN_CPU_MILLIS = 10
MIN_STORAGE_BYTES = 1 << 20   # the agent's agent.limits bounds for --storage-size
MAX_STORAGE_BYTES = 1 << 50

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB]?)\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
RESTART_MODES = ("no", "on-failure", "always")


class InvalidValue(ValueError):
    """A value that cannot be used; the message is written for the person who typed it."""


def parse_size(raw: str, *, what: str = "size") -> int:
    """``64M``, ``1g``, ``512k``, ``1.5GiB``, ``1048576`` → bytes (binary units, like Docker)."""
    m = _SIZE_RE.match(raw)
    if not m:
        raise InvalidValue(
            f"invalid {what} {raw!r}: expected a number with an optional unit k, m, g or t (e.g. 64M)"
        )
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * _UNITS[unit])


def parse_memory(raw: str, *, what: str = "memory limit") -> int:
    value = parse_size(raw, what=what)
    if value < MIN_MEMORY_BYTES:
        raise InvalidValue(f"{what} {raw!r} is too small: the minimum is {MIN_MEMORY_BYTES >> 20}M")
    return value


def parse_storage_size(raw: str, *, what: str = "storage size") -> int:
    """A container's writable-layer limit (the agent's ``--storage-size``), with the agent's bounds."""
    value = parse_size(raw, what=what)
    if value < MIN_STORAGE_BYTES:
        raise InvalidValue(f"{what} {raw!r} is too small: the minimum is {MIN_STORAGE_BYTES >> 20}M")
    if value > MAX_STORAGE_BYTES:
        raise InvalidValue(f"{what} {raw!r} is too large: the maximum is {MAX_STORAGE_BYTES >> 50}P")
    return value


def parse_cpus(raw: str, *, what: str = "cpu limit") -> int:
    """``0.5`` cores → 500 millicores; ``250m`` is accepted too (Kubernetes style)."""
    text = raw.strip()
    try:
        millis = int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)
    except ValueError:
        raise InvalidValue(f"invalid {what} {raw!r}: expected cores like 0.5 or 2") from None
    if millis < MIN_CPU_MILLIS:
        raise InvalidValue(f"{what} {raw!r} is too small: the minimum is 0.01 cores")
    return millis


def parse_pids(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidValue(f"invalid pids limit {raw!r}: expected a whole number") from None
    if value < 1:
        raise InvalidValue(f"pids limit must be at least 1, got {value}")
    return value


def parse_duration(raw: str, *, what: str = "duration") -> float:
    """``30s``, ``1.5m``, ``500ms``, ``2h`` or plain seconds → seconds."""
    m = _DURATION_RE.match(raw)
    if not m:
        raise InvalidValue(f"invalid {what} {raw!r}: expected e.g. 500ms, 30s, 2m or 1h")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def duration_text(seconds: float) -> str:
    """Seconds as the file writes them: 90 → "90s", 600 → "10m", 0.25 → "250ms" — the shortest of those
    that parses back to exactly ``seconds``; else the seconds with every digit (24.871 is "24.871s": as
    "24871ms" it would come back as 24.871000000000002)."""
    millis = seconds * 1000
    if millis == int(millis):
        whole = int(millis)
        candidates = [f"{whole // (size * 1000)}{suffix}"
                      for suffix, size in (("h", 3600), ("m", 60), ("s", 1))
                      if whole and whole % (size * 1000) == 0]
        candidates += [f"{whole}ms"] if whole else ["0s"]
        for text in candidates:
            if parse_duration(text) == seconds:
                return text
    return f"{decimal.Decimal(repr(seconds)):f}s"  # repr's shortest digits, never an exponent


def parse_env(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    for item in items:
        if "=" not in item or item.startswith("="):
            raise InvalidValue(f"invalid environment variable {item!r}: expected KEY=VALUE")
    return tuple(items)


def parse_restart_text(raw: str) -> tuple[str, int]:
    """``no``, ``always``, ``on-failure`` or ``on-failure:5`` → (mode name, max retries)."""
    text = raw.strip()
    mode, sep, count_text = text.partition(":")
    if mode not in RESTART_MODES:
        raise InvalidValue(f"invalid restart policy {raw!r}: use no, always, on-failure or on-failure:MAX")
    if not sep:
        return mode, 0
    if mode != "on-failure":
        raise InvalidValue(f"invalid restart policy {raw!r}: only on-failure takes a maximum (on-failure:5)")
    try:
        count = int(count_text)
    except ValueError:
        raise InvalidValue(f"invalid restart policy {raw!r}: the maximum must be a whole number") from None
    if count < 0:
        raise InvalidValue(f"restart retries must not be negative, got {count}")
    return mode, count


__all__ = [
    "MIN_CPU_MILLIS", "MIN_MEMORY_BYTES", "RESTART_MODES", "InvalidValue", "duration_text", "parse_cpus",
    "parse_duration",
    "parse_env", "parse_memory", "parse_pids", "parse_restart_text", "parse_size",
]
