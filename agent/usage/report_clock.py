"""When a host samples its usage and sends its reports: on the wall clock, at one of ten phases.

Every host samples at whole multiples of the sampling interval plus a phase picked from its id: one of
``SLOTS`` points spread over the interval. A ``WatchUsage`` (or ``WatchHost``) subscriber asking for a
report every E seconds gets the first sample of each E-second window of the wall clock, the windows of
each slot starting at the same point of E as its samples do in the interval. Hosts whose
clocks agree (NTP) therefore report in ``SLOTS`` bursts per interval instead of each at the moment it
happened to start, and the process that follows them hears a burst in far fewer wakeups of gRPC's
pollers than one per report: 61 µs of the follower's cpu a report in ten bursts a second against 130
spread out, at 1,000 hosts (``bench/report_arrival.py``; docs/scaling.md, part 20). Ten phases, not
one, so that at 5,000 hosts a burst is 500 reports (tens of milliseconds of the follower's loop), not
all of them, and the reports of a longer interval are spread over it the same way.
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


def slot_of(host_id: str) -> int:
    """Which of the ``SLOTS`` phases the host ``host_id`` samples and reports at."""
    return zlib.crc32(host_id.encode()) % SLOTS


def phase_of(host_id: str, interval: float) -> float:
    """Seconds after each whole multiple of ``interval`` at which the host ``host_id`` samples."""
    return slot_of(host_id) / SLOTS * interval


@dataclass(frozen=True, slots=True)
class ReportClock:
    """Sampling ticks at ``phase + k * interval`` (unix time), and the windows subscribers send in."""

    interval: float
    slot: int = 0

    @classmethod
    def for_host(cls, host_id: str, interval: float) -> ReportClock:
        return cls(interval, slot_of(host_id))

    @property
    def phase(self) -> float:
        return self.slot / SLOTS * self.interval

    def tick(self, wall: float) -> int:
        """The tick a sample taken at ``wall`` belongs to: the nearest, so that waking a little early
        or late does not change it."""
        return round((wall - self.phase) / self.interval)

    def next_tick(self, now: float, last: int) -> tuple[int, float]:
        """The next tick after ``now`` and after tick ``last`` (the last sample's), and the wait until
        it: at most two intervals, the longest a wait can be unless the clock was stepped back."""
        k = max(math.floor((now - self.phase) / self.interval) + 1, last + 1)
        return k, min(self.phase + k * self.interval - now, 2 * self.interval)

    def window(self, tick: int, every: float) -> int:
        """The ``every``-second window tick ``tick`` falls in. A host's windows start at its slot of
        ``every`` (the tick nearest it), so that its reports spread over the window as its samples do
        over the interval: with one report every 3 s, not all hosts in the first second of three.
        Counted in whole ticks, so sampling's jitter never moves a sample to another window. ``every``
        at most the interval: every tick is a window."""
        if every <= self.interval:
            return tick
        start = round(self.slot / SLOTS * every / self.interval)
        return math.floor((tick - start) * self.interval / every + 1e-9)

    def next_report(self, now: float, last: int, every: float) -> tuple[int, float]:
        """For a sender without a sampler of its own (the simulator): the first tick after ``last`` (the
        tick it last reported for) that opens a new ``every``-second window, and the wait until it."""
        k, _ = self.next_tick(now, last)
        opened = self.window(last, every)
        while self.window(k, every) == opened:
            k += 1
        return k, min(max(0.0, self.phase + k * self.interval - now), every + self.interval)


__all__ = ["SLOTS", "ReportClock", "phase_of", "slot_of"]
