"""A new leader does not demote every host while its sessions connect: the status the last leader
recorded stands until the session reports trouble or misses its heartbeat (seen as the whole cluster
flipping to not ready for a moment at every failover, in the demo's timeline), and it is not written
again at all while they connect and list (a new term wrote every host's twice: docs/scaling.md, part
39)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

from bench.sim.host import HostSpec, SimHost
from scheduler import reconcile
from scheduler.agents import HEARTBEAT_TIMEOUT
from scheduler.controller import Controller, ControllerSettings
from scheduler.model import HostId, HostRecord, HostStatus
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord
from tests.fixtures.etcd import free_port

HOST = HostId("a" * 32)


@contextlib.asynccontextmanager
async def leading(store: MemoryStore, host: HostId, address: str, *,
                  heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
                  on_pass: Callable[[float, reconcile.Plan, reconcile.World], None] | None = None
                  ) -> AsyncIterator[HostStatus]:
    """A new term's controller running over ``store``, where the last leader recorded ``host`` (at
    ``address``) ready; yields that record, read before the term began; ended after."""
    lease = await store.grant_lease(10)
    leader = await store.campaign(LeaderRecord(instance="two"), lease_id=lease.id)
    await store.commit([base.Put(HostRecord(id=host, name="h", address=address)),
                        base.Put(HostStatus(id=host, ready=True, since=1.0))])
    recorded = await store.get(store.schema.host_status(host))
    assert recorded is not None
    settings = ControllerSettings(epoch=leader.epoch, guard=base.LeaderGuard(leader.epoch), credentials=None,
                                  profile=default_profile(), heartbeat_timeout=heartbeat_timeout)
    controller = Controller(store, settings, on_pass=on_pass)
    running = asyncio.create_task(controller.run())
    try:
        yield recorded
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


def test_a_new_leader_keeps_a_ready_host_ready_until_its_session_finds_it_silent() -> None:
    # An agent address that accepts connections and then says nothing: the session neither fails nor
    # completes, until its heartbeat timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)

    async def go() -> list[HostStatus]:
        store = MemoryStore()
        seen: list[HostStatus] = []
        async with leading(store, HOST, f"127.0.0.1:{silent.getsockname()[1]}", heartbeat_timeout=0.5), \
                asyncio.timeout(20):
            while not seen or seen[-1].ready:
                status = await store.get(store.schema.host_status(HOST))
                assert status is not None
                if not seen or status != seen[-1]:
                    seen.append(status)
                await asyncio.sleep(0.01)
        return seen

    try:
        seen = asyncio.run(go())
    finally:
        silent.close()
    demoted = seen[-1]
    assert not demoted.ready
    # Demoted for what the session found (its heartbeat missed), never for merely connecting.
    assert all(s.reason != "connecting to its agent" for s in seen), seen
    assert demoted.reason, demoted


def test_a_new_leaders_sessions_connecting_and_listing_leave_a_ready_hosts_status_unwritten() -> None:
    """The recorded status says what the new leader concludes too (ready): nothing is written as its
    session connects, nor once it has listed the host's containers."""
    async def go() -> tuple[HostStatus, HostStatus, list[bool]]:
        sim = SimHost(HostSpec(name="listed", port=free_port(), usage_interval=0.1))
        await sim.start()
        host = HostId(sim.spec.host_id)
        store = MemoryStore()
        listed: list[bool] = []  # per pass: whether the host's view was complete
        complete = asyncio.Event()  # set by the first pass that saw it so, once its writes have landed

        def on_pass(_seconds: float, _plan: reconcile.Plan, world: reconcile.World) -> None:
            listed.append(world.observed[host].complete)
            if listed[-1]:
                complete.set()

        try:
            async with leading(store, host, sim.spec.address, on_pass=on_pass) as before, \
                    asyncio.timeout(20):
                await complete.wait()
        finally:
            await sim.stop()
        after = await store.get(store.schema.host_status(host))
        assert after is not None
        return before, after, listed

    before, after, listed = asyncio.run(go())
    assert listed[0] is False  # the term's first pass met the session still connecting
    assert after.ready and after.revision == before.revision, (before, after)
