"""A host group's decision log: recording a decision (bounded, and not repeated while nothing changes),
and the words decisions are written in (durations, times, host names).

The elastic step runs every second, so a standing condition ("wait: cooldown until …", "at max", "no
shape", a scale-in held back) would otherwise be written every second. Decisions fall in two *tracks*,
scale-out and scale-in; a standing condition is recorded only when it differs from the latest decision of
its track, so it is written when it starts (or changes) and not again. Events (a request, a drain, a
release, a forget, a host dropped from the status) happen once by nature and are always recorded.
Reasons of standing conditions therefore carry no figure that moves by itself (no "pending for 12.3s").
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import replace

from scheduler.model import GroupDecision, HostGroupStatus, HostId, HostRecord

MAX_DECISIONS = 50

SCALE_OUT_ACTIONS = frozenset({"scale_out", "wait", "at_max", "no_shape"})
SCALE_IN_ACTIONS = frozenset({"drain", "release", "forget", "drop", "hold"})
# The actions that describe a standing condition rather than an event (see the module doc).
CONDITIONS = frozenset({"wait", "at_max", "no_shape", "hold"})


def record(decisions: tuple[GroupDecision, ...], *, now: float, action: str,
           reason: str) -> tuple[GroupDecision, ...]:
    """``decisions`` with this one appended (the latest ``MAX_DECISIONS`` kept), unless it is a standing
    condition equal to the latest decision of its track."""
    if action in CONDITIONS:
        track = SCALE_IN_ACTIONS if action in SCALE_IN_ACTIONS else SCALE_OUT_ACTIONS
        latest = next((d for d in reversed(decisions) if d.action in track), None)
        if latest is not None and latest.action == action and latest.reason == reason:
            return decisions
    return (*decisions, GroupDecision(time=now, action=action, reason=reason))[-MAX_DECISIONS:]


def recorded(status: HostGroupStatus, *, now: float, action: str, reason: str) -> HostGroupStatus:
    """``status`` with the decision recorded (``record``)."""
    return replace(status, decisions=record(status.decisions, now=now, action=action, reason=reason))


def duration_text(seconds: float) -> str:
    """A duration as people write it in a service file: 45s, 10m, 1h30m, 5.2s."""
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


def time_text(when: float) -> str:
    """A unix time as UTC ISO 8601 to the second, as the provider JSON writes times."""
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def host_name(host: HostId, hosts: Mapping[HostId, HostRecord]) -> str:
    """The host's name for a person (its id when the record is gone or nameless)."""
    record = hosts.get(host)
    return record.name if record is not None and record.name else host


def count_text(n: int, word: str) -> str:
    """ "1 host", "3 hosts" """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


__all__ = ["CONDITIONS", "MAX_DECISIONS", "SCALE_IN_ACTIONS", "SCALE_OUT_ACTIONS", "count_text",
           "duration_text", "host_name", "record", "recorded", "time_text"]
