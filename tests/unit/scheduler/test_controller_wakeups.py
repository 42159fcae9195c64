"""What wakes the leader's reconcile pass from etcd's watch: a change to what a pass reads, not a host
re-registering with nothing new but the time, not the echo of the leader's own writes, not the records
of the autoscaler and the elastic loop (read by their own loops)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

from scheduler.controller import Controller, ControllerSettings, Mirror
from scheduler.mirror import Dirt
from scheduler.model import (
    AutoscaleStatus,
    Capacity,
    HostAdmin,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ServiceName,
)
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord

HOST = HostId("a" * 32)


def host(**changes: object) -> HostRecord:
    record = HostRecord(id=HOST, name="node-1", address="192.0.2.1:7070", labels=(("zone", "a"),),
                        capacity=Capacity(cpu_allocatable_millis=4000, memory_allocatable_bytes=8 << 30,
                                          cpu_committed_millis=100, memory_committed_bytes=1 << 20,
                                          disk_free_bytes=1 << 30),
                        registered_at=1.0, last_registered_at=1.0, info_json='{"a": 1}')
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


Woken = Callable[[], Awaitable[bool]]


def watched(scenario: Callable[[MemoryStore, Controller, Woken], Awaitable[None]]) -> None:
    """Run ``scenario`` with a controller following the store's watch (no passes run); its third
    argument waits until the watch has caught up with the store and says whether a pass was woken
    since the last call."""
    async def go() -> None:
        store = MemoryStore()
        await store.commit([base.Put(host())])
        lease = await store.grant_lease(60)
        leader = await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)
        settings = ControllerSettings(epoch=leader.epoch, guard=base.LeaderGuard(leader.epoch),
                                      credentials=None, profile=default_profile())
        controller = Controller(store, settings)
        controller.mirror = Mirror.of(await store.snapshot())
        following = asyncio.create_task(controller._follow(controller.mirror.revision))

        async def woken() -> bool:
            target = await store.current_revision()
            async with asyncio.timeout(10):
                while controller.mirror is not None and controller.mirror.revision < target:
                    await asyncio.sleep(0.001)
            was = controller._wake.is_set()
            controller._wake.clear()
            return was

        try:
            await scenario(store, controller, woken)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    asyncio.run(go())


async def rewrite(store: MemoryStore, **changes: object) -> None:
    current = await store.get(store.schema.host(HOST))
    assert current is not None
    await store.commit([base.Put(dataclasses.replace(current, **changes))])  # type: ignore[arg-type]


def test_a_host_rewritten_with_only_its_registration_time_and_use_wakes_no_pass() -> None:
    async def scenario(store: MemoryStore, controller: Controller, woken: Woken) -> None:
        await rewrite(store, last_registered_at=61.0, info_json='{"a": 2}')
        assert not await woken()
        await rewrite(store, capacity=dataclasses.replace(host().capacity, cpu_committed_millis=900,
                                                          memory_committed_bytes=5 << 20, disk_free_bytes=1))
        assert not await woken()
        assert controller.mirror is not None and controller.mirror.hosts[HOST].last_registered_at == 61.0

    watched(scenario)


def test_a_host_change_a_pass_reads_wakes_one() -> None:
    async def scenario(store: MemoryStore, controller: Controller, woken: Woken) -> None:
        for change in ({"admin": HostAdmin.CORDONED}, {"labels": (("zone", "b"),)},
                       {"address": "192.0.2.1:7071"}, {"conditions": ("MemoryPressure",)},
                       {"capacity": dataclasses.replace(host().capacity, cpu_allocatable_millis=8000)}):
            await rewrite(store, last_registered_at=99.0, **change)
            assert await woken(), change
        await store.commit([base.Delete(await store.get(store.schema.host(HOST)))])  # type: ignore[arg-type]
        assert await woken()

    watched(scenario)


def test_the_leaders_own_writes_do_not_wake_a_pass_again() -> None:
    async def scenario(store: MemoryStore, controller: Controller, woken: Woken) -> None:
        assert controller.mirror is not None
        replica = Replica(id=ReplicaId("web-1"), service=ServiceName("web"), generation=1)
        committed = await store.commit([base.Put(replica), base.Put(HostStatus(id=HOST, ready=True))],
                                       guard=controller.settings.guard)
        for record in committed.written:  # as a pass does once it has committed
            controller.mirror.put(record)
        assert not await woken()
        # Someone else's write of the same record does.
        current = controller.mirror.replicas[ReplicaId("web-1")]
        await store.commit([base.Put(dataclasses.replace(current, reason="edited"))])
        assert await woken()

    watched(scenario)


def test_the_echo_of_an_own_write_replaces_the_written_copy_with_the_shared_decode() -> None:
    """The follower keeps its decode of every record; the mirror holds that one object in place of the
    copy it wrote (one decoded copy per record in the leader), and only when both are the same record."""
    mirror = Mirror(revision=1)
    written = Replica(id=ReplicaId("web-1"), service=ServiceName("web"), generation=1, revision=5)
    mirror.put(written)
    mirror.take_dirt()

    def echo(record: Replica, revision: int) -> base.Change:
        return base.Change(kind=base.ChangeKind.PUT, key=f"/replicas/web/{record.id}", record_type=Replica,
                           ids=("web", record.id), value=record, revision=revision)

    decoded = dataclasses.replace(written)
    assert decoded is not written
    assert not mirror.apply(echo(decoded, 5))
    assert mirror.replicas[ReplicaId("web-1")] is decoded
    assert mirror.take_dirt() == Dirt() and mirror.by_service == {ServiceName("web"): {ReplicaId("web-1")}}
    # An older echo, or one that differs, leaves the record as it is.
    newer = dataclasses.replace(written, reason="placed", revision=7)
    mirror.put(newer)
    assert not mirror.apply(echo(dataclasses.replace(written, revision=6), 6))
    assert not mirror.apply(echo(dataclasses.replace(newer, reason="other"), 7))
    assert mirror.replicas[ReplicaId("web-1")] is newer


def test_an_echo_that_came_before_its_write_is_the_object_the_mirror_keeps() -> None:
    """The watch can bring a write back before its commit replies: the write then put into the mirror is
    the same record, and the mirror keeps the echo's object (the follower's), marking it as a put does."""
    mirror = Mirror(revision=1)
    mirror.put(Replica(id=ReplicaId("web-1"), service=ServiceName("web"), generation=1, revision=3))
    mirror.take_dirt()
    written = Replica(id=ReplicaId("web-1"), service=ServiceName("web"), generation=1, reason="placed",
                      revision=5)
    echo = dataclasses.replace(written)
    assert mirror.apply(base.Change(kind=base.ChangeKind.PUT, key="/replicas/web/web-1", record_type=Replica,
                                    ids=("web", "web-1"), value=echo, revision=5)) is not None
    assert mirror.replicas[ReplicaId("web-1")] is echo
    mirror.take_dirt()
    mirror.put(written)
    assert mirror.replicas[ReplicaId("web-1")] is echo
    assert mirror.take_dirt() != Dirt()  # marked as any put is
    # A different record at the same revision replaces it.
    other = dataclasses.replace(written, reason="other")
    mirror.put(other)
    assert mirror.replicas[ReplicaId("web-1")] is other


def test_records_only_other_loops_read_wake_no_pass() -> None:
    async def scenario(store: MemoryStore, controller: Controller, woken: Woken) -> None:
        await store.commit([base.Put(AutoscaleStatus(service=ServiceName("web")))])
        assert not await woken()
        assert controller.mirror is not None and ServiceName("web") in controller.mirror.autoscale

    watched(scenario)
