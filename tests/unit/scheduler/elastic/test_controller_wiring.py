"""The controller runs the elastic loop in the leader's term (with the real step) beside its reconcile
loop, and a term the elastic loop finds over ends the controller."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from scheduler.controller import Controller, ControllerSettings
from scheduler.model import GroupName, HostGroup, HostGroupSpec
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.errors import NotLeader
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord

WORKERS = GroupName("workers")


async def leading_store() -> tuple[MemoryStore, int]:
    store = MemoryStore()
    lease = await store.grant_lease(10)
    leader = await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)
    await store.commit([base.Put(HostGroup(spec=HostGroupSpec(name=WORKERS, max_hosts=3)))])
    return store, leader.epoch


def controller(store: MemoryStore, epoch: int) -> Controller:
    return Controller(store, ControllerSettings(epoch=epoch, guard=base.LeaderGuard(epoch), credentials=None,
                                                profile=default_profile(), elastic_interval=0.1))


def test_the_leaders_elastic_loop_records_each_groups_status() -> None:
    async def go() -> None:
        store, epoch = await leading_store()
        running = asyncio.create_task(controller(store, epoch).run())
        try:
            async with asyncio.timeout(20):
                while (status := await store.get(store.schema.hostgroup_status(WORKERS))) is None:
                    await asyncio.sleep(0.02)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        # No shape declared and no member to learn one from: the step says so, and nothing is asked.
        assert status.decisions and status.decisions[-1].action == "no_shape"
        assert status.requests == ()

    asyncio.run(go())


def test_a_term_the_elastic_loop_finds_over_ends_the_controller() -> None:
    async def go() -> None:
        store, epoch = await leading_store()
        with pytest.raises(NotLeader):
            async with asyncio.timeout(20):
                await controller(store, epoch + 99).run()
        assert await store.get(store.schema.hostgroup_status(WORKERS)) is None

    asyncio.run(go())
