"""Whether the scheduler's event loop still runs: ``LoopAlive`` notes it, ``hung_for`` judges it.

A leader's lease is kept off its main event loop (a keeper process or a thread, ``scheduler.keeper``,
``scheduler.keepalive``), so that passes, collections and stalls of 5-23 s at 5,000 hosts do not end
terms (docs/scaling.md). The other side of that: a leader whose loop never runs again — a deadlock, a
call that never returns, a process stopped by a debugger or SIGSTOP — kept its term for as long as the
keeper lived, and with it the cluster had no one placing or replacing anything. ``LoopAlive`` runs on the
loop and notes the monotonic time every ``ALIVE_EVERY_S``; whoever keeps the lease lets the term go once
that loop has been silent longer than ``--leader-hang-limit`` (``ElectionSettings.hang_limit_s``, 60 s by
default: well above the longest stall measured at 5,000 hosts on a loaded machine, 23 s), revoking the
lease so that another instance leads at once. Letting it go is safe for the same reason keeping it
through a stall is: every commit is guarded by the term's epoch and every agent call fenced by it, so
the hung leader, if it ever runs again, can no longer act; it learns that its term ended and follows.
``/healthz`` answers 503 while the loop has been silent that long, for a supervisor that restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

ALIVE_EVERY_S = 0.25       # how often the loop says it runs (a line on a pipe, or a float written)
DEFAULT_HANG_LIMIT_S = 60.0
MIN_HANG_LIMIT_S = 1.0     # well above ALIVE_EVERY_S: a loop that runs is never taken for a hung one
# A silence over the limit is judged again this much later: the keeper's own loop may have been held
# (a loaded machine) with the scheduler's lines waiting in its pipe, unread.
CONFIRM_S = 2 * ALIVE_EVERY_S

Clock = Callable[[], float]


class LoopAlive:
    """When the event loop ``start`` was called on last ran (``at``, monotonic seconds); ``on_tick`` is
    called on that loop with the time, every ``every`` seconds, while it runs."""

    def __init__(self, *, every: float = ALIVE_EVERY_S, clock: Clock = time.monotonic,
                 on_tick: Callable[[float], None] | None = None) -> None:
        self._every = every
        self._clock = clock
        self._on_tick = on_tick
        self.at = clock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.at = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-alive")

    def silent_for(self) -> float:
        return max(0.0, self._clock() - self.at)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self.at = self._clock()
            if self._on_tick is not None:
                self._on_tick(self.at)
            await asyncio.sleep(self._every)


async def hung_for(alive: Callable[[], float], limit: float, *, clock: Clock = time.monotonic) -> float:
    """Returns how long the loop whose last sign of life ``alive`` tells has been silent, once that is
    over ``limit`` seconds on two looks ``CONFIRM_S`` apart (never returns while it runs)."""
    over = False
    while True:
        silent = clock() - alive()
        if silent > limit:
            if over:
                return silent
            over = True
            await asyncio.sleep(CONFIRM_S)
            continue
        over = False
        await asyncio.sleep(min(max(limit - silent, CONFIRM_S), 1.0))


def hang_reason(silent: float, limit: float) -> str:
    return (f"the scheduler's event loop showed no sign of life for {silent:.1f}s "
            f"(--leader-hang-limit {limit:g}s): let the term go for another instance to lead")


__all__ = ["ALIVE_EVERY_S", "DEFAULT_HANG_LIMIT_S", "MIN_HANG_LIMIT_S", "LoopAlive", "hang_reason",
           "hung_for"]
