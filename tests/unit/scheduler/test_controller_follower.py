"""A term starts from this instance's follower: no snapshot of etcd is read and decoded again, the
controller's mirror is the follower's state, later changes reach it through the follower's feed (never
cut off for being behind), a resync of the follower resyncs the controller from it, and the term's end
unsubscribes it. Against the memory store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scheduler import controller as controller_module
from scheduler import follower as follower_module
from scheduler.controller import Controller, ControllerSettings
from scheduler.follower import Follower
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.base import Put
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord
from tests.fixtures import scheduler_records as build
from tests.unit.scheduler.test_follower import following, run, until


class CountingStore(MemoryStore):
    """Counts snapshots read (a term started the old way reads one)."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots = 0

    async def snapshot(self, *args: Any, **kwargs: Any) -> base.Snapshot:
        self.snapshots += 1
        return await super().snapshot(*args, **kwargs)


async def leading(store: MemoryStore) -> int:
    lease = await store.grant_lease(10)
    return (await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)).epoch


async def leader(store: MemoryStore, follower: Follower) -> Controller:
    """A controller for a new term of this instance, starting from ``follower``."""
    epoch = await leading(store)
    return Controller(store, ControllerSettings(epoch=epoch, guard=base.LeaderGuard(epoch),
                                                credentials=None, profile=default_profile()),
                      follower=follower)


@contextlib.asynccontextmanager
async def controlling(store: MemoryStore, follower: Follower) -> AsyncIterator[Controller]:
    controller = await leader(store, follower)
    task = asyncio.create_task(controller.run())
    try:
        await until(lambda: controller.mirror is not None, "the term started")
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_term_starts_from_the_follower_and_follows_its_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower_module, "FEED_LIMIT", 1)  # the controller's feed has no limit

    async def scenario() -> None:
        store = CountingStore()
        await store.commit([Put(build.service("web", replicas=0))])
        async with following(Follower(store)) as follower:
            read_by_follower = store.snapshots
            async with controlling(store, follower) as controller:
                assert store.snapshots == read_by_follower  # no snapshot of its own
                assert controller.mirror is not None
                assert set(controller.mirror.services) == {"web"}
                await store.commit([Put(build.service(name, replicas=0)) for name in ("api", "db", "mq")])
                await until(lambda: controller.mirror is not None
                            and set(controller.mirror.services) == {"web", "api", "db", "mq"},
                            "the mirror followed the feed")
                assert len(follower._feeds) == 1
            assert follower._feeds == set()  # the term's end unsubscribed it
    run(scenario)


def test_a_resync_of_the_follower_resyncs_the_term_from_it() -> None:
    async def scenario() -> None:
        store = CountingStore()
        async with following(Follower(store)) as follower, controlling(store, follower) as controller:
            first = controller.mirror
            follower._cut_feeds()  # what a resync (compaction, failure) does first
            await store.commit([Put(build.service("web", replicas=0))])
            await until(lambda: controller.mirror is not first and controller.mirror is not None
                        and "web" in controller.mirror.services, "the term read the follower again")
    run(scenario)


class GatedStore(CountingStore):
    """Snapshots are counted when asked for and answered only once ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def snapshot(self, *args: Any, **kwargs: Any) -> base.Snapshot:
        self.snapshots += 1
        await self.gate.wait()
        return await MemoryStore.snapshot(self, *args, **kwargs)


class WatchedFollower(Follower):
    """Notes that someone waits for it to sync."""

    def __init__(self, store: base.Store) -> None:
        super().__init__(store)
        self.awaited = asyncio.Event()

    async def wait_synced(self, timeout: float) -> bool:
        self.awaited.set()
        return await super().wait_synced(timeout)


def test_a_term_begun_before_the_follower_synced_waits_for_it() -> None:
    """The usual start: a scheduler that leads at once, while its follower reads its first snapshot."""
    async def scenario() -> None:
        store = GatedStore()
        await store.commit([Put(build.service("web", replicas=0))])
        follower = WatchedFollower(store)
        reading = asyncio.create_task(follower.run())  # its first snapshot waits at the gate
        controller = await leader(store, follower)
        term = asyncio.create_task(controller.run())
        try:
            await until(lambda: follower.awaited.is_set(), "the term asked for the follower")
            store.gate.set()
            await until(lambda: controller.mirror is not None, "the term started")
            assert store.snapshots == 1  # the follower's only: the term read none of its own
            assert len(follower._feeds) == 1
        finally:
            for task in (term, reading):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    run(scenario)


def test_without_a_synced_follower_a_term_reads_etcd_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "FOLLOWER_SYNC_WAIT", 0.1)

    async def scenario() -> None:
        store = CountingStore()
        await store.commit([Put(build.service("web", replicas=0))])
        follower = Follower(store)  # never run: not synced
        async with controlling(store, follower) as controller:
            assert store.snapshots == 1
            assert controller.mirror is not None and set(controller.mirror.services) == {"web"}
    run(scenario)


def test_a_term_that_ends_lets_go_of_its_state_without_a_collection() -> None:
    """The controller and its actuator hold each other, so the controller waits for a full collection,
    which at 5,000 hosts did not come for minutes after a term lost and won back: its state must not wait
    with it (docs/scaling.md, part 33). Collections are off here: what is freed is freed by its count."""
    async def scenario() -> None:
        store = MemoryStore()
        await store.commit([Put(build.service("web", replicas=0))])
        async with following(Follower(store)) as follower:
            controller = await leader(store, follower)
            term = asyncio.create_task(controller.run())
            await until(lambda: controller.mirror is not None and sum(controller.passes.values()) >= 1,
                        "a pass")
            assert controller.mirror is not None
            mirror = weakref.ref(controller.mirror)
            gc.disable()
            try:
                term.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await term
                assert controller.mirror is None and not controller._status_cache and not controller._seen
                assert mirror() is None  # freed as the term ended
            finally:
                gc.enable()

    run(scenario)
