"""The simulated host answers the agent API the way the scheduler's own client follows it: an
``AgentSession`` (scheduler/agents.py) following a ``SimHost`` over real gRPC on loopback sees created →
running after the start delay, pages through a paged listing, relists after a reboot's new epoch, breaks
on a silent host's missed heartbeat, and is refused a stale fence."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from bench.sim.host import HostSpec, SimHost
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from scheduler.agents import AgentSession, open_channel
from scheduler.model import LABEL_REPLICA, LABEL_SERVICE, HostId
from scheduler.observed import ContainerState
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import until

T = TypeVar("T")
BOUND_S = 15.0  # every wait in these tests ends by then


def _request(cid: str, *, epoch: int = 1) -> pb.CreateContainerRequest:
    spec = pb.ContainerSpec(image="busybox", labels={LABEL_SERVICE: "web", LABEL_REPLICA: cid},
                            resources=pb.Resources(cpu_millis=100, memory_bytes=64 << 20))
    return pb.CreateContainerRequest(id=cid, name=cid, spec=spec, start=True,
                                     fence=pb.Fence(owner="scheduler", epoch=epoch))


class Following:
    """A SimHost and an AgentSession following it; ``until`` waits for the session to see something."""

    def __init__(self, spec: HostSpec, heartbeat_timeout: float = 2.0, usage_interval: float = 0.0) -> None:
        self.host = SimHost(spec)
        self.changed = asyncio.Event()
        self.session = AgentSession(HostId(spec.host_id), spec.address, credentials=None,
                                    on_change=lambda _h: self.changed.set(),
                                    heartbeat_timeout=heartbeat_timeout, usage_interval=usage_interval)

    async def __aenter__(self) -> Following:
        await self.host.start()
        self.session.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.host.stop()

    async def until(self, what: Callable[[AgentSession], bool]) -> None:
        async def wait() -> None:
            while not what(self.session):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), BOUND_S)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 4 * BOUND_S))


def ready(session: AgentSession) -> bool:
    return session.observation.connected and session.observation.complete


def test_a_create_is_created_then_running_with_the_agents_events() -> None:
    spec = HostSpec(name="h1", port=free_port(), labels={"zone": "a"}, start_delay=0.3)

    async def scenario() -> tuple[list[pb.Event], pb.ListContainersResponse, pb.Container, pb.HostInfo]:
        async with Following(spec) as f:
            await f.until(ready)
            stub = pb_grpc.ContainersStub(f.session.channel)
            events = stub.WatchEvents(pb.WatchEventsRequest(after_sequence=0))
            create = asyncio.ensure_future(stub.CreateContainer(_request("r1")))
            await f.until(lambda s: "r1" in s.observation.containers)
            during = await stub.ListContainers(pb.ListContainersRequest(all=True))
            created = await create
            await f.until(lambda s: s.observation.containers["r1"].state is ContainerState.RUNNING)
            seen = [await events.read() for _ in range(2)]
            events.cancel()
            info = await pb_grpc.HostStub(f.session.channel).GetHost(pb.GetHostRequest())
            return seen, during, created, info

    seen, during, created, info = run(scenario)
    assert [e.type for e in seen] == [pb.EVENT_TYPE_CREATED, pb.EVENT_TYPE_STARTED]
    assert [e.sequence for e in seen] == [1, 2]
    assert seen[0].epoch == seen[1].epoch == during.event_epoch
    assert [c.state for c in during.containers] == [pb.CONTAINER_STATE_CREATED]
    assert during.event_sequence == 1  # the listing reflects the CREATED event, not yet STARTED
    assert created.state == pb.CONTAINER_STATE_RUNNING
    assert (info.cpu_committed_millis, info.memory_committed_bytes) == (100, 64 << 20)
    assert info.labels["zone"] == "a" and info.host_id == spec.host_id


def test_the_session_pages_through_a_paged_listing() -> None:
    spec = HostSpec(name="h2", port=free_port(), page_size=2)

    async def scenario() -> tuple[list[str], int]:
        async with Following(spec) as f:
            for i in range(5):
                await f.host.create(_request(f"r{i}"))
            await f.until(lambda s: ready(s) and len(s.observation.containers) == 5)
            return sorted(f.session.observation.containers), f.host.calls["ListContainers"]

    ids, lists = run(scenario)
    assert ids == ["r0", "r1", "r2", "r3", "r4"]
    assert lists == 3  # pages of 2, 2 and 1


def test_a_reboot_is_a_new_epoch_and_the_session_relists() -> None:
    spec = HostSpec(name="h3", port=free_port())

    async def scenario() -> tuple[str, str, dict[str, str], int]:
        async with Following(spec) as f:
            await f.host.create(_request("r1"))
            await f.until(lambda s: ready(s) and "r1" in s.observation.containers)
            old_epoch = f.host.events.epoch
            await f.host.fail("refuse")
            await f.until(lambda s: not s.observation.connected)
            await f.host.recover(reboot=True)
            await f.until(lambda s: ready(s) and not s.observation.containers)
            stub = pb_grpc.ContainersStub(f.session.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.WatchEvents(pb.WatchEventsRequest(after_sequence=1, epoch=old_epoch)).read()
            trailers = {k: str(v) for k, v in (caught.value.trailing_metadata() or ())}
            return old_epoch, f.host.events.epoch, trailers, int(caught.value.code().value[0])

    old, new, trailers, code = run(scenario)
    assert old != new
    assert code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert trailers["shoal-error"] == "HistoryTruncated" and trailers["shoal-event-epoch"] == new


def test_a_silent_host_misses_its_heartbeat_and_is_followed_again_when_back() -> None:
    spec = HostSpec(name="h4", port=free_port(), usage_interval=0.2)

    async def scenario() -> str:
        async with Following(spec, heartbeat_timeout=1.0) as f:
            await f.until(ready)
            await f.host.fail("silent")
            await f.until(lambda s: not s.observation.connected)
            error = f.session.error
            await f.host.recover()
            await f.until(ready)
            return error

    assert "no report from the agent" in run(scenario)


def test_a_stale_fence_is_refused_and_a_removal_is_seen() -> None:
    spec = HostSpec(name="h5", port=free_port())

    async def scenario() -> tuple[dict[str, str], bool]:
        async with Following(spec) as f:
            await f.until(ready)
            stub = pb_grpc.ContainersStub(f.session.channel)
            await stub.CreateContainer(_request("r1", epoch=5))
            await f.until(lambda s: "r1" in s.observation.containers)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StopContainer(pb.StopContainerRequest(id="r1", fence=pb.Fence(owner="scheduler",
                                                                                          epoch=4)))
            await stub.RemoveContainer(pb.RemoveContainerRequest(id="r1", force=True,
                                                                 fence=pb.Fence(owner="scheduler", epoch=5)))
            await f.until(lambda s: "r1" not in s.observation.containers)
            again = await stub.RemoveContainer(pb.RemoveContainerRequest(id="r1", missing_ok=True))
            return {k: str(v) for k, v in (caught.value.trailing_metadata() or ())}, again.already_removed

    trailers, already = run(scenario)
    assert trailers["shoal-error"] == "StaleEpoch"
    assert already


def test_a_session_asks_for_usage_at_its_interval() -> None:
    spec = HostSpec(name="h9", port=free_port(), usage_interval=0.1)

    async def scenario() -> list[float]:
        async with Following(spec, usage_interval=0.5) as f:
            await f.until(ready)
            return f.host.usage_intervals_asked

    assert run(scenario) == [0.5]


def test_a_session_paced_anew_subscribes_again_and_keeps_its_view() -> None:
    """``AgentSession.pace``: the stream asks again at the new interval after its next report; the events
    continue after the last one the session saw (no relist, nothing missed), and the new heartbeat applies
    from that subscription."""
    spec = HostSpec(name="h10", port=free_port(), usage_interval=0.1)

    async def scenario() -> tuple[list[float], list[int | None], list[int | None], int, float]:
        async with Following(spec) as f:
            await f.until(ready)
            listed = f.host.calls["ListContainers"]
            first = list(f.host.events_after_asked)
            stub = pb_grpc.ContainersStub(f.session.channel)
            await stub.CreateContainer(_request("before"))
            await f.until(lambda s: "before" in s.observation.containers)
            seen = f.host.events.last_sequence
            f.session.pace(0.5, 1.5)
            await until(lambda: f.host.usage_intervals_asked == [0.0, 0.5])
            f.session.pace(0.5, 1.5)  # the same pace again: nothing to do
            await until(lambda: f.host.usage_streams == 1)  # the old stream was let go
            await stub.CreateContainer(_request("after"))
            await f.until(lambda s: "after" in s.observation.containers)
            await f.until(ready)
            return (f.host.usage_intervals_asked, [*first, seen], f.host.events_after_asked,
                    f.host.calls["ListContainers"] - listed, f.session.heartbeat_timeout)

    asked, expected, after, relisted, heartbeat = run(scenario)
    assert asked == [0.0, 0.5] and relisted == 0 and heartbeat == 1.5
    assert after == expected


def test_a_session_follows_events_and_usage_on_one_stream() -> None:
    spec = HostSpec(name="h11", port=free_port(), usage_interval=0.1)

    async def scenario() -> tuple[dict[str, int], int, bool]:
        async with Following(spec) as f:
            await f.until(ready)
            await pb_grpc.ContainersStub(f.session.channel).CreateContainer(_request("r1"))
            await f.until(lambda s: s.observation.containers.get("r1") is not None
                          and s.observation.containers["r1"].state is ContainerState.RUNNING)
            await until(lambda: f.host.calls.get("WatchUsage.snapshot", 0) >= 3)
            return dict(f.host.calls), f.host.usage_streams, f.session.one_stream

    calls, streams, one_stream = run(scenario)
    assert one_stream and calls["WatchHost"] == 1 and streams == 1
    assert "WatchEvents" not in calls and "WatchUsage" not in calls
    assert calls["WatchEvents.event"] >= 2  # created, started


@pytest.mark.parametrize("batches", [True, False], ids=["batched", "agent-without-batches"])
def test_a_session_reads_a_hosts_events_in_batches_or_one_at_a_time(batches: bool) -> None:
    """The session asks for the events that wait together in one message (``batch_events``): four
    containers created in one call reach it in fewer messages than events, every one of them running.
    An agent from before the field sends one message per event, and the session follows it the same."""
    spec = HostSpec(name="h14", port=free_port(), usage_interval=0.1, batch_events=batches)
    ids = [f"b{i}" for i in range(4)]

    async def scenario() -> tuple[int, int, dict[str, ContainerState]]:
        async with Following(spec) as f:
            await f.until(ready)
            await pb_grpc.ContainersStub(f.session.channel).CreateContainers(
                pb.CreateContainersRequest(containers=[_request(cid) for cid in ids]))
            await f.until(lambda s: all(s.observation.containers.get(cid) is not None
                                        and s.observation.containers[cid].state is ContainerState.RUNNING
                                        for cid in ids))
            # (an event carries its container as it is when sent: all can look running before the last)
            await until(lambda: f.host.calls.get("WatchEvents.event", 0) >= 8)
            return (f.host.calls["WatchEvents.event"], f.host.event_messages,
                    {cid: f.session.observation.containers[cid].state for cid in ids})

    events, messages, states = run(scenario)
    assert events == 8  # created and started, each
    assert messages < events if batches else messages == events
    assert set(states.values()) == {ContainerState.RUNNING}


def test_an_agent_from_before_watch_host_is_followed_on_two_streams() -> None:
    """An agent that answers UNIMPLEMENTED to WatchHost (a scheduler upgraded before its agents) is
    followed as before: events and usage on a stream each."""
    spec = HostSpec(name="h12", port=free_port(), usage_interval=0.1, watch_host=False)

    async def scenario() -> tuple[dict[str, int], bool, int]:
        async with Following(spec) as f:
            await f.until(ready)
            await pb_grpc.ContainersStub(f.session.channel).CreateContainer(_request("r1"))
            await f.until(lambda s: "r1" in s.observation.containers)
            f.session.pace(0.3, 1.0)
            await until(lambda: f.host.usage_intervals_asked[-1:] == [0.3])
            await f.until(ready)
            return dict(f.host.calls), f.session.one_stream, f.host.usage_streams

    calls, one_stream, streams = run(scenario)
    assert not one_stream and "WatchHost" not in calls  # (refused before it was counted)
    assert calls["WatchEvents"] == 1 and calls["WatchUsage"] == 2 and streams == 1


def test_a_session_channel_still_ends_a_call_at_its_deadline() -> None:
    """Session channels run gRPC's minimal filter stack (``scheduler.agents.CHANNEL_OPTIONS``, to save
    memory per host): a call to a host that answers nothing still ends at its deadline."""
    spec = HostSpec(name="h13", port=free_port())

    async def scenario() -> grpc.StatusCode:
        host = SimHost(spec)
        await host.start()
        await host.fail("silent")
        channel = open_channel(spec.address, None)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.HostStub(channel).GetHost(pb.GetHostRequest(), timeout=0.3)
            return caught.value.code()
        finally:
            await channel.close()
            await host.recover()
            await host.stop()

    assert run(scenario) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_watch_host_sends_what_the_agent_sends_as_bytes_made_once() -> None:
    """``WatchHost`` read with the generated stub (``HostUpdate``): a usage report at once and then one
    an interval, each with a new sequence and time and the host's running containers; an event batch
    between them as soon as it is waiting; the stream let go when the client cancels it
    (``bench.sim.watch_host``)."""
    spec = HostSpec(name="h15", port=free_port(), usage_interval=0.2)

    async def scenario() -> tuple[list[pb.HostUpdate], pb.UsageSnapshot, int, int]:
        host = SimHost(spec)
        await host.start()
        channel = grpc.aio.insecure_channel(spec.address)
        got: list[pb.HostUpdate] = []
        try:
            call = pb_grpc.HostStub(channel).WatchHost(pb.WatchHostRequest(
                events=pb.WatchEventsRequest(after_sequence=0, with_container=True),
                usage=pb.WatchUsageRequest(), batch_events=True))
            got.append(await call.read())  # the first report, at once
            await pb_grpc.ContainersStub(channel).CreateContainers(
                pb.CreateContainersRequest(containers=[_request("w1"), _request("w2")]))
            while sum(u.WhichOneof("update") == "usage" and len(u.usage.containers) == 2 for u in got) < 2:
                got.append(await asyncio.wait_for(call.read(), BOUND_S))
            streams = host.usage_streams
            call.cancel()
            await until(lambda: host.usage_streams == 0)
            return got, host.snapshot(), streams, len(host.events._watchers)
        finally:
            await channel.close()
            await host.stop()

    got, now, streams, watchers = run(scenario)
    usage = [u.usage for u in got if u.WhichOneof("update") == "usage"]
    events = [e for u in got if u.WhichOneof("update") == "events" for e in u.events.events]
    assert streams == 1 and watchers == 0
    assert [u.sequence for u in usage] == list(range(1, len(usage) + 1))
    assert all(a.time.ToNanoseconds() <= b.time.ToNanoseconds() for a, b in itertools.pairwise(usage))
    assert len(usage[0].containers) == 0 and usage[0].host.host_id == spec.host_id
    last = usage[-1]
    assert sorted(c.id for c in last.containers) == ["w1", "w2"]
    # The same report as the one built as a message (WatchUsage's), but for its sequence and time.
    for report in (last, now):
        report.ClearField("sequence")
        report.ClearField("time")
    assert last == now
    assert [(e.container_id, e.type) for e in events] == [
        ("w1", pb.EVENT_TYPE_CREATED), ("w1", pb.EVENT_TYPE_STARTED),
        ("w2", pb.EVENT_TYPE_CREATED), ("w2", pb.EVENT_TYPE_STARTED)]
    assert all(e.container.id == e.container_id for e in events)
