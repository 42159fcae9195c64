"""Registration reads the host's record and status from the instance's follower, not from etcd (they were
most of etcd's slow applies at 5,000 hosts), and a record read there that is out of date costs one failed
compare-and-swap and a read of the store, never a lost change: over the real gRPC API on the in-memory
store, with a real follower and with a follower frozen behind the store (a fake behind ClusterReads)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc

from proto.scheduler.v1 import scheduler_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler import server
from scheduler.follower import ChangeFeed, ClusterState
from scheduler.model import HostAdmin, HostId, HostRecord
from scheduler.placement import registry
from scheduler.store.base import Put
from scheduler.store.memory import MemoryStore
from tests.fixtures.scheduler_api import Api, host_id, host_info, register, run
from tests.fixtures.sim_session import until


class CountingStore(MemoryStore):
    """Counts the single-record reads (``get``) made of it."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, ref: Any) -> Any:
        self.gets += 1
        return await super().get(ref)


def registration(n: int) -> pb.RegisterHostRequest:
    return pb.RegisterHostRequest(info=host_info(n), address=f"10.0.0.{n}:7070")


def test_a_following_instance_registers_hosts_without_reading_etcd() -> None:
    async def scenario(api: Api) -> None:
        assert isinstance(api.store, CountingStore) and api.follower is not None
        await until(lambda: api.follower is not None and api.follower.synced)
        await register(api, 1, ready=True)
        created = await api.store.get(api.store.schema.host(host_id(1)))
        assert created is not None
        follower = api.follower
        await until(lambda: (held := follower.held()) is not None and HostId(host_id(1)) in held.statuses)
        before = api.store.gets
        response = await api.registration.RegisterHost(registration(1))
        assert api.store.gets == before  # the record and the status came from the follower
        assert response.host.state == pb.HOST_STATE_READY and response.refresh_seconds > 0
    run(scenario, store=CountingStore)


class Frozen:
    """A ClusterReads whose state stopped following the store at some revision (a lagging follower)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    async def read(self, *, timeout: float | None = None) -> ClusterState:
        return self.state

    async def current(self) -> ClusterState:
        return self.state

    def held(self) -> ClusterState | None:
        return self.state

    def subscribe(self, after: int) -> ChangeFeed | None:
        return None


def test_a_record_read_out_of_date_from_the_follower_loses_nothing() -> None:
    async def scenario() -> None:
        store = CountingStore()
        first = HostRecord(id=HostId(host_id(1)), name="node-1", address="10.0.0.1:7070")
        await store.commit([Put(first)])
        frozen = Frozen(ClusterState(await store.snapshot()))
        # Behind the frozen state's back, an operator cordons the host.
        current = await store.get(store.schema.host(host_id(1)))
        assert current is not None
        await store.commit([Put(dataclasses.replace(current, admin=HostAdmin.CORDONED))])
        grpc_server = grpc.aio.server()
        server.add_services(grpc_server, store=store, profile=registry.default_profile(),
                            reads=frozen)  # type: ignore[arg-type]
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                before = store.gets
                response = await pb_grpc.RegistrationStub(channel).RegisterHost(registration(1))
        finally:
            await grpc_server.stop(None)
        # The stale record's compare-and-swap failed; the next attempt read the store and kept the cordon.
        assert store.gets == before + 1
        stored = await store.get(store.schema.host(host_id(1)))
        assert stored is not None and stored.admin is HostAdmin.CORDONED
        assert stored.address == "10.0.0.1:7070" and response.host.id == host_id(1)
    asyncio.run(scenario())
