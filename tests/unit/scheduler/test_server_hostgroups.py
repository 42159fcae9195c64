"""The scheduler API's host groups, through the generated stubs on an in-process server over a
MemoryStore: apply (created / configured / unchanged, generations, nothing written when unchanged, mixed
with services in one commit, all documents validated and applied all or nothing, a concurrent write
retried on the re-read record), list and get (members by label with their state and requests, the
leader's status: requests with delivery state and last error, drains, decisions), and delete (refused
with work in flight unless forced, the status record kept, compare-and-swap)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grpc

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import spec as service_file
from scheduler.model import (
    DeliveryState,
    GroupDecision,
    GroupName,
    HostGroup,
    HostGroupStatus,
    HostId,
    ProviderRequest,
    ProviderRequestKind,
    ReplicaPhase,
)
from scheduler.store.base import Committed, Landed, LeaderGuard, Op, Put
from scheduler.store.memory import MemoryStore
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

WORKERS = "kind: hostgroup\nname: workers\nmin: 1\nmax: 5\nshape: {cpus: 2, memory: 4G}\n"


def group_yaml(name: str = "workers", *, high: int = 5, extra: str = "") -> str:
    return f"kind: hostgroup\nname: {name}\nmax: {high}\n{extra}"


async def stored(api: Api, name: str) -> HostGroup | None:
    return await api.store.get(api.store.schema.hostgroup(name))


async def get(api: Api, name: str) -> pb.HostGroup:
    group: pb.HostGroup = await api.scheduler.GetHostGroup(pb.GetHostGroupRequest(name=name))
    return group


def status(**fields: object) -> HostGroupStatus:
    return HostGroupStatus(group=GroupName("workers"), **fields)  # type: ignore[arg-type]


def pending_request(n: int, *, error: str = "") -> ProviderRequest:
    return ProviderRequest(id=f"workers-{n}", kind=ProviderRequestKind.SCALE_OUT, created_at=100.0, count=2,
                           reason="7 replicas pending", attempts=3, last_error=error)


# -- apply ----------------------------------------------------------------------------------------------

def test_apply_creates_a_host_group_at_generation_one() -> None:
    async def scenario(api: Api) -> None:
        [result] = await apply(api, WORKERS)
        assert (result.kind, result.action) == ("hostgroup", "created")
        assert not result.HasField("service")
        group = result.hostgroup
        assert (group.spec.name, group.spec.min_hosts, group.spec.max_hosts, group.generation) == \
            ("workers", 1, 5, 1)
        assert group.spec.shape.cpu_millis == 2000 and dict(group.spec.shape.labels) == {"group": "workers"}
        assert not group.spec.HasField("webhook") and not group.spec.HasField("command")
        record = await stored(api, "workers")
        assert record is not None and record.revision == group.revision and record.created_at > 0
        # What the API sends back as YAML is a document apply takes back as the same spec.
        assert service_file.parse_file(group.spec_yaml).hostgroups == (record.spec,)

    run(scenario)


def test_the_same_group_applied_again_writes_nothing_and_a_change_bumps_the_generation() -> None:
    async def scenario(api: Api) -> None:
        [first] = await apply(api, WORKERS)
        revision = await api.store.current_revision()
        same = "name: workers\nkind: hostgroup\nmax: 5\nmin: 1\nshape: {memory: 4096M, cpus: '2.0'}\n"
        for text in (WORKERS, same):
            [result] = await apply(api, text)
            assert (result.action, result.hostgroup.generation) == ("unchanged", 1)
        assert await api.store.current_revision() == revision
        [changed] = await apply(api, WORKERS.replace("max: 5", "max: 8"))
        assert (changed.action, changed.hostgroup.generation, changed.hostgroup.spec.max_hosts) == \
            ("configured", 2, 8)
        record = await stored(api, "workers")
        assert record is not None and record.generation == 2
        assert record.created_at == first.hostgroup.created_at.ToNanoseconds() / 1e9
        assert record.updated_at > record.created_at

    run(scenario)


def test_services_and_host_groups_of_one_file_land_in_one_commit() -> None:
    async def scenario(api: Api) -> None:
        results = await apply(api, WORKERS + "---\n" + service_yaml("web"))
        assert [(r.kind, r.action) for r in results] == [("service", "created"), ("hostgroup", "created")]
        assert results[0].service.spec.name == "web"
        assert results[0].service.revision == results[1].hostgroup.revision  # one transaction

    run(scenario)


def test_a_bad_host_group_document_is_reported_with_its_line_and_nothing_is_applied() -> None:
    async def scenario(api: Api) -> None:
        revision = await api.store.current_revision()
        text = service_yaml("web") + "---\n" + group_yaml(extra="min: 9\n")
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=text, source="c.yaml")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert "c.yaml:11: min: min (9) is more than max (5)" in (err.details() or "")
        assert await api.store.current_revision() == revision
        assert await api.store.get(api.store.schema.service("web")) is None

    run(scenario)


def test_a_refused_service_in_the_file_keeps_its_host_groups_out_too() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("api"))
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="api"))
        revision = await api.store.current_revision()
        err = await rejected(apply(api, WORKERS + "---\n" + service_yaml("api")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert await api.store.current_revision() == revision
        assert await stored(api, "workers") is None

    run(scenario)


class RacingStore(MemoryStore):
    """Another client applies its own ``workers`` group just before this apply's first commit."""

    raced = False

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        if not self.raced and any(isinstance(op.record, HostGroup) for op in ops):
            self.raced = True
            other = service_file.parse_file(group_yaml(high=2)).hostgroups[0]
            await super().commit([Put(HostGroup(spec=other, created_at=1.0, updated_at=1.0))])
        return await super().commit(ops, guard=guard, in_flight=in_flight, on_landed=on_landed)


def test_a_concurrent_apply_is_a_conflict_and_the_apply_is_redone_on_what_won() -> None:
    async def scenario(api: Api) -> None:
        [result] = await apply(api, WORKERS)
        # The first commit expected no record and lost; the retry configured the other client's record.
        assert (result.action, result.hostgroup.generation, result.hostgroup.spec.max_hosts) == \
            ("configured", 2, 5)
        record = await stored(api, "workers")
        assert record is not None and record.created_at == 1.0 and record.spec.min_hosts == 1

    run(scenario, store=RacingStore)


# -- list and get ---------------------------------------------------------------------------------------

def test_get_shows_members_by_label_with_their_state_and_requests() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, WORKERS + "---\nname: web\nreplicas: 1\ntemplate:\n  image: busybox:1\n"
                              "  resources: {cpus: 0.5, memory: 1G}\n")
        await register(api, 1, name="w1", labels={"group": "workers"}, cpu_millis=2000, memory_bytes=4 << 30)
        await register(api, 2, name="w2", labels={"group": "workers"}, ready=False)
        await register(api, 3, name="other", labels={"group": "db"})
        await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True))
        group = await get(api, "workers")
        assert [(m.name, m.state, m.replicas) for m in group.members] == [
            ("w1", pb.HOST_STATE_READY, 1), ("w2", pb.HOST_STATE_NOT_READY, 0)]
        w1 = group.members[0]
        assert (w1.cpu_requested_millis, w1.cpu_allocatable_millis) == (500, 2000)
        assert (w1.memory_requested_bytes, w1.memory_allocatable_bytes) == (1 << 30, 4 << 30)
        assert w1.id == host_id(1) and not w1.draining_since.seconds
        assert group.status.hosts == 2
        assert group.status.revision == 0 and not group.status.requests  # the leader wrote nothing yet

    run(scenario)


def test_get_carries_the_leaders_status_requests_drains_and_decisions() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, WORKERS)
        await register(api, 4, name="w4", labels={"group": "workers"})
        delivered = dataclasses.replace(pending_request(1), state=DeliveryState.DELIVERED, delivered_at=101.0)
        await put(api, status(
            desired_hosts=3, pending_replicas=7, expected_hosts=2, expected_until=700.0,
            requests=(delivered, pending_request(2, error="HTTP 503 from the provider")),
            draining=((HostId(host_id(4)), 150.0),), underused_since=((HostId(host_id(4)), 120.0),),
            decisions=(GroupDecision(100.0, "scale_out", "2 hosts of workers would fit them all"),)))
        group = await get(api, "workers")
        s = group.status
        assert (s.desired_hosts, s.pending_replicas, s.expected_hosts, s.undelivered_requests) == (3, 7, 2, 1)
        assert s.revision > 0
        assert [(r.id, r.kind, r.state, r.attempts, r.last_error) for r in s.requests] == [
            ("workers-1", "scale_out", "delivered", 3, ""),
            ("workers-2", "scale_out", "pending", 3, "HTTP 503 from the provider")]
        assert [(h.host, h.host_name) for h in s.draining] == [(host_id(4), "w4")]
        assert [(d.action, d.reason) for d in s.decisions] == [
            ("scale_out", "2 hosts of workers would fit them all")]
        member = group.members[0]
        assert member.draining_since.seconds == 150 and member.underused_since.seconds == 120

    run(scenario)


def test_list_is_in_name_order_and_get_of_an_unknown_group_is_not_found() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, group_yaml("zeta") + "---\n" + group_yaml("alpha"))
        listing = await api.scheduler.ListHostGroups(pb.ListHostGroupsRequest())
        assert [g.spec.name for g in listing.hostgroups] == ["alpha", "zeta"]
        assert listing.revision == await api.store.current_revision()
        err = await rejected(api.scheduler.GetHostGroup(pb.GetHostGroupRequest(name="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "no such host group: nope" in (err.details() or "")
        err = await rejected(api.scheduler.GetHostGroup(pb.GetHostGroupRequest(name="")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario)


# -- delete ---------------------------------------------------------------------------------------------

def test_delete_removes_the_declaration_keeps_the_hosts_and_the_status_record() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, WORKERS)
        await register(api, 1, labels={"group": "workers"})
        delivered = dataclasses.replace(pending_request(1), state=DeliveryState.DELIVERED)
        await put(api, status(requests=(delivered,), next_request_number=2))
        reply = await api.scheduler.DeleteHostGroup(pb.DeleteHostGroupRequest(name="workers"))
        assert reply.hostgroup.spec.name == "workers" and reply.hostgroup.status.hosts == 1
        assert await stored(api, "workers") is None
        kept = await api.store.get(api.store.schema.hostgroup_status("workers"))
        assert kept is not None and kept.next_request_number == 2  # a new "workers" never reuses an id
        assert await api.store.get(api.store.schema.host(host_id(1))) is not None
        err = await rejected(api.scheduler.DeleteHostGroup(pb.DeleteHostGroupRequest(name="workers")))
        assert err.code() == grpc.StatusCode.NOT_FOUND

    run(scenario)


WITH_PROVIDER = WORKERS + "provider:\n  command: {argv: [/usr/local/bin/provision]}\n"


def test_delete_is_refused_with_undelivered_requests_or_drains_unless_forced() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, WITH_PROVIDER)
        await put(api, status(requests=(pending_request(3, error="connection refused"),),
                              draining=((HostId("h9"), 5.0),)))
        revision = await api.store.current_revision()
        err = await rejected(api.scheduler.DeleteHostGroup(pb.DeleteHostGroupRequest(name="workers")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.details() or ""
        assert "workers-3" in details and "connection refused" in details and "h9" in details
        assert "--force" in details
        assert await api.store.current_revision() == revision and await stored(api, "workers") is not None
        await api.scheduler.DeleteHostGroup(pb.DeleteHostGroupRequest(name="workers", force=True))
        assert await stored(api, "workers") is None

    run(scenario)


def test_a_group_without_a_provider_has_no_delivery_to_wait_for() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, WORKERS)  # a dry run: decisions recorded, nobody asked
        await put(api, status(requests=(pending_request(3),)))
        await api.scheduler.DeleteHostGroup(pb.DeleteHostGroupRequest(name="workers"))
        assert await stored(api, "workers") is None

    run(scenario)


class ChangedBeforeDelete(MemoryStore):
    """The group is re-applied (a new revision) between the delete's read and its commit, once."""

    raced = False

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        if not self.raced and any(type(op).__name__ == "Delete" for op in ops):
            self.raced = True
            current = await self.get(self.schema.hostgroup("workers"))
            assert current is not None
            await super().commit([Put(dataclasses.replace(current, generation=current.generation + 1))])
        return await super().commit(ops, guard=guard, in_flight=in_flight, on_landed=on_landed)


def test_delete_is_compare_and_swap_and_retries_on_the_new_revision() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, WORKERS)
        reply = await api.scheduler.DeleteHostGroup(pb.DeleteHostGroupRequest(name="workers"))
        assert reply.hostgroup.generation == 2  # what it deleted is the record it re-read
        assert await stored(api, "workers") is None

    run(scenario, store=ChangedBeforeDelete)
