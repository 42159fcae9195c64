"""The scheduler API when etcd cannot be reached, through the generated stubs over a MemoryStore switched
unavailable: every call answers UNAVAILABLE with shoal-error metadata and a message that says what
happened, and nothing is half-written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler.model import ReplicaPhase
from scheduler.store.base import Committed, Landed, LeaderGuard, Op, Snapshot
from scheduler.store.errors import StoreUnavailable
from scheduler.store.memory import MemoryStore
from tests.fixtures.scheduler_api import (
    Api,
    apply,
    host_info,
    put,
    register,
    rejected,
    replica,
    run,
    service_yaml,
    shoal_error,
)

Call = Callable[[Api], Awaitable[Any]]

# Every call of both services, each with a request that succeeds while etcd is up (see the last test).
CALLS: dict[str, Call] = {
    "ApplyService": lambda api: api.scheduler.ApplyService(pb.ApplyServiceRequest(
        yaml=service_yaml("web", replicas=5) + "---\n" + service_yaml("new", replicas=1))),
    "GetService": lambda api: api.scheduler.GetService(pb.GetServiceRequest(name="web")),
    "ListServices": lambda api: api.scheduler.ListServices(pb.ListServicesRequest()),
    "ScaleService": lambda api: api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=3)),
    "RolloutStatus": lambda api: api.scheduler.RolloutStatus(pb.GetServiceRequest(name="web")),
    "RolloutUndo": lambda api: api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name="web")),
    "ListReplicas": lambda api: api.scheduler.ListReplicas(pb.ListReplicasRequest(host="node-1")),
    "GetReplica": lambda api: api.scheduler.GetReplica(pb.GetReplicaRequest(id="web-1")),
    "Explain": lambda api: api.scheduler.Explain(pb.ExplainRequest(replica="web-1")),
    "ListHosts": lambda api: api.scheduler.ListHosts(pb.ListHostsRequest()),
    "GetHost": lambda api: api.scheduler.GetHost(pb.GetHostRequest(host="node-1")),
    "CordonHost": lambda api: api.scheduler.CordonHost(pb.HostRequest(host="node-1")),
    "UncordonHost": lambda api: api.scheduler.UncordonHost(pb.HostRequest(host="node-1")),
    "DrainHost": lambda api: api.scheduler.DrainHost(pb.HostRequest(host="node-1")),
    "ListEndpoints": lambda api: api.scheduler.ListEndpoints(pb.ListEndpointsRequest(service="web")),
    "Watch": lambda api: api.scheduler.Watch(pb.WatchRequest()).read(),
    "RegisterHost": lambda api: api.registration.RegisterHost(pb.RegisterHostRequest(
        info=host_info(2), address="10.0.0.2:7070")),
    "DeleteService": lambda api: api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web")),
}


async def populate(api: Api) -> None:
    await apply(api, service_yaml("web", replicas=2, image="busybox:1"))
    await apply(api, service_yaml("web", replicas=2, image="busybox:2"))  # history, for RolloutUndo
    await register(api, 1)
    await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True))


def test_every_call_answers_unavailable_with_a_clear_message_when_etcd_is_unreachable() -> None:
    async def scenario(api: Api) -> None:
        await populate(api)
        before = await api.store.snapshot()
        api.store.available = False
        for name, call in CALLS.items():
            err = await rejected(call(api))
            assert err.code() == grpc.StatusCode.UNAVAILABLE, name
            # The metadata tells the CLI the scheduler answered: trying another one will not help.
            assert shoal_error(err) == "Unavailable", name
            assert "etcd cannot be reached" in (err.details() or ""), name
            assert "retry" in (err.details() or ""), name
        api.store.available = True
        after = await api.store.snapshot()
        assert after.revision == before.revision  # nothing written, not even part of a call
        assert (after.services, after.replicas, after.hosts, after.host_statuses) == (
            before.services, before.replicas, before.hosts, before.host_statuses)

    run(scenario)


def test_the_same_calls_succeed_once_etcd_is_back() -> None:
    """The requests above are good ones: UNAVAILABLE was etcd's doing, not a bad request."""
    async def scenario(api: Api) -> None:
        await populate(api)
        api.store.available = False
        await rejected(CALLS["ScaleService"](api))
        api.store.available = True
        for name, call in CALLS.items():
            if name == "Watch":
                continue  # waits for a change; covered by test_server_watch.py
            await call(api)

    run(scenario)


class BrokenStore(MemoryStore):
    """A store whose snapshots fail with something no layer expects (a bug below the API)."""

    async def snapshot(self) -> Snapshot:
        raise RuntimeError("snapshot exploded")


def test_an_unexpected_error_is_internal_with_shoal_error_and_the_api_keeps_serving() -> None:
    async def scenario(api: Api) -> None:
        # The follower could not read the cluster either: every read falls back to a snapshot.
        for call in (api.scheduler.ListServices(pb.ListServicesRequest()),
                     api.scheduler.ListHosts(pb.ListHostsRequest())):
            err = await rejected(call)
            assert err.code() == grpc.StatusCode.INTERNAL and shoal_error(err) == "Internal"
            assert err.details() == "internal error: snapshot exploded"
        # Calls that do not read the cluster still work.
        assert (await api.scheduler.ListSchedulers(pb.ListSchedulersRequest())).revision > 0

    run(scenario, store=BrokenStore)


class LostReplyStore(MemoryStore):
    """A store whose next commit is applied but its reply lost, as when etcd goes away mid-transaction:
    the commit raises ``StoreUnavailable`` with ``outcome_unknown``."""

    lose_next = False

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        committed = await super().commit(ops, guard=guard, in_flight=in_flight, on_landed=on_landed)
        if self.lose_next:
            self.lose_next = False
            raise StoreUnavailable("etcd stopped answering; the transaction may or may not have been "
                                   "applied: read again", outcome_unknown=True)
        return committed


def test_a_write_whose_outcome_is_unknown_is_not_reported_as_nothing_written() -> None:
    async def scenario(api: Api) -> None:
        assert isinstance(api.store, LostReplyStore)
        await apply(api, service_yaml("web", replicas=2))
        api.store.lose_next = True
        err = await rejected(api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=5)))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and shoal_error(err) == "Unavailable"
        details = err.details() or ""
        assert "nothing was written" not in details  # it was: the scale landed
        assert "may or may not have been applied" in details and "read it again" in details
        service = await api.scheduler.GetService(pb.GetServiceRequest(name="web"))
        assert service.spec.replicas == 5

    run(scenario, store=LostReplyStore)
