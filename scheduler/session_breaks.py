"""Agent sessions that broke, summarised in the log.

A session that was following its host and stops (an error on a stream, or no usage report for the
heartbeat timeout) relists the host's containers and opens both streams again. One or two are a host
going away; hundreds in a few seconds are a storm: the leader (or, in a simulation, the machine running
the simulated hosts) too busy to hear the reports in time, every break adding a relist to the load.
One line per break would flood the log at thousands of hosts, so breaks are counted by kind and logged
at most once per ``EVERY_S``: the first break at once, the rest when the window closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
        self._scheduled = False
        self.total: collections.Counter[str] = collections.Counter()  # since start, for tests and benchmarks

    def add(self, kind: str) -> None:
        """A following session broke; ``kind`` says how (``heartbeat missed``, a status code's name...)."""
        self.total[kind] += 1
        self._pending[kind] += 1
        now = self._clock()
        if now >= self._next:
            self._emit(now)
        elif not self._scheduled:
            # The window's breaks are logged when it closes, even if no other break follows.
            with contextlib.suppress(RuntimeError):  # no running loop: the next break logs them
                asyncio.get_running_loop().call_later(self._next - now, self._flush)
                self._scheduled = True

    def _flush(self) -> None:
        self._scheduled = False
        if self._pending:
            self._emit(self._clock())

    def _emit(self, now: float) -> None:
        count = sum(self._pending.values())
        kinds = ", ".join(f"{k} x{n}" for k, n in self._pending.most_common())
        log.info("%d agent session%s broke and will relist (%s)", count, "" if count == 1 else "s", kinds)
        self._pending.clear()
        self._next = now + self._every


breaks = SessionBreaks()

__all__ = ["EVERY_S", "SessionBreaks", "breaks"]
