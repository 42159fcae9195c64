"""``scheduler.gc_pauses``: every collection is timed once installed, long ones are logged, installing
twice adds one hook, and tuning makes young collections rarer; a session worker's process is set up the
same way, and what workers report is added up without counting anything twice."""

from __future__ import annotations

import gc
import logging

import pytest

from scheduler import gc_pauses, session_worker


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


def test_a_session_worker_collects_as_rarely_as_the_leader_and_times_its_collections() -> None:
    saved = gc.get_threshold()
    installed = gc_pauses._hook in gc.callbacks
    try:
        gc.set_threshold(700, 10, 10)  # CPython's, which a worker kept until part 31
        session_worker.collect_rarely()
        assert gc.get_threshold() == (gc_pauses.YOUNG_THRESHOLD, 10, 10)
        assert gc_pauses._hook in gc.callbacks
    finally:
        gc.set_threshold(*saved)
        if not installed:
            gc.callbacks.remove(gc_pauses._hook)


def test_what_workers_report_is_added_once_and_a_restarted_worker_counts_from_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_pauses, "workers", gc_pauses.Pauses())
    first = gc_pauses.Pauses(2, 0.5, 0.4, {0: 0.1, 2: 0.4})
    gc_pauses.add_reported(first, None)
    later = gc_pauses.Pauses(5, 1.5, 0.9, {0: 0.2, 1: 0.1, 2: 1.2})
    gc_pauses.add_reported(later, first)  # totals so far: only what is new counts
    assert gc_pauses.workers.count == 5
    assert gc_pauses.workers.total_s == pytest.approx(1.5)
    assert gc_pauses.workers.by_generation == pytest.approx({0: 0.2, 1: 0.1, 2: 1.2})
    # another worker, or the same one started again: its first report counts in full
    gc_pauses.add_reported(gc_pauses.Pauses(1, 0.3, 0.3, {2: 0.3}), None)
    assert gc_pauses.workers.count == 6
    assert gc_pauses.workers.by_generation[2] == pytest.approx(1.5)
    assert gc_pauses.workers.longest_s == 0.9


def test_totals_are_a_copy_that_later_collections_do_not_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fixed Pauses, so that no collection in between (the hook may be installed) changes what is compared
    monkeypatch.setattr(gc_pauses, "pauses", gc_pauses.Pauses(2, 1.0, 0.6, {2: 1.0}))
    copy = gc_pauses.totals()
    assert copy == gc_pauses.Pauses(2, 1.0, 0.6, {2: 1.0}) and copy is not gc_pauses.pauses
    gc_pauses.pauses.by_generation[2] += 0.5
    gc_pauses.pauses.count += 1
    assert copy == gc_pauses.Pauses(2, 1.0, 0.6, {2: 1.0})
