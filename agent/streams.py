"""Bridging work that reports as it goes (threads, child processes) to async streams, and streams of
bytes to files, without letting either side stall the other or the event loop.

* ``drain_until_done``: forward every queued item, in order, until a job is done (exec output).
* ``LatestPerKey`` + ``drain_coalesced``: progress from worker threads (import, pull) where only the
  newest report per key matters. The worker never blocks and never makes the loop wake per report; the
  stream sends at most one batch per interval, so a slow client costs one pending report per key (not a
  backlog) and never slows the work, which other clients may share.
* ``write_stream_to``: an upload, written to a file in a worker thread while the next chunks arrive,
  with at most two batches in memory.
* ``interleave``: several streams as one, each item as its stream produces it (``WatchHost``: a host's
  events and usage on one gRPC stream).
* ``singly``: a stream of one-item lists as a stream of the items (``WatchEvents``, which sends the
  event batches ``WatchHost`` can send one event at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Hashable
from typing import Any, Generic, TypeVar

from agent import durable

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


async def drain_until_done(job: asyncio.Future[Any], queue: asyncio.Queue[T]) -> AsyncIterator[T]:
    """Yield queued items as they arrive until ``job`` has finished and the queue is empty.

    The job's exception (if any) is left for the caller to collect with ``job.result()``.
    """
    while not (job.done() and queue.empty()):
        getter: asyncio.Future[T] = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()


class LatestPerKey(Generic[K, T]):
    """A mailbox from worker threads to one reader on the event loop.

    ``put`` (any thread, never blocks): an item whose key is already waiting replaces it in place, so
    what waits is bounded by the number of keys; other keys queue in arrival order. Only the first put
    into an empty mailbox wakes the loop. ``take`` (loop) empties it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: dict[K, T] = {}
        self._wake_pending = False
        self._ready = asyncio.Event()

    def put(self, key: K, item: T) -> None:
        with self._lock:
            self._items[key] = item  # a dict keeps a replaced key in its first position
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._ready.set)

    def take(self) -> list[T]:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
            self._wake_pending = False
        self._ready.clear()
        return items

    def pending(self) -> int:
        with self._lock:
            return len(self._items)

    async def wait(self) -> None:
        await self._ready.wait()


async def drain_coalesced(job: asyncio.Future[Any], mailbox: LatestPerKey[Any, T], *,
                          interval: float) -> AsyncIterator[T]:
    """Yield what ``mailbox`` holds, one batch at most every ``interval`` seconds, until ``job`` is
    done; then the rest at once. The job's exception is left for ``job.result()``."""
    loop = asyncio.get_running_loop()
    next_batch = loop.time()
    while True:
        if job.done():
            for item in mailbox.take():  # everything put before the job ended is in here
                yield item
            return
        waiter = asyncio.ensure_future(mailbox.wait())
        try:
            await asyncio.wait({waiter, job}, return_when=asyncio.FIRST_COMPLETED)
            delay = next_batch - loop.time()
            if delay > 0 and not job.done():
                await asyncio.wait({job}, timeout=delay)
        finally:
            waiter.cancel()
        if job.done():
            continue
        for item in mailbox.take():
            yield item  # a slow client holds us here; meanwhile new reports replace older ones
        next_batch = loop.time() + interval


async def singly(batches: AsyncGenerator[list[T], None]) -> AsyncGenerator[T, None]:
    """The first item of each list ``batches`` hands out (asked for one at a time: lists of one). Closing
    this closes ``batches`` at once (and whatever it holds, such as an event log's watcher), not when
    the garbage collector gets to it."""
    async with contextlib.aclosing(batches):
        async for batch in batches:
            yield batch[0]


async def interleave(*sources: AsyncGenerator[T, None]) -> AsyncGenerator[tuple[int, T], None]:
    """``(index, item)`` from each of ``sources`` as it produces them, asking each for one item at a time:
    a source that hands out the newest state when asked (a usage subscription) keeps at most one item
    waiting behind a slow consumer, never a backlog. Ends when any source ends; a source's error is
    raised. Every source is closed (its ``finally`` run) when this ends or is closed."""
    pending = {asyncio.ensure_future(anext(source)): i for i, source in enumerate(sources)}
    try:
        while True:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):  # in source order when several are ready
                i = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    return
                yield i, item
                pending[asyncio.ensure_future(anext(sources[i]))] = i
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for source in sources:  # (a cancelled one is closed already; one whose item was last is not)
            await source.aclose()


_WRITE_BATCH = 4 << 20


async def write_stream_to(path: str | os.PathLike[str], chunks: AsyncIterable[bytes], *,
                          first: bytes = b"") -> int:
    """Append ``first`` and then every chunk to the file ``path`` (which exists), in a worker thread, while
    the next batch is received; returns the bytes written. A full disk is ``ResourceExhausted``; any
    write error is the agent's exception naming the file. The caller removes the file on failure."""
    f = await asyncio.to_thread(open, path, "ab", buffering=0)
    written = 0

    def write_all(batch: list[bytes]) -> int:
        try:
            for data in batch:
                view = memoryview(data)
                while view:
                    view = view[f.write(view):]
        except OSError as err:
            raise durable.os_error(err, op="write the upload to", path=path) from err
        return sum(len(d) for d in batch)

    in_flight: asyncio.Future[int] | None = None
    try:
        batch: list[bytes] = [first] if first else []
        size = len(first)
        async for chunk in chunks:
            if not chunk:
                continue
            batch.append(chunk)
            size += len(chunk)
            if size >= _WRITE_BATCH:
                if in_flight is not None:
                    written += await in_flight  # at most one batch writing and one filling
                in_flight = asyncio.ensure_future(asyncio.to_thread(write_all, batch))
                batch, size = [], 0
        if in_flight is not None:
            written += await in_flight
            in_flight = None
        if batch:
            written += await asyncio.to_thread(write_all, batch)
    finally:
        if in_flight is not None:
            # Failing or cancelled: let the thread finish before the caller deletes the file.
            await asyncio.wait({in_flight})
            if not in_flight.cancelled():
                in_flight.exception()  # retrieved: the first error is the one raised
        await asyncio.to_thread(f.close)
    return written
