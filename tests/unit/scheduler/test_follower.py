"""The follower (``scheduler.follower``): consistent reads from its copy of the cluster, the snapshot
fallback and its reasons, and the indexes kept as changes arrive — held equal to a build from scratch
after puts, updates, deletes, an undecodable record and a compaction's resync. Against the memory store,
with a watch that a test can hold back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import generate_latest

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import api
from scheduler import follower as follower_module
from scheduler.follower import ChangeFeed, ClusterState, Follower, ReplicaCounts
from scheduler.metrics import SchedulerMetrics
from scheduler.model import HostId, ReplicaPhase
from scheduler.store.base import Change, Delete, Put
from scheduler.store.memory import MemoryStore
from tests.fixtures import scheduler_records as build
from tests.fixtures.scheduler_api import apply, service_yaml, serving

HANG_GUARD_S = 20.0


class HeldStore(MemoryStore):
    """A memory store whose watches pass a change on only while ``flowing`` is set (a follower held
    behind, as a busy or slow one is)."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def watch(self, after_revision: int, *, scope: Any = None) -> AsyncGenerator[Change, None]:
        async with contextlib.aclosing(super().watch(after_revision, scope=scope)) as changes:
            async for change in changes:
                await self.flowing.wait()
                yield change


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll (bounded) until ``check()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def following(follower: Follower) -> AsyncIterator[Follower]:
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: follower.synced, "the follower synced")
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def same_as_fresh(state: ClusterState, fresh: ClusterState) -> None:
    """``state`` (followed) holds what a state built from scratch holds, records, indexes and counts."""
    assert state.revision == fresh.revision
    assert (state.services, state.replicas, state.hosts, state.statuses, state.corrupt) == \
        (fresh.services, fresh.replicas, fresh.hosts, fresh.statuses, fresh.corrupt)
    assert state.indexes() == fresh.indexes()
    for service in fresh.services.values():
        assert state.counts(service) == ReplicaCounts.of(
            [r for r in fresh.replicas.values() if r.service == service.name],
            template_generation=service.template_generation)


# -- consistent reads ---------------------------------------------------------------------------------

def test_a_read_right_after_a_write_sees_it_from_the_follower() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        fallbacks: list[str] = []
        async with following(Follower(store, on_fallback=fallbacks.append)) as follower:
            for n in range(5):
                await store.commit([Put(build.replica("web", n))])
                state = await follower.read()
                assert len(state.replicas_of("web")) == n + 1
            assert fallbacks == []
    run(scenario)


async def held_read(store: HeldStore, follower: Follower) -> tuple[int, asyncio.Task[ClusterState]]:
    """A write the follower's watch holds back, and a read started after it, waiting for the follower."""
    store.flowing.clear()
    revision = (await store.commit([Put(build.service("web"))])).revision
    reading = asyncio.create_task(follower.read())
    await until(lambda: follower.waiting > 0, "the read waits for the follower")
    return revision, reading


def test_a_follower_held_behind_makes_the_read_wait_then_answer_from_it() -> None:
    async def scenario() -> None:
        store = HeldStore()
        fallbacks: list[str] = []
        follower = Follower(store, on_fallback=fallbacks.append, read_wait=30.0, read_quiet=30.0)
        async with following(follower):
            revision, reading = await held_read(store, follower)
            assert not reading.done()
            store.flowing.set()
            state = await reading
            assert state is follower.state and state.revision == revision
            assert "web" in state.services
            assert fallbacks == []
    run(scenario)


def test_a_follower_behind_past_the_bound_falls_back_to_a_snapshot_and_adopts_it() -> None:
    async def scenario() -> None:
        store = HeldStore()
        fallbacks: list[str] = []
        follower = Follower(store, on_fallback=fallbacks.append, read_wait=0.05, read_quiet=30.0)
        async with following(follower):
            store.flowing.clear()
            revision = (await store.commit([Put(build.service("web"))])).revision
            state = await follower.read()
            assert fallbacks == ["behind"]
            assert "web" in state.services
            # The snapshot became the follower's state; the held changes, once they come, change nothing.
            assert follower.state is state and state.revision == revision
            store.flowing.set()
            await store.commit([Put(build.service("api"))])
            state = await follower.read()
            assert set(state.services) == {"web", "api"} and fallbacks == ["behind"]
            same_as_fresh(state, ClusterState(await store.snapshot()))
    run(scenario)


class SlowWatchStore(HeldStore):
    """A held store whose watch takes ``hops`` turns of the event loop to hand each change on, as a real
    watch does (the stream's read, its decoding, the queue between them)."""

    def __init__(self, hops: int) -> None:
        super().__init__()
        self.hops = hops

    async def watch(self, after_revision: int, *, scope: Any = None) -> AsyncGenerator[Change, None]:
        async with contextlib.aclosing(super().watch(after_revision, scope=scope)) as changes:
            async for change in changes:
                for _ in range(self.hops):
                    await asyncio.sleep(0)
                yield change


def test_a_stalled_event_loop_is_not_the_followers_delay_and_reads_no_snapshot() -> None:
    """The loop is blocked (a long pass, a collection) for longer than the read's whole wait while the
    change is on its way: the follower could apply nothing meanwhile, so the read waits for it rather than
    reading all of etcd (which at 100,000 replicas stalls the loop for seconds more)."""
    async def scenario() -> None:
        store = SlowWatchStore(hops=5)
        fallbacks: list[str] = []
        follower = Follower(store, on_fallback=fallbacks.append, read_wait=0.2, read_quiet=0.05)
        async with following(follower):
            revision, reading = await held_read(store, follower)

            def stall() -> None:
                store.flowing.set()
                time.sleep(0.4)  # the loop blocked past read_wait (0.2 s), the change not yet applied

            asyncio.get_running_loop().call_soon(stall)
            state = await reading
            assert fallbacks == [] and state is follower.state and state.revision == revision
    run(scenario)


def test_a_read_on_a_loop_that_keeps_stalling_still_ends_within_its_limit() -> None:
    """Stalls do not count against the wait, but the call's own bound holds: a follower held behind on a
    loop blocked again and again falls back to a snapshot once the read's timeout has passed."""
    async def scenario() -> None:
        store = HeldStore()
        fallbacks: list[str] = []
        follower = Follower(store, on_fallback=fallbacks.append, read_wait=0.1, read_quiet=0.02)
        async with following(follower):
            store.flowing.clear()
            await store.commit([Put(build.service("web"))])

            async def stalls() -> None:
                for _ in range(200):  # bounded: 200 stalls of 50 ms
                    time.sleep(0.05)
                    await asyncio.sleep(0)

            stalling = asyncio.create_task(stalls())
            try:
                state = await follower.read(timeout=0.5)
            finally:
                stalling.cancel()
            assert fallbacks == ["behind"] and "web" in state.services
    run(scenario)


def test_a_follower_not_synced_falls_back_to_a_snapshot() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        fallbacks: list[str] = []
        follower = Follower(store, on_fallback=fallbacks.append)  # never run
        await store.commit([Put(build.service("web"))])
        state = await follower.read()
        assert "web" in state.services and fallbacks == ["not_synced"]
        assert follower.state is None  # a follower that is not following adopts nothing
    run(scenario)


def test_a_revision_the_watch_does_not_deliver_falls_back_once_then_reads_come_from_the_follower() -> None:
    """A scheduler instance's record (or another prefix's key) moves etcd's revision without a change
    the follower sees: the read does not wait out the bound, and the next one does not wait at all."""
    async def scenario() -> None:
        store = MemoryStore()
        fallbacks: list[str] = []
        async with following(Follower(store, on_fallback=fallbacks.append, read_wait=30.0)) as follower:
            await store.commit([Put(build.service("web"))])
            revision = store.put_raw(store.schema.prefix + "schedulers/s1", b"{}")
            state = await follower.read()
            assert fallbacks == ["quiet"] and state.revision == revision and "web" in state.services
            assert follower.state is state
            await follower.read()
            assert fallbacks == ["quiet"]
    run(scenario)


def test_fallbacks_are_counted_in_the_metrics() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        metrics = SchedulerMetrics()
        follower = metrics.follower(store)
        assert metrics.follower(store) is follower
        await follower.read()
        text = generate_latest(metrics.registry).decode()
        assert 'shoal_scheduler_consistent_read_fallbacks_total{reason="not_synced"} 1.0' in text
        assert 'shoal_scheduler_consistent_read_fallbacks_total{reason="behind"} 0.0' in text
    run(scenario)


def test_an_apply_followed_at_once_by_a_get_shows_the_write() -> None:
    async def scenario() -> None:
        async with serving() as api:
            assert api.follower is not None
            fallbacks: list[str] = []
            await until(lambda: api.follower is not None and api.follower.synced, "the follower synced")
            api.follower.on_fallback = fallbacks.append
            for n in range(1, 6):
                await apply(api, service_yaml("web", replicas=n))
                got = await api.scheduler.GetService(pb.GetServiceRequest(name="web"))
                assert got.spec.replicas == n
                listed = await api.scheduler.ListServices(pb.ListServicesRequest())
                assert [(s.spec.name, s.spec.replicas) for s in listed.services] == [("web", n)]
            assert fallbacks == []
    run(scenario)


def test_a_writes_answer_does_not_wait_for_a_follower_held_behind() -> None:
    """Apply and scale answer with the records they wrote, counts from the follower as it is: a follower
    held behind (a busy leader's backlog) delays neither, and neither reads a snapshot instead."""
    async def scenario() -> None:
        store = HeldStore()
        async with serving(store) as api:
            follower = api.follower
            assert follower is not None
            await until(lambda: follower.synced, "the follower synced")
            fallbacks: list[str] = []
            follower.on_fallback = fallbacks.append
            await apply(api, service_yaml("web", replicas=2))
            await until(lambda: follower.state is not None and "web" in follower.state.services,
                        "the follower has web")
            store.flowing.clear()
            held_at = follower.state.revision if follower.state is not None else 0
            results = await apply(api, service_yaml("web", replicas=5) + "---\n" + service_yaml("api"))
            assert [(r.service.spec.name, r.service.spec.replicas, r.action) for r in results] == [
                ("web", 5, "updated"), ("api", 2, "created")]
            scaled = await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="api", replicas=7))
            assert scaled.spec.replicas == 7
            assert follower.state is not None and follower.state.revision == held_at  # still held
            assert fallbacks == [] and follower.waiting == 0
            store.flowing.set()
            got = await api.scheduler.GetService(pb.GetServiceRequest(name="api"))
            assert got.spec.replicas == 7 and fallbacks == []
    run(scenario)


# -- the indexes ---------------------------------------------------------------------------------------

def test_indexes_follow_puts_updates_and_deletes_equal_to_a_fresh_build() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.commit([Put(build.service("web")), Put(build.service("api")),
                            Put(build.host("h1")), Put(build.host("h2"))])
        async with following(Follower(store)) as follower:
            committed = await store.commit(
                [Put(build.replica("web", n, host="h1" if n % 2 else None)) for n in range(6)]
                + [Put(build.replica("api", n, host="h2", phase=ReplicaPhase.RUNNING)) for n in range(3)])
            web = {r.id: r for r in committed.written if r.service == "web"}  # type: ignore[attr-defined]
            api = {r.id: r for r in committed.written if r.service == "api"}  # type: ignore[attr-defined]
            await store.commit([
                # moved, started, made ready, failed, stopping, a new template generation
                Put(replace(web["web-00000"], host=HostId("h2"), phase=ReplicaPhase.STARTING)),
                Put(replace(web["web-00001"], phase=ReplicaPhase.RUNNING, ready=True)),
                Put(replace(web["web-00002"], phase=ReplicaPhase.FAILED, reason="exit 1")),
                Put(replace(web["web-00003"], phase=ReplicaPhase.STOPPING)),
                Put(replace(web["web-00004"], generation=2, reason="no room")),
                Delete(api["api-00000"]), Delete(api["api-00001"]),
            ])
            store.put_raw(store.schema.replica("api", "api-00002").key, b"not json")  # undecodable
            state = await follower.read()
            fresh = ClusterState(await store.snapshot())
            same_as_fresh(state, fresh)
            assert set(state.replicas_on("h2")) == {"web-00000"}  # api-00002 no longer decodes
            assert state.corrupt and not state.replicas_of("api")
            counts = state.counts(state.services["web"])
            assert (counts.replicas, counts.ready, counts.pending, counts.failed) == (5, 1, 2, 1)
            assert counts.pending_reason == "no room"  # web-00004's; web-00005 has none
    run(scenario)


def test_a_resync_after_compaction_rebuilds_the_indexes_equal_to_a_fresh_build() -> None:
    async def scenario() -> None:
        store = HeldStore()
        resyncs: list[None] = []
        follower = Follower(store, on_resync=lambda: resyncs.append(None))
        await store.commit([Put(build.service("web"))])
        async with following(follower):
            store.flowing.clear()
            committed = await store.commit([Put(build.replica("web", n, host="h1")) for n in range(4)])
            first = committed.written[0]
            await store.commit([Delete(first)])
            await store.commit([Put(build.replica("web", 9, host="h2"))])
            await store.compact(store.revision)
            store.flowing.set()
            await until(lambda: bool(resyncs) and follower.synced, "the follower read the cluster again")
            state = await follower.read()
            same_as_fresh(state, ClusterState(await store.snapshot()))
            assert set(state.replicas_on("h1")) == {"web-00001", "web-00002", "web-00003"}
    run(scenario)


# -- the change feed of API watch streams -------------------------------------------------------------

class WatchCountingStore(MemoryStore):
    """Counts the watches opened on it."""

    watches = 0

    def watch(self, after_revision: int, *, scope: Any = None) -> AsyncGenerator[Change, None]:
        self.watches += 1
        return super().watch(after_revision, scope=scope)


async def drain(feed: ChangeFeed) -> list[Change]:
    out: list[Change] = []
    while (change := await feed.get()) is not None:
        out.append(change)
    return out


def test_a_feed_cut_off_behind_its_limit_ends_between_two_revisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that does not keep up is cut off the feed, at a revision boundary only, so it resumes
    the store's watch after the last revision it got without missing or repeating a change."""
    monkeypatch.setattr(follower_module, "FEED_LIMIT", 2)

    async def scenario() -> None:
        store = MemoryStore()
        async with following(Follower(store)) as follower:
            assert follower.state is not None
            after = follower.state.revision
            feed = follower.subscribe(after)
            assert feed is not None
            three = (await store.commit([Put(build.replica("web", n)) for n in range(3)])).revision
            for n in range(3, 6):
                await store.commit([Put(build.replica("web", n))])
            await until(lambda: feed.cut, "the feed was cut off")
            got = await drain(feed)
            # The first transaction whole (3 changes, past the limit of 2), nothing of the next ones.
            assert [c.revision for c in got] == [three] * 3
            async with contextlib.aclosing(store.watch(got[-1].revision)) as rest:
                resumed = [await anext(rest) for _ in range(3)]
            assert [c.ids[-1] for c in got + resumed] == [f"web-{n:05d}" for n in range(6)]
            assert follower.subscribe(after) is None  # only at the revision the follower has received
    run(scenario)


def test_a_resync_cuts_every_feed_off() -> None:
    async def scenario() -> None:
        store = HeldStore()
        follower = Follower(store)
        async with following(follower):
            assert follower.state is not None
            feed = follower.subscribe(follower.state.revision)
            assert feed is not None
            store.flowing.clear()
            await store.commit([Put(build.service("web"))])
            await store.commit([Put(build.service("api"))])
            await store.commit([Put(build.service("db"))])
            await store.compact(store.revision)  # the held watch, past "web", finds its history gone
            store.flowing.set()
            got = await drain(feed)  # ends: the follower read the cluster again
            assert [c.ids for c in got] == [("web",)]
    run(scenario)


def test_api_watch_streams_share_the_followers_changes() -> None:
    """Each stream converts the follower's decoded changes: no watch of the store per stream."""
    async def scenario() -> None:
        store = WatchCountingStore()
        async with serving(store) as api:
            assert api.follower is not None
            await until(lambda: api.follower is not None and api.follower.synced, "the follower synced")
            assert store.watches == 1
            calls = [api.scheduler.Watch(pb.WatchRequest(kinds=["service"])) for _ in range(3)]
            try:
                await until(lambda: len(api.follower._feeds) == 3 if api.follower else False,
                            "three streams subscribed")
                await apply(api, service_yaml("web", replicas=2))
                for call in calls:
                    event = await call.read()
                    assert event.name == "web" and event.service.spec.replicas == 2
                assert store.watches == 1
            finally:
                for call in calls:
                    call.cancel()
    run(scenario)


def test_a_converted_spec_is_reused_only_for_the_revision_it_was_read_at() -> None:
    specs = api.SpecCache()
    web = build.service("web", replicas=2, revision=7)
    first = specs.spec_pb(web)
    assert specs.spec_pb(web) is first
    changed = replace(web, spec=replace(web.spec, replicas=5), revision=9)
    assert specs.spec_pb(changed).replicas == 5
    unwritten = replace(changed, spec=replace(web.spec, replicas=6), revision=0)
    assert specs.spec_pb(unwritten).replicas == 6  # not cached: no revision says what it holds
    cached = specs.spec_pb(changed)
    assert specs.spec_pb(changed) is cached
    specs.keep(["web"])  # still exists: kept
    assert specs.spec_pb(changed) is cached
    specs.keep([])  # gone: forgotten
    assert specs.spec_pb(changed) is not cached
