"""Scheduler instances over a MemoryStore: an instance's registration writes its record under a lease of
its own, registers again when that lease is lost, takes over a record its id left behind, waits out an
unreachable store, and removes the record on close; ``ListSchedulers`` lists them with the leader marked,
through the generated stubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import instances
from scheduler.api import ts as api_ts
from scheduler.store.base import Put
from scheduler.store.memory import MemoryStore
from scheduler.store.records import InstanceRecord, LeaderRecord
from tests.fixtures.scheduler_api import Api, run

WAIT_S = 10.0  # a hang guard, not a timing threshold


def record(instance: str, started_at: float = 1_700_000_000.25) -> InstanceRecord:
    return InstanceRecord(instance, addresses=(f"127.0.0.1:74{len(instance):02d}", "unix:///run/s.sock"),
                          http_address="127.0.0.1:9400", started_at=started_at, version="1.2.3")


@contextlib.asynccontextmanager
async def registered(store: MemoryStore, rec: InstanceRecord, ttl_s: int = 2
                     ) -> AsyncIterator[instances.InstanceRegistration]:
    registration = instances.InstanceRegistration(store, rec, ttl_s=ttl_s)
    task = asyncio.create_task(registration.run())
    try:
        await asyncio.wait_for(registration.registered.wait(), WAIT_S)
        yield registration
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await registration.close()


async def stored(store: MemoryStore, instance: str) -> InstanceRecord | None:
    return await store.get(store.schema.scheduler_instance(instance))


async def until(*, store: MemoryStore, instance: str, present: bool) -> None:
    """Polls the store (each poll yields to the loop) until the record is there, or gone."""
    async def check() -> None:
        while (await stored(store, instance) is not None) != present:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(check(), WAIT_S)


def test_an_instance_is_registered_under_its_own_lease_and_removed_on_close() -> None:
    async def scenario(api: Api) -> None:
        store = api.store
        async with registered(store, record("s-one")) as registration:
            found = await stored(store, "s-one")
            assert found is not None and found.addresses == record("s-one").addresses
            assert (found.http_address, found.version, found.started_at) == ("127.0.0.1:9400", "1.2.3",
                                                                             1_700_000_000.25)
            assert store.has_lease(registration.lease_id)
            lease = registration.lease_id
        assert await stored(store, "s-one") is None
        assert not store.has_lease(lease)

    run(scenario)


def test_an_instance_whose_lease_expired_registers_again() -> None:
    async def scenario(api: Api) -> None:
        store = api.store
        async with registered(store, record("s-one")) as registration:
            first = registration.lease_id
            store.expire_lease(first)  # as etcd does after the TTL without a refresh
            assert await stored(store, "s-one") is None
            await until(store=store, instance="s-one", present=True)
            assert registration.lease_id not in (0, first)

    run(scenario)


def test_a_record_left_by_the_same_instance_id_is_taken_over() -> None:
    async def scenario(api: Api) -> None:
        store = api.store
        old = await store.grant_lease(30)  # an earlier run of this id, killed before its lease expired
        await store.commit([Put(record("s-one", started_at=5.0), expected=0, lease=old.id)])
        async with registered(store, record("s-one")) as registration:
            found = await stored(store, "s-one")
            assert found is not None and found.started_at == 1_700_000_000.25
            store.expire_lease(old.id)  # the old lease no longer holds the key: it stays
            assert await stored(store, "s-one") is not None
            assert registration.lease_id != old.id

    run(scenario)


def test_an_unreachable_store_is_waited_out() -> None:
    async def scenario(api: Api) -> None:
        store = api.store
        store.available = False
        registration = instances.InstanceRegistration(store, record("s-one"))
        task = asyncio.create_task(registration.run())
        try:
            await asyncio.sleep(instances.RETRY_S * 2)  # lets it fail at least once (not a synchronization)
            assert not registration.registered.is_set()
            store.available = True
            await asyncio.wait_for(registration.registered.wait(), WAIT_S)
            assert await stored(store, "s-one") is not None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await registration.close()

    run(scenario)


def test_list_schedulers_marks_the_leader_and_its_epoch() -> None:
    async def scenario(api: Api) -> None:
        store = api.store
        empty = await api.scheduler.ListSchedulers(pb.ListSchedulersRequest())
        assert (list(empty.schedulers), empty.leader, empty.leader_epoch) == ([], "", 0)
        async with registered(store, record("s-a")), registered(store, record("s-bb")):
            reply = await api.scheduler.ListSchedulers(pb.ListSchedulersRequest())
            assert [(s.id, s.leader) for s in reply.schedulers] == [("s-a", False), ("s-bb", False)]
            assert reply.leader == "" and reply.revision > 0
            a = reply.schedulers[0]
            assert list(a.addresses) == ["127.0.0.1:7403", "unix:///run/s.sock"]
            assert (a.http_address, a.version, a.started_at.ToNanoseconds()) == (
                "127.0.0.1:9400", "1.2.3", api_ts(1_700_000_000.25).ToNanoseconds())

            lease = await store.grant_lease(5)
            held = await store.campaign(LeaderRecord("s-bb", address="127.0.0.1:7404", acquired_at=1e9),
                                        lease_id=lease.id)
            reply = await api.scheduler.ListSchedulers(pb.ListSchedulersRequest())
            assert [(s.id, s.leader) for s in reply.schedulers] == [("s-a", False), ("s-bb", True)]
            assert (reply.leader, reply.leader_epoch) == ("s-bb", held.epoch)
            assert reply.leader_since.seconds == 1_000_000_000
        reply = await api.scheduler.ListSchedulers(pb.ListSchedulersRequest())
        assert list(reply.schedulers) == []  # both closed; the leader key is the election's business
        assert reply.leader == "s-bb"

    run(scenario)
