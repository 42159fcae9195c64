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

A stall is excused only as far as the leader is still behind because of it (``excused``). The sessions
tell it the age of each report when read (``read``: the time it was read less the time its agent
stamped it); a report is late by its age over the least age any report has had (the floor: transit
time and the clocks' offset). One floor for every host, not one each: a host's own floor, set while the
leader was behind (as it is while a term starts and every host connects), understated its lateness,
and in a 2,000-host run 1,598 sessions broke; with one floor a host whose clock runs behind the others'
looks later than it is, which only excuses more. Once the leader reads every other host's reports on
time again, a host it has not heard from is silent by the whole time:
excusing every stall in full had the passes that replaced a mass failure's first lost hosts hold back
the verdict on the rest (at 2,000 hosts, replicas marked for replacement 12-15 s after their hosts fell
silent, for a heartbeat timeout and grace of 5 s; docs/scaling.md, part 5). Without recent reads there
is no such evidence (the loop is stuck, or every host is silent), and stalls are excused in full.

A silence is also excused as far as the other hosts' reports are late now (``backlog``), stalls or not:
a session worker following 5,000 hosts at load 30 was saturated by thousands of short callbacks between
its stalls, its hosts' reports queued behind them, and hosts whose reports were only queued looked
silent (waves of 200-1,036 broken sessions; docs/scaling.md, part 6). With nothing read there is no
backlog to excuse by, so a host that alone went silent, or every host at once, is found on time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TICK_S = 0.1        # the monitor's period: 10 wake-ups a second for the whole leader
# A wake-up this much later than due is a stall (well under the 1 s usage period). 0.25 s missed the
# backlog a long pass leaves: at 2,000 hosts reports were heard 2 s later than the stalls counted.
THRESHOLD_S = 0.1
REMEMBERED = 4096   # stalls kept at least for ``stalled_since`` (at most 10 a second: 7 minutes or more)
LOGGED_S = 1.0      # stalls this long are logged: a person looking at lost hosts or terms wants to know
READ_WINDOW_S = 1.0  # reads this recent say how far behind the leader reads (agents report every second)
READ_MARGIN_S = 0.5  # added to what the reads say (the floor and the window are estimates)
FLOOR_READS = 10     # reports before the floor is trusted
FLOOR_DRIFT = 0.001  # seconds per second the floor rises (so that a clock set back is followed, slowly)


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
        self._floor = math.inf        # the least age of a report when read (``read``)
        self._floor_at = 0.0
        self._reads = 0
        self._read_at = -math.inf     # when a report was last read (monotonic)
        self._read_late = 0.0         # the latest of the recent reads' lateness ...
        self._read_late_at = -math.inf  # ... noted then
        # The remembered stalls: wall-clock ends in order, and the running total of their lengths
        # (``_totals[k]``: the first k), so that ``stalled_since`` is a bisection, not a walk. It is
        # asked per host on every pass: walking 4,096 stalls for each of 5,000 hosts made a pass at
        # 5,000 hosts take seconds, more stalls, and longer passes.
        self._ends: list[float] = []
        self._totals: list[float] = [0.0]
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
        first = bisect.bisect_right(self._ends, wall_time)  # the first stall that ended after it
        if first == len(self._ends):
            return 0.0
        # Stalls after the first began after it ended; the first may have begun before ``wall_time``.
        length = self._totals[first + 1] - self._totals[first]
        whole = self._totals[-1] - self._totals[first + 1]
        return whole + min(length, self._ends[first] - wall_time)

    def _remember(self, ended: float, length: float) -> None:
        if self._ends and ended < self._ends[-1]:
            ended = self._ends[-1]  # the wall clock was set back: keep the ends in order
        self._ends.append(ended)
        self._totals.append(self._totals[-1] + length)
        if len(self._ends) >= 2 * REMEMBERED:  # forget the older half (amortised)
            cut = len(self._ends) - REMEMBERED
            base = self._totals[cut]
            self._ends = self._ends[cut:]
            self._totals = [t - base for t in self._totals[cut:]]

    def read(self, age: float) -> None:
        """A host's report was just read, ``age`` seconds after its agent stamped it."""
        now = self._clock()
        self._floor = min(age, self._floor + FLOOR_DRIFT * (now - self._floor_at))
        self._floor_at = now
        self._reads += 1
        if self._reads <= FLOOR_READS:
            return
        late = age - self._floor
        self._read_at = now
        if late >= self._read_late or now - self._read_late_at > READ_WINDOW_S:
            self._read_late, self._read_late_at = late, now

    def behind(self) -> float:
        """How far behind the leader reads its hosts now: the lateness of recent reads, the time since the
        last one and ``READ_MARGIN_S``; infinite when nothing was read for ``READ_WINDOW_S``."""
        now = self._clock()
        if now - self._read_at > READ_WINDOW_S:
            return math.inf
        late = self._read_late if now - self._read_late_at <= READ_WINDOW_S else 0.0
        return late + (now - self._read_at) + READ_MARGIN_S

    def excused(self, stalled: float) -> float:
        """Of ``stalled`` seconds the loop stalled during a host's silence, those not to count against it:
        no more than the leader is still behind."""
        return min(stalled, self.behind()) if stalled > 0 else 0.0

    def backlog(self) -> float:
        """How late the recent reports were when read (their age over the floor): how long a report from
        any host waits now before the loop reads it. 0 when nothing was read for ``READ_WINDOW_S``: then
        nothing shows a backlog (the loop is stuck, which ``excused`` covers, or every host is silent)."""
        now = self._clock()
        if now - self._read_at > READ_WINDOW_S or now - self._read_late_at > READ_WINDOW_S:
            return 0.0
        return self._read_late

    def excused_silence(self, silent: float, stalled: float) -> float:
        """Of a host's ``silent`` seconds, during which the loop stalled ``stalled``, those not to count
        against it: the stalls as far as the leader is still behind (``excused``), or as much of the
        silence as other hosts' reports are late now (``backlog``: a loop saturated by short callbacks
        reads reports late without any stall), whichever is more. The two overlap (a stall makes the
        reports read after it late), so they are not added."""
        return max(self.excused(stalled), min(silent, self.backlog()))

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
            self._remember(self._wall_clock(), late)
            if late >= LOGGED_S:
                log.info("the event loop was stalled for %.1fs (not counted against any host)", late)
            self._due = now  # accounted up to now: the monitor's own late wake-up adds nothing more


__all__ = ["THRESHOLD_S", "TICK_S", "LoopStalls"]
