"""Garbage-collection pauses, made visible and made rarer.

A collection holds the GIL for as long as it scans, so a long one stalls the event loop *and* the lease
keepalive thread at once (docs/scaling.md, limit 1). A leader placing thousands of replicas creates
records that all survive, and full (generation 2) collections then come every few seconds, 0.2-0.7 s
each on this machine. ``install()`` times every collection and logs those of at least ``LOGGED_S`` with
their generation, so a lost term or a loop stall can be matched with them; ``pauses`` keeps the totals
for tests and benchmarks.

``tune()`` raises the youngest generation's threshold from CPython's 700 to ``YOUNG_THRESHOLD``. A full
collection is considered only every 100 young ones (thresholds 10 and 10) and runs once the objects
promoted since the last exceed a quarter of the old generation. A leader placing replicas promotes
objects that fast: with 700, at 2,000 hosts, a full collection came every 1-2 s, 0.2-1.1 s each, and
found nothing to free, about a quarter of the leader's time (docs/scaling.md). With 50,000 the count
gate holds them back to one every few million allocations; young collections scan at most that many
objects (milliseconds) and still free young cycles, and refcounting frees everything else at once.
Tried and not kept: freezing the survivors after each full collection (``gc.freeze``) — frozen objects
that later become cyclic garbage are never freed (2.2 GiB at 2,000 hosts); full collections only on a
clock (the heap grew to 2 GB between them).

The session workers (``scheduler.session_worker``) do the same in their own processes (until part 31
they kept CPython's thresholds, and at 5,000 hosts their collections held a worker's loop for 39-62 s
while placing 100,000 replicas, against 2-8 s since: docs/scaling.md) and send their totals to the
leader with the next batch after a collection; ``SessionWorkers`` adds them up in ``workers``.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

LOGGED_S = 0.2
YOUNG_THRESHOLD = 50_000


@dataclass
class Pauses:
    count: int = 0
    total_s: float = 0.0
    longest_s: float = 0.0
    by_generation: dict[int, float] = field(default_factory=dict)


pauses = Pauses()   # this process's collections
workers = Pauses()  # its session workers' collections, as they report them (``add_reported``)
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


def tune() -> None:
    """The youngest generation's threshold raised to ``YOUNG_THRESHOLD``; the older ones as they are."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


def install() -> None:
    """Idempotent."""
    if _hook not in gc.callbacks:
        gc.callbacks.append(_hook)


def totals() -> Pauses:
    """A copy of this process's totals, to send (``pauses`` goes on changing)."""
    return Pauses(pauses.count, pauses.total_s, pauses.longest_s, dict(pauses.by_generation))


def add_reported(now: Pauses, before: Pauses | None) -> None:
    """Adds to ``workers`` what a worker's totals ``now`` hold beyond the ones it reported ``before``
    (None: its first report, so all of them: a worker started again reports from zero)."""
    if before is None:
        before = Pauses()
    workers.count += now.count - before.count
    workers.total_s += now.total_s - before.total_s
    workers.longest_s = max(workers.longest_s, now.longest_s)
    for generation, seconds in now.by_generation.items():
        workers.by_generation[generation] = (workers.by_generation.get(generation, 0.0) + seconds
                                             - before.by_generation.get(generation, 0.0))
