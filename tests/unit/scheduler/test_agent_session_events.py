"""A session takes each event's container from the event itself (``WatchEvents`` with
``with_container``), so following a host costs no ``GetContainer`` per event; an agent that does not send
it is followed as before, with a ``GetContainer`` per event. Over real gRPC against a simulated host."""

from __future__ import annotations

import asyncio

import pytest

from bench.sim.host import HostSpec
from proto.agent.v1 import agent_pb2 as pb
from scheduler.model import LABEL_REPLICA, LABEL_SERVICE
from scheduler.observed import ContainerState
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import following, until

BOUND_S = 15.0


@pytest.mark.parametrize("carried", [True, False])
def test_a_created_container_is_followed_with_or_without_gets(carried: bool) -> None:
    spec = HostSpec(name=f"events-{carried}", port=free_port(), usage_interval=0.05, start_delay=0.05,
                    events_with_container=carried)

    async def scenario() -> tuple[int, ContainerState]:
        async with following(spec) as (host, session):
            await until(lambda: session.observation.complete)
            labels = {LABEL_SERVICE: "web", LABEL_REPLICA: "r1"}
            # Created straight on the host (not through the session): only its events tell the session.
            await host.create(pb.CreateContainerRequest(id="r1", spec=pb.ContainerSpec(labels=labels),
                                                        start=True))
            seen = lambda: session.observation.containers.get("r1")  # noqa: E731
            await until(lambda: (c := seen()) is not None and c.state == ContainerState.RUNNING)
            container = seen()
            assert container is not None
            return host.calls.get("GetContainer", 0), container.state

    gets, state = asyncio.run(asyncio.wait_for(scenario(), 4 * BOUND_S))
    assert state == ContainerState.RUNNING
    if carried:
        assert gets == 0
    else:
        assert gets >= 1
