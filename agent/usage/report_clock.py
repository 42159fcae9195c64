"""When a host samples its usage and sends its reports: on the wall clock, at one of ten phases.

Every host samples at whole multiples of the sampling interval plus a phase picked from its id: one of
``SLOTS`` points spread over the interval. A ``WatchUsage`` (or ``WatchHost``) subscriber asking for a
report every E seconds gets the first sample of each E-second window of the wall clock. Hosts whose
clocks agree (NTP) therefore report in ``SLOTS`` bursts per interval instead of each at the moment it
happened to start, and the process that follows them hears each burst in one wakeup of gRPC's pollers
rather than one per report: a report cost the follower 102 µs of cpu spread out, 79 µs arriving together
at 1,000 hosts (``bench/usage_stream_cost.py``; docs/scaling.md, part 20). Ten phases, not one, so that
at 5,000 hosts a burst is 500 reports (tens of milliseconds of the follower's loop), not all of them.
Hosts whose clocks disagree report at scattered moments, as before: nothing depends on the alignment.

A clock stepped back does not stall sampling (a wait is never longer than two intervals), and a
subscriber sends whenever the window changes, backwards too, so it never falls silent while the clock
catches up.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

SLOTS = 10


def phase_of(host_id: str, interval: float) -> float:
    """Seconds after each whole multiple of ``interval`` at which the host ``host_id`` samples."""
    return (zlib.crc32(host_id.encode()) % SLOTS) / SLOTS * interval


@dataclass(frozen=True, slots=True)
class ReportClock:
    """Sampling ticks at ``phase + k * interval`` (unix time), and the windows subscribers send in."""

    interval: float
    phase: float = 0.0

    @classmethod
    def for_host(cls, host_id: str, interval: float) -> ReportClock:
        return cls(interval, phase_of(host_id, interval))

    def tick(self, wall: float) -> int:
        """The tick a sample taken at ``wall`` belongs to: the nearest, so that waking a little early
        or late does not change it."""
        return round((wall - self.phase) / self.interval)

    def next_tick(self, now: float, last: int) -> tuple[int, float]:
        """The next tick after ``now`` and after tick ``last`` (the last sample's), and the wait until
        it: at most two intervals, the longest a wait can be unless the clock was stepped back."""
        k = max(math.floor((now - self.phase) / self.interval) + 1, last + 1)
        return k, min(self.phase + k * self.interval - now, 2 * self.interval)

    def window(self, wall: float, every: float) -> int:
        """The ``every``-second window of the wall clock a sample taken at ``wall`` falls in, counted
        from the host's phase, with half an interval of slack: a sample of a window's first tick that
        is a little early still opens it. ``every`` at most the interval: every tick is a window."""
        if every <= self.interval:
            return self.tick(wall)
        return math.floor((wall - self.phase + self.interval / 2) / every)

    def next_report(self, now: float, last: int, every: float) -> tuple[int, float]:
        """For a sender without a sampler of its own (the simulator): the first tick after ``last`` that
        opens a new ``every``-second window, and the wait until it."""
        k, _ = self.next_tick(now, last)
        opened = self.window(self.phase + last * self.interval, every)
        for _ in range(max(1, math.ceil(every / self.interval)) + 1):
            if self.window(self.phase + k * self.interval, every) != opened:
                break
            k += 1
        return k, min(max(0.0, self.phase + k * self.interval - now), every + self.interval)


__all__ = ["SLOTS", "ReportClock", "phase_of"]
