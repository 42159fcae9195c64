"""``scheduler.gc_pauses``: every collection is timed once installed, long ones are logged, installing
twice adds one hook, and tuning makes young collections rarer."""

from __future__ import annotations

import gc
import logging

import pytest

from scheduler import gc_pauses


def test_collections_are_timed_and_long_ones_logged(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    gc_pauses.install()
    gc_pauses.install()
    try:
        assert gc.callbacks.count(gc_pauses._hook) == 1
        before = gc_pauses.pauses.count
        monkeypatch.setattr(gc_pauses, "LOGGED_S", 0.0)  # every collection counts as long
        with caplog.at_level(logging.INFO, logger="scheduler.gc_pauses"):
            gc.collect()
        assert gc_pauses.pauses.count == before + 1
        assert gc_pauses.pauses.by_generation[2] > 0
        assert any("garbage collection (generation 2) held the interpreter" in r.getMessage()
                   for r in caplog.records)
    finally:
        gc.callbacks.remove(gc_pauses._hook)


def test_tuning_raises_only_the_young_threshold_so_allocations_trigger_fewer_collections() -> None:
    saved = gc.get_threshold()
    gc_pauses.install()
    try:
        gc.set_threshold(700, 7, 9)
        gc_pauses.tune()
        assert gc.get_threshold() == (gc_pauses.YOUNG_THRESHOLD, 7, 9)
        gc.collect()  # counts start from zero
        before = gc_pauses.pauses.count
        kept = [[i] for i in range(5_000)]  # 5,000 tracked objects: 7 young collections at CPython's 700
        assert gc_pauses.pauses.count == before, "no collection below the raised threshold"
        assert len(kept) == 5_000
    finally:
        gc.set_threshold(*saved)
        gc.callbacks.remove(gc_pauses._hook)
