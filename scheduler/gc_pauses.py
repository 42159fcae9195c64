"""Garbage-collection pauses, made visible.

A collection holds the GIL for as long as it scans, so a long one stalls the event loop *and* the lease
keepalive thread at once (docs/scaling.md, limit 1). A leader placing thousands of replicas creates
records that all survive, and full (generation 2) collections then come every few seconds, 0.2-0.7 s
each on this machine. ``install()`` times every collection and logs those of at least ``LOGGED_S`` with
their generation, so a lost term or a loop stall can be matched with them; ``pauses`` keeps the totals
for tests and benchmarks. (Freezing the survivors after each full collection, ``gc.freeze``, was tried:
the pauses stayed as long, and frozen objects that later become cyclic garbage are never freed.)
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

LOGGED_S = 0.2


@dataclass
class Pauses:
    count: int = 0
    total_s: float = 0.0
    longest_s: float = 0.0
    by_generation: dict[int, float] = field(default_factory=dict)


pauses = Pauses()
_started: list[float] = []


def _hook(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
        return
    if not _started:
        return
    took = time.perf_counter() - _started.pop()
    generation = int(info.get("generation", -1))
    pauses.count += 1
    pauses.total_s += took
    pauses.longest_s = max(pauses.longest_s, took)
    pauses.by_generation[generation] = pauses.by_generation.get(generation, 0.0) + took
    if took >= LOGGED_S:
        log.info("garbage collection (generation %d) held the interpreter for %.2fs (%d collected)",
                 generation, took, int(info.get("collected", 0)))


def install() -> None:
    """Idempotent."""
    if _hook not in gc.callbacks:
        gc.callbacks.append(_hook)
