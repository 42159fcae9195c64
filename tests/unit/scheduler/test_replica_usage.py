"""Usage is decoded from a host's snapshot only when read, and looked up per replica through its host's
session (the autoscaler asks about a few services' replicas, not all of them)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from bench.sim.host import HostSpec
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from scheduler.agents import LazyStub, ReplicaUsage, observe_container, usage_of
from scheduler.model import LABEL_REPLICA, LABEL_SERVICE, HostId, Replica, ReplicaId, ServiceName
from scheduler.observed import ContainerUsage
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import following, until

BOUND_S = 15.0
INTERVAL_S = 0.02


class _Session:
    def __init__(self, usage: dict[str, ContainerUsage]) -> None:
        self.usage = usage


def _usage(cpu: int) -> ContainerUsage:
    return ContainerUsage(cpu_milli=cpu, memory_bytes=1, started_at=0.0, at=1.0)


def test_replica_usage_is_found_through_the_replicas_host_only() -> None:
    a, b = _Session({"r1": _usage(10)}), _Session({"r2": _usage(20), "stray": _usage(30)})
    sessions = cast(Any, {HostId("ha"): a, HostId("hb"): b})
    replicas = {ReplicaId(rid): Replica(id=ReplicaId(rid), service=ServiceName("s"), generation=1,
                                        host=HostId(host) if host else None)
                for rid, host in (("r1", "ha"), ("r2", "hb"), ("r3", ""))}
    usage = ReplicaUsage(sessions, replicas)
    assert usage["r1"].cpu_milli == 10 and usage.get("r2") == _usage(20)
    assert usage.get("r3") is None        # pending: on no host
    assert usage.get("stray") is None     # a container no replica record names
    assert usage.get("nope") is None
    b.usage = {}
    assert usage.get("r2") is None        # its host no longer reports it
    assert sorted(usage) == ["r1"] and len(usage) == 1


def test_usage_of_takes_the_receipt_time_when_the_snapshot_has_none() -> None:
    snapshot = pb.UsageSnapshot(containers=[pb.ContainerStats(id="r1", cpu_cores=0.25,
                                                              labels={LABEL_REPLICA: "r1"})])
    assert usage_of(snapshot, 123.0)["r1"] == ContainerUsage(cpu_milli=250, memory_bytes=0, started_at=0.0,
                                                             at=123.0)


def test_a_sessions_usage_follows_its_latest_snapshot() -> None:
    spec = HostSpec(name="busy", port=free_port(), usage_interval=INTERVAL_S)

    async def scenario() -> tuple[float, float]:
        async with following(spec) as (host, session):
            spec_ = pb.ContainerSpec(labels={LABEL_SERVICE: "web", LABEL_REPLICA: "r1"},
                                     resources=pb.Resources(cpu_millis=100, memory_bytes=64 << 20))
            await host.create(pb.CreateContainerRequest(id="r1", spec=spec_, start=True))
            await until(lambda: "r1" in session.usage)
            first = session.usage["r1"].at
            await until(lambda: session.usage["r1"].at > first)
            return first, session.usage["r1"].at

    first, later = asyncio.run(asyncio.wait_for(scenario(), 4 * BOUND_S))
    assert later > first  # a newer snapshot replaced the decoded usage


def test_observed_containers_share_their_strings() -> None:
    """A leader's session worker keeps every container of its hosts (100,000 at 5,000 hosts): a replica id
    equal to its container's id is that string, and a service's name is one string for all of them."""
    def container(cid: str, replica: str) -> pb.Container:
        labels = {LABEL_SERVICE: "web", LABEL_REPLICA: replica}
        return pb.Container(id=cid, spec=pb.ContainerSpec(labels=labels))

    a, b = observe_container(container("web-1", "web-1")), observe_container(container("web-2", "web-2"))
    assert a is not None and b is not None
    assert a.replica == "web-1" and a.replica is a.id
    assert a.service == "web" and a.service is b.service
    other = observe_container(container("c1", "r1"))
    assert other is not None and (other.id, other.replica) == ("c1", "r1")


def test_a_lazy_stub_makes_each_method_once_when_first_used() -> None:
    """A session's ``Containers`` client: a method is made on the channel as the generated stub makes
    it, on first use only (a session worker follows thousands of hosts and each calls a few)."""
    made: list[tuple[str, str]] = []

    class Channel:
        def __getattr__(self, kind: str) -> Any:
            def make(method: str, **kwargs: Any) -> tuple[str, str, Any]:
                made.append((kind, method))
                return (kind, method, kwargs["response_deserializer"])
            return make

    stub = cast(Any, LazyStub(pb_grpc.ContainersStub, cast(Any, Channel())))
    assert made == []
    create = stub.CreateContainers
    assert create == ("unary_unary", "/shoal.agent.v1.Containers/CreateContainers",
                      pb.CreateContainersResponse.FromString)
    assert stub.CreateContainers is create and made == [create[:2]]
    assert stub.WatchEvents[:2] == ("unary_stream", "/shoal.agent.v1.Containers/WatchEvents")
    with pytest.raises(AttributeError):
        stub.NoSuchCall  # noqa: B018
