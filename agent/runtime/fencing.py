"""Fencing: a deposed controller's late requests cannot start, stop or remove anything.

A controller (the scheduler) sends its name and a monotonic epoch — its leadership term — with every
mutating request. The agent remembers the highest epoch it has seen per owner in ``<root>/fences.json``
and refuses a request carrying an older one with ``StaleEpoch`` (FAILED_PRECONDITION). A request with a
new highest epoch waits until that epoch is on disk (``agent.durable``, fsync) before it acts, so an agent
restart can never forget a newer leader and let the old one back in. Requests without a fence (a person at
the CLI) are not checked: operators can always act.

Persisting is one writer at a time through a lock, writing the latest map: a burst of requests with the
same new epoch costs one fsync, and an epoch already on disk costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from agent import durable
from agent.errors import InvalidArgument, StaleEpoch

log = logging.getLogger(__name__)

FENCES_FILE = "fences.json"
_OWNER = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Fence:
    owner: str = ""
    epoch: int = 0

    @property
    def fenced(self) -> bool:
        return bool(self.owner) and self.epoch > 0


UNFENCED = Fence()


class FenceBook:
    """The highest epoch seen per owner, persisted in ``root/fences.json``."""

    def __init__(self, root: Path) -> None:
        self.path = root / FENCES_FILE
        self._highest: dict[str, int] = self._load()
        self._durable = dict(self._highest)
        self._lock = asyncio.Lock()

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            # Refusing to start would take every container's management down with it; starting with no
            # memory of epochs admits at most the requests of leaders older than the newest — log loudly.
            log.error("cannot read %s (%s): starting with no fencing history", self.path, err)
            return {}
        return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def highest(self, owner: str) -> int:
        return self._highest.get(owner, 0)

    async def admit(self, fence: Fence) -> None:
        """Return once ``fence`` may act (its epoch is the owner's highest and is on disk); raise
        ``StaleEpoch`` if a newer epoch of the same owner was seen, ``InvalidArgument`` for a bad owner."""
        if not fence.fenced:
            return
        if not _OWNER.match(fence.owner):
            raise InvalidArgument(f"invalid fence owner {fence.owner!r}: 1-64 of a-z, A-Z, 0-9, '_', '.', "
                                  "'-'")
        highest = self._highest.get(fence.owner, 0)
        if fence.epoch < highest:
            raise StaleEpoch(
                f"stale fence: {fence.owner} epoch {fence.epoch} is older than epoch {highest} this agent "
                "already saw; a newer leader is in charge, so this request was not carried out"
            )
        self._highest[fence.owner] = fence.epoch
        async with self._lock:
            if self._durable.get(fence.owner, 0) >= fence.epoch:
                return
            snapshot = dict(self._highest)
            text = json.dumps(snapshot, sort_keys=True)
            await asyncio.to_thread(durable.write_file, self.path, text)
            self._durable = snapshot


__all__ = ["FENCES_FILE", "UNFENCED", "Fence", "FenceBook"]
