"""``ConnectGate``: at most so many agent sessions connecting at once in one process.

A new leader, or a new session worker, starts a session for every host at once. Connecting costs a
listing and two streams each; 5,000 at once kept a session worker's loop saturated for minutes, every
report was read late, and sessions whose first report waited behind that work were taken for silent:
they broke, connected again and queued behind the same work (docs/scaling.md, part 7). The gate lets
``limit`` sessions connect at a time. A session holds a slot from the start of an attempt until it
follows its host (connected and completely listed) or the attempt ends. A session waiting for a slot
has not begun its attempt: its heartbeat watchdog is not running, and the controller keeps the host's
recorded status meanwhile, since the session has seen nothing wrong (``Controller._status``).
"""

from __future__ import annotations

import asyncio

CONNECT_LIMIT = 256  # sessions connecting at once per process (listing and opening streams); 64 made
# 5,000 hosts ready 19 s after they registered, against 8 s ungated, in one run each (docs/scaling.md)


class ConnectGate:
    def __init__(self, limit: int = CONNECT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("connect gate: the limit must be at least 1")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self.waiting = 0     # sessions waiting for a slot now (for tests and logs)
        self.connecting = 0  # slots held now

    async def enter(self) -> None:
        """Waits for a slot (first come, first served)."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.connecting += 1

    def leave(self) -> None:
        self.connecting -= 1
        self._slots.release()


__all__ = ["CONNECT_LIMIT", "ConnectGate"]
