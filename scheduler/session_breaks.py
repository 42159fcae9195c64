"""Agent sessions that broke, summarised in the log.

A session that was following its host and stops (an error on a stream, or no usage report for the
heartbeat timeout) relists the host's containers and opens both streams again. One or two are a host
going away; hundreds in a few seconds are a storm: the leader (or, in a simulation, the machine running
the simulated hosts) too busy to hear the reports in time, every break adding a relist to the load.
One line per break would flood the log at thousands of hosts, so breaks are counted by kind and logged
at most once per ``EVERY_S``: the first break at once, the rest with the next break after the window.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EVERY_S = 10.0


class SessionBreaks:
    def __init__(self, *, every: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._pending: collections.Counter[str] = collections.Counter()
        self._next = 0.0
        self.total: collections.Counter[str] = collections.Counter()  # since start, for tests and benchmarks

    def add(self, kind: str) -> None:
        """A following session broke; ``kind`` says how (``heartbeat missed``, a status code's name...)."""
        self.total[kind] += 1
        self._pending[kind] += 1
        now = self._clock()
        if now < self._next:
            return
        count = sum(self._pending.values())
        kinds = ", ".join(f"{k} x{n}" for k, n in self._pending.most_common())
        log.info("%d agent session%s broke and will relist (%s)", count, "" if count == 1 else "s", kinds)
        self._pending.clear()
        self._next = now + self._every


breaks = SessionBreaks()

__all__ = ["EVERY_S", "SessionBreaks", "breaks"]
