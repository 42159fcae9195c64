"""How often one process's agent sessions ask for usage reports: a fixed interval, or ``auto``.

A usage report costs whoever receives it 250-400 µs of cpu, nearly all of it grpc.aio's (docs/scaling.md,
part 9): one a second from each of 5,000 hosts is 1.3-1.9 cores before the receiver does anything else.
Nomad's servers stretch their clients' heartbeat TTL with the cluster's size to stay under
``max_heartbeats_per_second``; ``auto`` does the same in each process that follows hosts (the leader, or
each session worker, for the hosts it follows): every sample while it follows at most
``reports_per_second`` hosts, past that the shortest step of ``LADDER`` that keeps it under. Sessions ask
again when the interval changes (``AgentSession.pace``), and the heartbeat timeout follows: twice the
interval when that is longer than the configured one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Whole seconds and a few halves: each change has every session of the process ask again, so the steps are
# few, and a fleet growing by a host at a time does not re-subscribe at every one.
LADDER = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0)
# About half a core at ~300 µs a report (bench/usage_stream_cost.py); 5,000 hosts in one process: 3 s.
REPORTS_PER_SECOND = 1700.0
# A shorter interval is taken only once the hosts fit it with this much to spare: a fleet hovering at a
# step's edge does not flip between two.
SHRINK_HEADROOM = 0.9
# The agent samples once a second: no report for this long means the host is unreachable (a cut network
# shows no error on an open stream; only silence). Stretched with a longer interval (``heartbeat_for``).
HEARTBEAT_TIMEOUT = 2.0
# A process shortens its interval at most this long after its last change (it lengthens it at once: that
# only lowers its load), so that a fleet shrinking and growing around a step does not have every session
# subscribe again each time.
HOLD_S = 10.0
AUTO = None  # the interval that means ``auto``


@dataclass(frozen=True, slots=True)
class UsagePace:
    """``interval``: seconds between reports (0: every sample, once a second), or None for ``auto``."""

    interval: float | None = None
    reports_per_second: float = REPORTS_PER_SECOND
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT  # with ``auto``: the least; twice a longer interval

    def __post_init__(self) -> None:
        if self.reports_per_second <= 0:
            raise ValueError("usage pace: reports per second must be positive")
        if self.interval is not None and self.interval < 0:
            raise ValueError("usage pace: the interval cannot be negative")

    def interval_for(self, hosts: int, current: float) -> float:
        """The interval for a process following ``hosts`` hosts whose sessions ask for ``current`` now."""
        if self.interval is not None:
            return self.interval
        wanted = _step(hosts / self.reports_per_second)
        if wanted >= current:
            return wanted
        return min(current, _step(hosts / (self.reports_per_second * SHRINK_HEADROOM)))

    def heartbeat_for(self, interval: float) -> float:
        """The heartbeat timeout of a session asking for reports every ``interval`` seconds."""
        if self.interval is not None or interval <= 0:
            return self.heartbeat_timeout
        return max(self.heartbeat_timeout, 2 * interval)


class Pacer:
    """The interval one process's sessions ask for now: ``UsagePace.interval_for`` the hosts it follows,
    lengthened at once, shortened no sooner than ``hold`` seconds after the last change."""

    def __init__(self, pace: UsagePace, *, hold: float = HOLD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pace = pace
        self.interval = pace.interval_for(0, 0.0)
        self._hold = hold
        self._clock = clock
        self._changed_at = -math.inf
        self.due: float | None = None  # when to ask again for a change held back (``clock`` time)

    def update(self, hosts: int) -> float | None:
        """The new interval when it changes now; None when it does not, or not yet (see ``due``)."""
        wanted = self.pace.interval_for(hosts, self.interval)
        self.due = None
        if wanted == self.interval:
            return None
        now = self._clock()
        if wanted < self.interval and now - self._changed_at < self._hold:
            self.due = self._changed_at + self._hold
            return None
        self.interval, self._changed_at = wanted, now
        return wanted


def _step(needed: float) -> float:
    """0 (every sample) when reports once a second fit, else the first step of LADDER at least ``needed``."""
    if needed <= 1.0:
        return 0.0
    return next((step for step in LADDER if step >= needed), LADDER[-1])


__all__ = ["AUTO", "HEARTBEAT_TIMEOUT", "HOLD_S", "LADDER", "REPORTS_PER_SECOND", "Pacer", "UsagePace"]
