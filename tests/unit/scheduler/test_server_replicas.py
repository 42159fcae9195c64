"""The scheduler API's replicas, explanations and endpoints through the generated stubs, over a
MemoryStore holding what the leader would have written: list filters (service, host by id or name,
states), get by full id or unique prefix, explain for a pending and a placed replica, and endpoints from
ready replicas' published ports on their hosts' addresses."""

from __future__ import annotations

import dataclasses

import grpc

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler.model import Decision, ReplicaPhase
from tests.fixtures.scheduler_api import (
    Api,
    apply,
    host_id,
    put,
    register,
    rejected,
    replica,
    run,
    service_yaml,
    shoal_error,
)


async def three_services(api: Api) -> None:
    """web (3 replicas over node-1 and node-2, one pending), api (1 on node-2), and two hosts."""
    await apply(api, service_yaml("web", replicas=3))
    await apply(api, service_yaml("api", replicas=1))
    await register(api, 1)
    await register(api, 2)
    await put(api,
              replica("web", "web-a1", host=1, phase=ReplicaPhase.RUNNING, ready=True),
              replica("web", "web-a2", host=2, phase=ReplicaPhase.STARTING),
              replica("web", "web-b3"),
              replica("api", "api-c1", host=2, phase=ReplicaPhase.FAILED, reason="image pull failed"))


async def ids(api: Api, request: pb.ListReplicasRequest) -> list[str]:
    response = await api.scheduler.ListReplicas(request)
    return [r.id for r in response.replicas]


# -- list and get ---------------------------------------------------------------------------------------

def test_list_replicas_filters_by_service_host_and_state() -> None:
    async def scenario(api: Api) -> None:
        await three_services(api)
        assert await ids(api, pb.ListReplicasRequest()) == ["api-c1", "web-a1", "web-a2", "web-b3"]
        assert await ids(api, pb.ListReplicasRequest(service="web")) == ["web-a1", "web-a2", "web-b3"]
        assert await ids(api, pb.ListReplicasRequest(host="node-2")) == ["api-c1", "web-a2"]
        assert await ids(api, pb.ListReplicasRequest(host=host_id(2))) == ["api-c1", "web-a2"]
        assert await ids(api, pb.ListReplicasRequest(service="web", host="node-2")) == ["web-a2"]
        states = [pb.REPLICA_STATE_PENDING, pb.REPLICA_STATE_FAILED]
        assert await ids(api, pb.ListReplicasRequest(states=states)) == ["api-c1", "web-b3"]
        assert await ids(api, pb.ListReplicasRequest(service="api", states=[pb.REPLICA_STATE_RUNNING])) == []
        assert await ids(api, pb.ListReplicasRequest(service="nope")) == []

        response = await api.scheduler.ListReplicas(pb.ListReplicasRequest(service="web"))
        first = response.replicas[0]
        assert (first.host, first.host_name, first.state, first.ready) == (
            host_id(1), "node-1", pb.REPLICA_STATE_RUNNING, True)
        assert response.revision == await api.store.current_revision()

        err = await rejected(api.scheduler.ListReplicas(pb.ListReplicasRequest(host="node-9")))
        assert err.code() == grpc.StatusCode.NOT_FOUND and shoal_error(err) == "NotFound"

    run(scenario)


def test_get_replica_by_id_or_unique_prefix() -> None:
    async def scenario(api: Api) -> None:
        await three_services(api)
        exact = await api.scheduler.GetReplica(pb.GetReplicaRequest(id="api-c1"))
        assert exact.id == "api-c1" and exact.reason == "image pull failed"
        assert exact.state == pb.REPLICA_STATE_FAILED
        assert (await api.scheduler.GetReplica(pb.GetReplicaRequest(id="web-b"))).id == "web-b3"

        ambiguous = await rejected(api.scheduler.GetReplica(pb.GetReplicaRequest(id="web-a")))
        assert ambiguous.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert shoal_error(ambiguous) == "InvalidArgument"
        assert "ambiguous" in (ambiguous.details() or "")
        missing = await rejected(api.scheduler.GetReplica(pb.GetReplicaRequest(id="zzz")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND and shoal_error(missing) == "NotFound"
        empty = await rejected(api.scheduler.GetReplica(pb.GetReplicaRequest(id="")))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario)


# -- explain --------------------------------------------------------------------------------------------

def test_explain_a_pending_replica_that_fits_nowhere() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1, memory="6G"))
        await register(api, 1, memory_bytes=4 << 30)
        await register(api, 2, memory_bytes=4 << 30)
        await register(api, 3, memory_bytes=8 << 30)
        await api.scheduler.CordonHost(pb.HostRequest(host="node-3"))
        await put(api, replica("web", "web-a1"))
        explanation = await api.scheduler.Explain(pb.ExplainRequest(replica="web-a"))
        assert explanation.replica.id == "web-a1"
        assert explanation.summary == "0/3 hosts: 2 insufficient memory, 1 cordoned"
        verdicts = {v.host_name: (v.feasible, list(v.reasons)) for v in explanation.hosts}
        assert verdicts == {"node-1": (False, ["insufficient memory"]),
                            "node-2": (False, ["insufficient memory"]), "node-3": (False, ["cordoned"])}

        # Once the leader recorded why, that reason is the summary.
        await put(api, replica("web", "web-a2", reason="0/3 hosts: 3 not ready"))
        recorded = await api.scheduler.Explain(pb.ExplainRequest(replica="web-a2"))
        assert recorded.summary == "0/3 hosts: 3 not ready"

    run(scenario)


def test_explain_a_placed_replica() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2, memory="1G"))
        await register(api, 1, memory_bytes=4 << 30)
        await register(api, 2, memory_bytes=8 << 30)
        await register(api, 3, memory_bytes=8 << 30, ready=False)
        placed = Decision(1_700_000_000.0, "placed", "node-2: 2/3 hosts fit, score 90.0; 1 not ready")
        await put(api, dataclasses.replace(replica("web", "web-a1", host=2, phase=ReplicaPhase.RUNNING,
                                                   ready=True), decisions=(placed,)))
        explanation = await api.scheduler.Explain(pb.ExplainRequest(replica="web-a1"))
        assert explanation.summary.startswith(f"on node-2 ({placed.reason}); now: 2/3 hosts fit")
        assert explanation.summary.endswith("; 1 not ready")
        assert [(d.action, d.reason) for d in explanation.decisions] == [("placed", placed.reason)]
        feasible = [v.host_name for v in explanation.hosts if v.feasible]
        assert feasible == ["node-2", "node-1"]  # best first: node-2 has the most room
        assert all(v.score > 0 and v.scores for v in explanation.hosts if v.feasible)
        [refused] = [v for v in explanation.hosts if not v.feasible]
        assert (refused.host_name, list(refused.reasons)) == ("node-3", ["not ready"])

    run(scenario)


def test_explain_an_unknown_replica_is_not_found() -> None:
    async def scenario(api: Api) -> None:
        err = await rejected(api.scheduler.Explain(pb.ExplainRequest(replica="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND

    run(scenario)


# -- endpoints ------------------------------------------------------------------------------------------

def test_endpoints_are_ready_replicas_published_ports_on_their_hosts_addresses() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=4))
        await apply(api, service_yaml("api", replicas=1))
        await register(api, 1, address="192.0.2.1:7070")
        await register(api, 2, address="192.0.2.2:7070")
        running = ReplicaPhase.RUNNING
        await put(api,
                  replica("web", "web-1", host=1, phase=running, ready=True, ports=((8080, 31001),)),
                  replica("web", "web-2", host=2, phase=running, ready=True, ports=((8080, 31002),)),
                  replica("web", "web-3", host=2, phase=running, ready=False, ports=((8080, 31003),)),
                  replica("web", "web-4", host=1, phase=ReplicaPhase.STARTING, ports=((8080, 31004),)),
                  replica("web", "web-5", host=1, phase=running, ready=True),  # no port known yet
                  replica("api", "api-1", host=2, phase=running, ready=True, ports=((8080, 31005),)))
        web = await api.scheduler.ListEndpoints(pb.ListEndpointsRequest(service="web"))
        assert [(e.replica, e.host, e.address, e.container_port, e.protocol) for e in web.endpoints] == [
            ("web-1", host_id(1), "192.0.2.1:31001", 8080, "tcp"),
            ("web-2", host_id(2), "192.0.2.2:31002", 8080, "tcp")]
        assert all(e.service == "web" for e in web.endpoints)
        every = await api.scheduler.ListEndpoints(pb.ListEndpointsRequest())
        assert [e.address for e in every.endpoints] == ["192.0.2.2:31005", "192.0.2.1:31001",
                                                         "192.0.2.2:31002"]
        replica_pb = await api.scheduler.GetReplica(pb.GetReplicaRequest(id="web-1"))
        assert [e.address for e in replica_pb.endpoints] == ["192.0.2.1:31001"]

        err = await rejected(api.scheduler.ListEndpoints(pb.ListEndpointsRequest(service="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND and shoal_error(err) == "NotFound"

    run(scenario)


def test_endpoints_on_an_ipv6_host_keep_the_brackets() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1))
        await register(api, 1, address="[fd00::1]:7070")
        await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True,
                               ports=((8080, 31001),)))
        response = await api.scheduler.ListEndpoints(pb.ListEndpointsRequest(service="web"))
        assert [e.address for e in response.endpoints] == ["[fd00::1]:31001"]  # IP:PORT, parseable

    run(scenario)
