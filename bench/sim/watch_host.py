"""A simulated host's ``WatchHost`` stream, sent as wire bytes at as little cpu per message as it can.

The simulator is a stand-in for thousands of machines, and every microsecond it spends on a message is
taken from the scheduler and etcd under test on the same cores: at 5,000 hosts its five processes sent
1,667 usage reports a second and took 0.61-0.87 of a core together in the steady state of part 23's
runs (docs/scaling.md, part 24). What the scheduler reads is unchanged, byte for byte in meaning: a
``HostUpdate`` per message, events first when both are ready, the waiting events as one
``HostUpdate.events`` when the client asks for batches, and a usage report at once and then one an
interval after the last was sent.
What is cheaper is how they are made:

* a report is the snapshot's body serialized once per change of the host's containers, followed by
  its time and sequence serialized alone (protobuf merges concatenated fields), wrapped as a
  ``HostUpdateBytes``, which has ``HostUpdate``'s wire format; nothing is copied or re-encoded;
* the two sources are merged by one waiting future per stream: the next report is a timer callback
  (no coroutine, no task), and the events come from one long-lived task that hands over a batch at a
  time, instead of ``agent.streams.interleave``'s task and ``asyncio.wait`` per item.

The agent itself keeps ``interleave``: one follower at one report a second is not what it spends its
cores on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent.errors import InvalidArgument
from agent.host_update import EVENT_BATCH
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from bench.sim.host import SimHost

_NS = 1_000_000_000
_SERVICE = "shoal.agent.v1.Host"


def usage_tail(sequence: int, now_ns: int) -> bytes:
    """The fields of a ``UsageSnapshot`` that change with every report, serialized alone."""
    return pb.UsageSnapshot(sequence=sequence,
                            time=Timestamp(seconds=now_ns // _NS, nanos=now_ns % _NS)).SerializeToString()


def usage_interval(host: SimHost, request: pb.WatchUsageRequest) -> float:
    """The interval a usage stream sends at (the host's own, or longer if asked); recorded as asked."""
    host.usage_intervals_asked.append(request.interval_seconds)
    if request.interval_seconds < 0:
        raise InvalidArgument(f"interval_seconds cannot be negative, got {request.interval_seconds}")
    return max(host.spec.usage_interval, request.interval_seconds)


async def host_updates(host: SimHost, request: pb.WatchHostRequest) -> AsyncGenerator[bytes, None]:
    """What ``WatchHost`` sends, as serialized ``HostUpdate`` messages. The event log's errors
    (``HistoryTruncated``, ``WatcherTooSlow``) and an invalid request are raised."""
    batched = request.batch_events and host.spec.batch_events
    interval = usage_interval(host, request.usage)
    loop = asyncio.get_running_loop()
    batches: deque[list[pb.Event]] = deque()
    failed: list[BaseException] = []  # what ended the event source (its error, or StopAsyncIteration)
    taken: asyncio.Future[None] | None = None  # the event task waits here until its batch is sent
    wake: asyncio.Future[None] | None = None  # this generator waits here while nothing is ready
    due = loop.time()  # when the next report is due; the first goes at once (no timer pending)
    timer: asyncio.TimerHandle | None = None

    def woken() -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    def tick() -> None:
        nonlocal timer
        timer = None
        woken()

    async def pump(events: AsyncGenerator[list[pb.Event], None]) -> None:
        nonlocal taken
        try:
            async for batch in events:
                taken = loop.create_future()
                batches.append(batch)
                woken()
                await taken  # one batch at a time: what comes meanwhile waits in the log, to go as one
        except Exception as err:  # handed to the stream, which raises it
            failed.append(err)
            woken()
        else:
            failed.append(StopAsyncIteration())
            woken()

    events = host.event_batches(request.events, most=EVENT_BATCH if batched else 1)
    task = loop.create_task(pump(events), name=f"watch-host-events-{host.spec.name}")
    host.usage_streams += 1
    try:
        while True:
            if batches:
                batch = batches.popleft()
                if batched:
                    yield pb.HostUpdate(events=pb.EventBatch(events=batch)).SerializeToString()
                else:
                    yield pb.HostUpdate(event=batch[0]).SerializeToString()
                if taken is not None and not taken.done():
                    taken.set_result(None)
                continue
            if failed:
                if isinstance(failed[0], StopAsyncIteration):
                    return
                raise failed[0]
            if timer is None:  # (a timer may run a little before its time: its having run is the sign)
                # A silent host sends nothing (a cut network): the scheduler's heartbeat timeout notices.
                await host.answering("WatchUsage.snapshot")
                if not host.silent:
                    host.usage_late(loop.time() - due)
                yield host.usage_update()
                due = loop.time() + interval
                timer = loop.call_at(due, tick)
                continue
            wake = loop.create_future()
            try:
                await wake
            finally:
                wake = None
    finally:
        host.usage_streams -= 1
        if timer is not None:
            timer.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await events.aclose()


def add_host_servicer(servicer: pb_grpc.HostServicer, server: grpc.aio.Server) -> None:
    """``add_HostServicer_to_server``, except that ``WatchHost`` sends the bytes its handler yields
    (``host_updates``) as they are: no response serializer."""
    handlers = {
        "GetHost": grpc.unary_unary_rpc_method_handler(
            servicer.GetHost, request_deserializer=pb.GetHostRequest.FromString,
            response_serializer=pb.HostInfo.SerializeToString),
        "WatchUsage": grpc.unary_stream_rpc_method_handler(
            servicer.WatchUsage, request_deserializer=pb.WatchUsageRequest.FromString,
            response_serializer=pb.UsageSnapshot.SerializeToString),
        "WatchHost": grpc.unary_stream_rpc_method_handler(
            servicer.WatchHost, request_deserializer=pb.WatchHostRequest.FromString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)


__all__ = ["add_host_servicer", "host_updates", "usage_interval", "usage_tail"]
