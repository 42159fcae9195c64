"""``scheduler.gc_pauses``: every collection is timed once installed, long ones are logged, and installing
twice adds one hook."""

from __future__ import annotations

import asyncio
import contextlib
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


def test_full_collections_come_only_on_the_schedulers_clock() -> None:
    """After ``rare_full_collections`` no allocation starts a full collection; its task runs them."""
    before = gc.get_threshold()
    gc_pauses.install()
    try:
        collect = gc_pauses.rare_full_collections(every=0.01)
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] >= 1 << 30
        full = gc_pauses.pauses.by_generation.get(2, 0.0)
        junk = [[[] for _ in range(10)] for _ in range(200_000)]  # many generation-1 collections
        del junk
        assert gc_pauses.pauses.by_generation.get(2, 0.0) == full  # none started by allocating

        async def one_tick() -> None:
            task = asyncio.create_task(collect)
            while gc_pauses.pauses.by_generation.get(2, 0.0) == full:  # bounded: the task's next tick
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(asyncio.wait_for(one_tick(), 10))
    finally:
        gc.set_threshold(*before)
        gc.callbacks.remove(gc_pauses._hook)
