"""agent/streams.py: coalesced progress (bounded whatever the reader does, nothing but superseded reports
lost, the end never delayed), uploads written off the event loop (content, full disk, cancellation), and
streams interleaved (``WatchHost``: as they come, one item asked of each at a time, all closed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from agent.errors import ResourceExhausted
from agent.streams import LatestPerKey, drain_coalesced, interleave, write_stream_to


def test_latest_per_key_replaces_in_place_and_keeps_order() -> None:
    async def scenario() -> list[tuple[str, int]]:
        box: LatestPerKey[str, tuple[str, int]] = LatestPerKey(asyncio.get_running_loop())
        for item in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)]:
            box.put(item[0], item)
        assert box.pending() == 3
        taken = box.take()
        assert box.pending() == 0 and box.take() == []
        return taken

    assert asyncio.run(scenario()) == [("a", 3), ("b", 1), ("c", 1)]


def test_a_reader_that_does_not_read_costs_one_report_per_key() -> None:
    async def scenario() -> None:
        box: LatestPerKey[int, int] = LatestPerKey(asyncio.get_running_loop())

        def worker() -> None:
            for i in range(100_000):
                box.put(i % 3, i)

        await asyncio.to_thread(worker)  # nobody reads meanwhile; the worker never blocks
        assert box.pending() == 3
        assert box.take() == [99_999, 99_997, 99_998]  # the newest per key, keys in first-seen order

    asyncio.run(scenario())


def test_drain_coalesced_keeps_milestones_and_ends_with_the_last_reports() -> None:
    layers = 4

    async def scenario() -> list[tuple[str, str, int]]:
        box: LatestPerKey[tuple[str, str], tuple[str, str, int]] = LatestPerKey(asyncio.get_running_loop())
        release = threading.Event()

        def work() -> str:
            box.put(("", "resolving"), ("", "resolving", 0))
            for layer in range(layers):
                name = f"l{layer}"
                for done in range(0, 5001, 50):
                    box.put((name, "downloading"), (name, "downloading", done))
                if layer == 1:
                    release.wait(10)  # the reader is stuck behind us: it must not matter
                box.put((name, "layer-done"), (name, "layer-done", 5000))
            return "image"

        job = asyncio.ensure_future(asyncio.to_thread(work))
        seen = []
        async for item in drain_coalesced(job, box, interval=0.01):
            seen.append(item)
            if len(seen) == 1:
                release.set()
        assert job.result() == "image"
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == ("", "resolving", 0)
    assert [s for s in seen if s[1] == "layer-done"] == [(f"l{i}", "layer-done", 5000) for i in range(layers)]
    for layer in range(layers):
        reports = [s[2] for s in seen if s[0] == f"l{layer}" and s[1] == "downloading"]
        assert reports and reports == sorted(reports) and reports[-1] == 5000
        done_at = seen.index((f"l{layer}", "layer-done", 5000))
        assert all(seen.index((f"l{layer}", "downloading", r)) < done_at for r in reports)
    assert len(seen) < layers * 102  # coalesced: not one message per report


def test_drain_coalesced_leaves_the_jobs_error_to_the_caller() -> None:
    async def scenario() -> None:
        box: LatestPerKey[str, str] = LatestPerKey(asyncio.get_running_loop())

        def work() -> None:
            box.put("x", "before")
            raise ResourceExhausted("disk full")

        job = asyncio.ensure_future(asyncio.to_thread(work))
        assert [i async for i in drain_coalesced(job, box, interval=0.01)] == ["before"]
        with pytest.raises(ResourceExhausted):
            job.result()

    asyncio.run(scenario())


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_upload_is_written_whole(tmp_path: Path) -> None:
    target = tmp_path / "upload.tar"
    target.touch()
    parts = [bytes([i % 251]) * (700 << 10) for i in range(20)]  # several 4 MiB batches
    written = asyncio.run(write_stream_to(target, _chunks(parts), first=b"head"))
    assert written == 4 + sum(map(len, parts))
    assert target.read_bytes() == b"head" + b"".join(parts)


def test_a_full_disk_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted, match="No space left"):
        asyncio.run(write_stream_to("/dev/full", _chunks([b"x" * (5 << 20), b"y"])))


def test_the_loop_stays_responsive_during_an_upload(tmp_path: Path) -> None:
    target = tmp_path / "big"
    target.touch()

    async def scenario() -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def parts() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"z" * (1 << 20)
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await write_stream_to(target, parts())
        done.set()
        await task
        return ticks

    assert asyncio.run(scenario()) > 64  # the loop ran other work between chunks
    assert target.stat().st_size == 64 << 20


class _Source:
    """An async generator's stand-in that yields what is put, counting what it was asked and whether its
    ``finally`` ran."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.asked = 0
        self.closed = False

    async def items(self) -> AsyncGenerator[object, None]:
        try:
            while True:
                self.asked += 1
                item = await self.queue.get()
                if isinstance(item, Exception):
                    raise item
                if item is StopAsyncIteration:
                    return
                yield item
        finally:
            self.closed = True


def test_interleave_yields_each_item_as_its_source_produces_it() -> None:
    async def scenario() -> list[tuple[int, object]]:
        a, b = _Source(), _Source()
        merged = interleave(a.items(), b.items())
        got = []
        for which, item in [(b, "b1"), (a, "a1"), (a, "a2"), (b, "b2")]:
            which.queue.put_nowait(item)
            got.append(await anext(merged))
        await merged.aclose()
        assert a.closed and b.closed  # the one waiting and the one whose item was last, both closed
        return got

    assert asyncio.run(scenario()) == [(1, "b1"), (0, "a1"), (0, "a2"), (1, "b2")]


def test_interleave_asks_each_source_for_one_item_at_a_time() -> None:
    """A slow consumer keeps one item waiting per source: a source that hands out the newest state when
    asked (usage) is not drained into a backlog meanwhile."""
    async def scenario() -> tuple[int, list[tuple[int, object]]]:
        a, b = _Source(), _Source()
        merged = interleave(a.items(), b.items())
        for i in range(5):
            a.queue.put_nowait(i)
        b.queue.put_nowait("b")
        first = await anext(merged)
        await asyncio.sleep(0)  # (let the sources run: nothing else may be taken from them)
        asked = a.asked
        rest = [await anext(merged) for _ in range(5)]
        await merged.aclose()
        return asked, [first, *rest]

    asked, got = asyncio.run(scenario())
    assert asked == 1
    assert sorted(got, key=repr) == sorted([(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, "b")], key=repr)
    assert [item for which, item in got if which == 0] == [0, 1, 2, 3, 4]


def test_interleave_ends_with_the_first_source_that_ends_or_fails() -> None:
    async def scenario(end: object) -> tuple[object, bool]:
        a, b = _Source(), _Source()
        merged = interleave(a.items(), b.items())
        a.queue.put_nowait(end)
        try:
            outcome: object = await anext(merged)
        except StopAsyncIteration:
            outcome = "ended"
        except ValueError as err:
            outcome = err
        return outcome, b.closed

    assert asyncio.run(scenario(StopAsyncIteration)) == ("ended", True)
    failed, closed = asyncio.run(scenario(ValueError("no")))
    assert isinstance(failed, ValueError) and str(failed) == "no" and closed
