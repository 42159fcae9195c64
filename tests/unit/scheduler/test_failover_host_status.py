"""A new leader does not demote every host while its sessions connect: the status the last leader
recorded stands until the session reports trouble or misses its heartbeat (seen as the whole cluster
flipping to not ready for a moment at every failover, in the demo's timeline)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from scheduler.controller import Controller, ControllerSettings
from scheduler.model import HostId, HostRecord, HostStatus
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord

HOST = HostId("a" * 32)


def test_a_new_leader_keeps_a_ready_host_ready_until_its_session_finds_it_silent() -> None:
    # An agent address that accepts connections and then says nothing: the session neither fails nor
    # completes, until its heartbeat timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)

    async def go() -> list[HostStatus]:
        store = MemoryStore()
        lease = await store.grant_lease(10)
        leader = await store.campaign(LeaderRecord(instance="two"), lease_id=lease.id)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        await store.commit([base.Put(HostRecord(id=HOST, name="h", address=address)),
                            base.Put(HostStatus(id=HOST, ready=True, complete=True, since=1.0))])
        seen: list[HostStatus] = []
        settings = ControllerSettings(epoch=leader.epoch, guard=base.LeaderGuard(leader.epoch),
                                      credentials=None, profile=default_profile(), heartbeat_timeout=0.5)
        running = asyncio.create_task(Controller(store, settings).run())
        try:
            async with asyncio.timeout(20):
                while not seen or seen[-1].ready:
                    status = await store.get(store.schema.host_status(HOST))
                    assert status is not None
                    if not seen or status != seen[-1]:
                        seen.append(status)
                    await asyncio.sleep(0.01)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
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
