"""Bridging work that reports as it goes (threads, child processes) to async streams.

Import, pull and exec all run something that emits events — progress from a worker thread, output
chunks from a child's pipes — and a gRPC stream that must forward them in order and end when the work
is done. ``drain_until_done`` is that loop, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")


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


def threadsafe_putter(queue: asyncio.Queue[T]) -> Callable[[T], None]:
    """A callback a worker thread can call to enqueue into ``queue`` on the running loop."""
    loop = asyncio.get_running_loop()

    def put(item: T) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    return put
