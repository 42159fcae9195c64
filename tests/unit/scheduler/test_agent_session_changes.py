"""A session tells the controller about changes, not about heartbeats: usage snapshots that change
nothing a reconcile pass reads do not wake it (each host sends one a second), while a change of the
host's room does. Followed over real gRPC: a simulated host (bench/sim) answering the agent API."""

from __future__ import annotations

import asyncio
import time

from bench.sim.host import HostSpec
from proto.agent.v1 import agent_pb2 as pb
from scheduler.agents import AgentSession
from scheduler.model import LABEL_REPLICA, LABEL_SERVICE, HostId
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import following, until

BOUND_S = 15.0
INTERVAL_S = 0.02  # usage snapshots this often, so many arrive quickly


def test_heartbeats_do_not_wake_the_controller_but_a_change_of_room_does() -> None:
    spec = HostSpec(name="quiet", port=free_port(), usage_interval=INTERVAL_S)

    async def scenario() -> tuple[int, int, float, float]:
        changes: list[float] = []
        on_change = lambda _h: changes.append(time.monotonic())  # noqa: E731
        async with following(spec, on_change=on_change) as (host, session):
            await until(lambda: session.observation.connected and session.observation.complete,
                        every=INTERVAL_S)
            settled = len(changes)
            first_seen = session.last_seen
            snapshots = host.calls.get("WatchUsage.snapshot", 0)
            await until(lambda: host.calls.get("WatchUsage.snapshot", 0) >= snapshots + 20,
                        every=INTERVAL_S)
            quiet = len(changes) - settled
            heard = session.last_seen
            spec_ = pb.ContainerSpec(labels={LABEL_SERVICE: "web", LABEL_REPLICA: "r1"},
                                     resources=pb.Resources(cpu_millis=100, memory_bytes=64 << 20))
            await host.create(pb.CreateContainerRequest(id="r1", spec=spec_, start=True))
            await until(lambda: session.info is not None and session.info.cpu_committed_millis == 100,
                        every=INTERVAL_S)
            return quiet, len(changes) - settled - quiet, first_seen, heard

    quiet, after_create, first_seen, heard = asyncio.run(asyncio.wait_for(scenario(), 4 * BOUND_S))
    assert quiet == 0            # 20 heartbeats, no wake-up
    assert heard > first_seen    # yet each one was heard (the heartbeat watchdog counts them)
    assert after_create >= 1     # the create's events and the new committed room wake it


def test_an_attempt_that_never_connected_says_when_it_fails() -> None:
    """Nothing listens at the host's address: the session never connects, so no observation changes,
    yet the controller is told of its error and that the agent is down (the controller judges a host's
    status again only when its session says so: ``scheduler.host_facts``)."""
    async def scenario() -> tuple[list[tuple[str, bool]], AgentSession]:
        told: list[tuple[str, bool]] = []
        session = AgentSession(HostId("h-nobody"), f"127.0.0.1:{free_port()}", credentials=None,
                               on_change=lambda _h: told.append((session.error, session.agent_down)))
        session.start()
        try:
            await until(lambda: bool(told))
        finally:
            await session.close()
        return told, session

    told, session = asyncio.run(asyncio.wait_for(scenario(), 4 * BOUND_S))
    assert not session.observation.connected and not session.observation.complete
    error, agent_down = told[0]
    assert error.startswith("UNAVAILABLE") and agent_down
