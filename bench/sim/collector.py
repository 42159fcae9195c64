"""The simulator process's garbage collector: timed always, tuned unless asked for CPython's thresholds.

One simulator process holds a thousand hosts' objects (every host's containers, servers and streams),
where a real agent's heap is one host's: with CPython's thresholds (a young collection every 700
allocations), its collections promote that heap into the old generations and scan it again and again,
on the cores the benchmark measures the scheduler on. ``tuned`` gives it the scheduler's own settings
(``scheduler.gc_pauses.tune``: young collections every 50,000 allocations); ``cpython`` keeps CPython's,
as every run before part 32 of docs/scaling.md did. Either way the collections are timed
(``scheduler.gc_pauses``' hook), and ``stats`` reports their total.
"""

from __future__ import annotations

import gc

from scheduler import gc_pauses

MODES = ("tuned", "cpython")


def setup(mode: str) -> None:
    """Times every collection from now on and, for ``tuned``, raises the young threshold."""
    if mode not in MODES:
        raise ValueError(f"garbage collector mode {mode!r}: expected one of {', '.join(MODES)}")
    gc_pauses.install()
    if mode == "tuned":
        gc_pauses.tune()


def figures() -> dict[str, object]:
    """What ``stats`` reports: the collections so far, their total time, and the young threshold."""
    pauses = gc_pauses.totals()
    return {"gc_collections": pauses.count, "gc_pause_s": round(pauses.total_s, 3),
            "gc_young_threshold": gc.get_threshold()[0]}
