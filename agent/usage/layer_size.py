"""Bytes in each container's writable layer, measured cheaply: a budgeted, resumable walk.

Walking every upper directory every second would make sampling cost grow with the files containers
write. Instead each layer is re-measured at most every ``refresh_seconds``, and one ``advance`` call (one
per sampling interval) stats at most about ``budget_entries`` directory entries across all layers; a walk
that runs out of budget resumes where it stopped at the next call. The number reported is the last
*completed* walk (``None`` before the first finishes), so it is never a half-counted figure. Bytes are
allocated blocks (``st_blocks * 512``) of everything but directories, like ``shoal system df``. Only
``lstat`` is used: no file is opened or read, no symlink followed.

Not thread-safe: the sampler calls it from its single worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Walk:
    pending: list[str]
    bytes: int = 0


@dataclass
class _Layer:
    upper: Path
    last_bytes: int | None = None
    next_due: float = 0.0
    walk: _Walk | None = None


class WritableLayerSizer:
    def __init__(self, *, refresh_seconds: float = 10.0, budget_entries: int = 5000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh = refresh_seconds
        self._budget = budget_entries
        self._clock = clock
        self._layers: dict[str, _Layer] = {}

    def size(self, key: str) -> int | None:
        """The last completed measurement of ``key``'s layer, ``None`` if none has finished yet."""
        layer = self._layers.get(key)
        return None if layer is None else layer.last_bytes

    def advance(self, uppers: Mapping[str, Path]) -> int:
        """Track exactly the layers in ``uppers`` (key → upper dir) and spend one round of budget on
        those due, oldest first; return the number of entries stat'ed."""
        for key in list(self._layers):
            if key not in uppers or self._layers[key].upper != uppers[key]:
                del self._layers[key]
        for key, upper in uppers.items():
            self._layers.setdefault(key, _Layer(upper=upper))
        now = self._clock()
        budget = self._budget
        # A walk in progress and a never-measured layer both have an old next_due, so they go first.
        due = sorted((layer for layer in self._layers.values() if layer.next_due <= now),
                     key=lambda layer: layer.next_due)
        for layer in due:
            if budget <= 0:
                break
            if layer.walk is None:
                layer.walk = _Walk(pending=[str(layer.upper)])
            budget -= _walk_some(layer.walk, budget)
            if not layer.walk.pending:
                layer.last_bytes = layer.walk.bytes
                layer.walk = None
                layer.next_due = now + self._refresh
        return self._budget - budget


def _walk_some(walk: _Walk, budget: int) -> int:
    """Process whole directories from ``walk.pending`` until ``budget`` entries are spent (a directory
    is never split, so one huge directory can overrun the budget once); return entries processed."""
    spent = 0
    while walk.pending and spent < budget:
        directory = walk.pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    spent += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            walk.pending.append(entry.path)
                        else:
                            walk.bytes += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue  # removed while we looked
        except OSError:
            spent += 1  # the directory vanished or is unreadable: count the attempt, move on
    return spent
