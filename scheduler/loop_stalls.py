"""``LoopStalls``: how long the leader's own event loop was stalled, so that silence it caused itself is
not blamed on hosts.

The leader judges hosts by time: an agent session whose usage stream sent nothing for the heartbeat
timeout is broken (``scheduler.agents``), and a host unreachable for ``--host-grace`` has its replicas
replaced (``Controller._unreachable_since``). Both clocks kept running while the leader's loop was stuck
in a long pass: after a stall of a few seconds every session looked silent, every host was marked not
ready and, a grace later, replicas that never stopped were replaced (docs/scaling.md, limit 1). A
monitor task wakes every ``tick`` seconds; a wake-up later than due by more than ``threshold`` is a stall
of that length (the loop could not have run anything else either), added to ``stalled()`` (monotonic
seconds, for the heartbeat) and remembered with its wall-clock end for ``stalled_since(t)`` (for the host
grace, which is counted from recorded wall times). Whoever asks right after a stall, before the monitor
has run, sees it too: ``stalled()`` first accounts for a wake-up that is overdue now. Stalls shorter than
the threshold are not excused, so a host that really went silent is still found within the heartbeat
timeout plus the stalls in between.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TICK_S = 0.1        # the monitor's period: 10 wake-ups a second for the whole leader
# A wake-up this much later than due is a stall (well under the 1 s usage period). 0.25 s missed the
# backlog a long pass leaves: at 2,000 hosts reports were heard 2 s later than the stalls counted.
THRESHOLD_S = 0.1
REMEMBERED = 4096   # stalls kept for ``stalled_since`` (at most 4 a second: a quarter of an hour or more)
LOGGED_S = 1.0      # stalls this long are logged: a person looking at lost hosts or terms wants to know


class LoopStalls:
    """Stalls of the loop that ``start`` runs on (see the module docstring)."""

    def __init__(self, *, tick: float = TICK_S, threshold: float = THRESHOLD_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if tick <= 0 or threshold <= 0:
            raise ValueError("loop stalls: tick and threshold must be positive")
        self._tick = tick
        self._threshold = threshold
        self._clock = clock
        self._wall_clock = wall_clock
        self._due = 0.0
        self._total = 0.0
        self.count = 0  # stalls seen, for logs and tests
        self._recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=REMEMBERED)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._due = self._clock() + self._tick
        self._task = asyncio.get_running_loop().create_task(self._monitor(), name="loop-stalls")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stalled(self) -> float:
        """Seconds the loop has been stalled since ``start``, including a stall that has just ended."""
        self._observe()
        return self._total

    def stalled_since(self, wall_time: float) -> float:
        """Seconds of stall after ``wall_time`` (``time.time()``): time no host can be blamed for."""
        self._observe()
        out = 0.0
        for ended, length in reversed(self._recent):
            if ended <= wall_time:
                break
            out += min(length, ended - wall_time)
        return out

    async def _monitor(self) -> None:
        while True:
            self._due = self._clock() + self._tick
            await asyncio.sleep(self._tick)
            self._observe()

    def _observe(self) -> None:
        if self._task is None:
            return  # not monitoring: no due time to be late for
        now = self._clock()
        late = now - self._due
        if late > self._threshold:
            self._total += late
            self.count += 1
            self._recent.append((self._wall_clock(), late))
            if late >= LOGGED_S:
                log.info("the event loop was stalled for %.1fs (not counted against any host)", late)
            self._due = now  # accounted up to now: the monitor's own late wake-up adds nothing more


__all__ = ["THRESHOLD_S", "TICK_S", "LoopStalls"]
