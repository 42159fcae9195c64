"""The scheduler API's hosts through the generated stubs over a MemoryStore: registration as agents do it
(creates the record, updates it, keeps the operator's admin state, does not rewrite a registration that
changes nothing a decision reads within a minute, refuses bad ids and addresses), cordon / uncordon /
drain by name or id, and each host state derived from the record, the leader's status and the replicas
on the host."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import server
from scheduler.model import HostAdmin, HostRecord, ReplicaPhase
from scheduler.store.base import Delete
from tests.fixtures.scheduler_api import (
    Api,
    host_id,
    host_info,
    put,
    register,
    rejected,
    replica,
    run,
    service_yaml,
    set_status,
    shoal_error,
)
from tests.fixtures.scheduler_api import apply as apply_yaml


async def record(api: Api, n: int) -> HostRecord:
    found = await api.store.get(api.store.schema.host(host_id(n)))
    assert found is not None, f"host {n} has no record"
    return found


async def state(api: Api, ref: str) -> int:
    host: pb.Host = await api.scheduler.GetHost(pb.GetHostRequest(host=ref))
    return host.state


# -- registration ---------------------------------------------------------------------------------------

def test_registration_creates_the_host_record() -> None:
    async def scenario(api: Api) -> None:
        response = await api.registration.RegisterHost(pb.RegisterHostRequest(
            info=host_info(1, name="node-1", labels={"zone": "a"}, cpu_millis=1500, memory_bytes=2 << 30,
                           conditions=("DiskPressure",)),
            address="192.0.2.1:7070", metrics_address="192.0.2.1:9323"))
        assert response.refresh_seconds == server.REGISTRATION_REFRESH
        host = response.host
        assert (host.id, host.name, host.address, dict(host.labels)) == (
            host_id(1), "node-1", "192.0.2.1:7070", {"zone": "a"})
        # Registered, but the leader has not judged it yet.
        assert host.state == pb.HOST_STATE_NOT_READY and "has not reached its agent" in host.reason
        stored = await record(api, 1)
        assert (stored.capacity.cpu_allocatable_millis, stored.capacity.memory_allocatable_bytes) == (
            1500, 2 << 30)
        assert stored.metrics_address == "192.0.2.1:9323" and stored.conditions == ("DiskPressure",)
        assert stored.admin is HostAdmin.ACTIVE and stored.registered_at == stored.last_registered_at > 0
        got = await api.scheduler.GetHost(pb.GetHostRequest(host="node-1"))
        assert got.info.cpu_allocatable_millis == 1500 and got.metrics_address == "192.0.2.1:9323"
        # The answer's report is the one recorded (given as received, not parsed back from the record).
        assert host.info == got.info and host.info.conditions[0].type == "DiskPressure"

    run(scenario)


def test_registration_updates_the_record_and_keeps_the_admin_state() -> None:
    async def scenario(api: Api) -> None:
        await register(api, 1, labels={"zone": "a"})
        first = await record(api, 1)
        await api.scheduler.CordonHost(pb.HostRequest(host="node-1"))
        host = await register(api, 1, labels={"zone": "b"}, address="192.0.2.9:7071")
        assert host.address == "192.0.2.9:7071" and dict(host.labels) == {"zone": "b"}
        updated = await record(api, 1)
        assert updated.labels == (("zone", "b"),) and updated.admin is HostAdmin.CORDONED
        assert updated.registered_at == first.registered_at  # the same host, registered again
        assert await state(api, "node-1") == pb.HOST_STATE_CORDONED
        listed = await api.scheduler.ListHosts(pb.ListHostsRequest())
        assert [h.id for h in listed.hosts] == [host_id(1)]  # not a second host

    run(scenario)


def test_a_registration_that_changes_nothing_decisions_read_is_not_rewritten_within_a_minute() -> None:
    async def scenario(api: Api) -> None:
        await register(api, 1, committed_memory=1 << 20)
        before = await record(api, 1)
        revision = await api.store.current_revision()
        # Only use changed (committed memory): not rewritten, and the answer is the record as stored.
        host = await register(api, 1, committed_memory=512 << 20, ready=None)
        assert await api.store.current_revision() == revision
        assert host.revision == before.revision
        assert host.info.memory_committed_bytes == 1 << 20  # the report as recorded, not this one

        # A minute after the last write, the same registration is written (last_seen stays honest).
        old = dataclasses.replace(before, last_registered_at=before.last_registered_at
                                  - server.REGISTRATION_REWRITE - 1)
        await put(api, old)
        await register(api, 1, committed_memory=512 << 20, ready=None)
        rewritten = await record(api, 1)
        assert rewritten.capacity.memory_committed_bytes == 512 << 20
        assert rewritten.last_registered_at > old.last_registered_at

        # Anything a decision reads (allocatable memory here) is written at once.
        revision = await api.store.current_revision()
        await register(api, 1, memory_bytes=1 << 30, committed_memory=512 << 20, ready=None)
        assert await api.store.current_revision() > revision
        assert (await record(api, 1)).capacity.memory_allocatable_bytes == 1 << 30

    run(scenario)


def test_a_registration_that_changes_nothing_is_answered_without_parsing_the_record_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to an unchanged registration is the record as stored with the report it was written
    from; that report is parsed from the record's JSON once per revision of the record, not per
    registration (it was most of answering one)."""
    parsed: list[str] = []
    parse = json_format.Parse

    def counted(text: str, message: Any, **kwargs: Any) -> Any:
        parsed.append(text)
        return parse(text, message, **kwargs)

    monkeypatch.setattr(json_format, "Parse", counted)  # (the module scheduler.server calls it from)

    async def scenario(api: Api) -> None:
        await register(api, 1, committed_memory=1 << 20)
        assert parsed == []  # written: the answer has the report it was written from
        answers = [await register(api, 1, committed_memory=m << 20, ready=None) for m in (2, 3, 4)]
        assert parsed == []  # (this instance wrote that revision: it has the report already)
        assert {a.info.memory_committed_bytes for a in answers} == {1 << 20}  # the report as recorded

        # A revision written elsewhere (another instance) is parsed once, then kept.
        stored = await record(api, 1)
        await put(api, dataclasses.replace(stored, info_json=stored.info_json.replace(
            f'"memory_committed_bytes": "{1 << 20}"', f'"memory_committed_bytes": "{5 << 20}"')))
        answers = [await register(api, 1, committed_memory=m << 20, ready=None) for m in (6, 7)]
        assert len(parsed) == 1
        assert {a.info.memory_committed_bytes for a in answers} == {5 << 20}

    run(scenario)


def test_registration_refuses_bad_host_ids_and_addresses() -> None:
    async def scenario(api: Api) -> None:
        bad_id = host_info(1)
        bad_id.host_id = "not-hex"
        cases = [(pb.RegisterHostRequest(info=bad_id, address="10.0.0.1:7070"), "invalid host id"),
                 (pb.RegisterHostRequest(info=host_info(1), address="10.0.0.1"), "invalid address"),
                 (pb.RegisterHostRequest(info=host_info(1), address=""), "invalid address")]
        for request, message in cases:
            err = await rejected(api.registration.RegisterHost(request))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
            assert message in (err.details() or "")
        assert (await api.scheduler.ListHosts(pb.ListHostsRequest())).hosts == []

    run(scenario)


# -- states and administration --------------------------------------------------------------------------

def test_host_states_come_from_the_record_the_status_and_the_replicas() -> None:
    async def scenario(api: Api) -> None:
        await apply_yaml(api, service_yaml("web", replicas=1))
        await register(api, 1)                       # ready
        await register(api, 2, ready=None)           # no status yet: not ready
        await register(api, 3, ready=False)          # the leader cannot reach it
        await set_status(api, 3, ready=False, reason="agent unreachable: connection refused")
        await register(api, 4)                       # cordoned below
        await register(api, 5)                       # draining below, one replica left
        await register(api, 6)                       # draining below, empty: drained
        await register(api, 7, ready=False)          # cordoned but not ready: not ready wins
        await put(api, replica("web", "web-1", host=5, phase=ReplicaPhase.RUNNING, ready=True))
        for ref in ("node-4", "node-7"):
            await api.scheduler.CordonHost(pb.HostRequest(host=ref))
        for ref in ("node-5", "node-6"):
            await api.scheduler.DrainHost(pb.HostRequest(host=ref))
        listed = await api.scheduler.ListHosts(pb.ListHostsRequest())
        assert [(h.name, h.state, h.replicas) for h in listed.hosts] == [
            ("node-1", pb.HOST_STATE_READY, 0), ("node-2", pb.HOST_STATE_NOT_READY, 0),
            ("node-3", pb.HOST_STATE_NOT_READY, 0), ("node-4", pb.HOST_STATE_CORDONED, 0),
            ("node-5", pb.HOST_STATE_DRAINING, 1), ("node-6", pb.HOST_STATE_DRAINED, 0),
            ("node-7", pb.HOST_STATE_NOT_READY, 0)]
        reasons = {h.name: h.reason for h in listed.hosts}
        assert reasons["node-3"] == "agent unreachable: connection refused"
        assert "has not reached its agent" in reasons["node-2"] and reasons["node-1"] == ""
        assert listed.revision == await api.store.current_revision()

    run(scenario)


def test_cordon_uncordon_and_drain_by_name_id_or_id_prefix() -> None:
    async def scenario(api: Api) -> None:
        await register(api, 1)
        host = await api.scheduler.CordonHost(pb.HostRequest(host="node-1"))
        assert host.state == pb.HOST_STATE_CORDONED and (await record(api, 1)).admin is HostAdmin.CORDONED
        revision = await api.store.current_revision()
        again = await api.scheduler.CordonHost(pb.HostRequest(host=host_id(1)))  # already: nothing written
        assert again.state == pb.HOST_STATE_CORDONED and await api.store.current_revision() == revision
        host = await api.scheduler.UncordonHost(pb.HostRequest(host=host_id(1)[:30]))
        assert host.state == pb.HOST_STATE_READY and (await record(api, 1)).admin is HostAdmin.ACTIVE
        host = await api.scheduler.DrainHost(pb.HostRequest(host="node-1"))
        assert host.state == pb.HOST_STATE_DRAINED  # nothing on it to move
        assert (await record(api, 1)).admin is HostAdmin.DRAINING
        host = await api.scheduler.UncordonHost(pb.HostRequest(host="node-1"))
        assert host.state == pb.HOST_STATE_READY

    run(scenario)


def test_unknown_and_ambiguous_hosts() -> None:
    async def scenario(api: Api) -> None:
        await register(api, 1, name="twin")
        await register(api, 2, name="twin")
        calls = (api.scheduler.GetHost(pb.GetHostRequest(host="nope")),
                 api.scheduler.CordonHost(pb.HostRequest(host="nope")),
                 api.scheduler.UncordonHost(pb.HostRequest(host="nope")),
                 api.scheduler.DrainHost(pb.HostRequest(host="nope")))
        for call in calls:
            err = await rejected(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND and shoal_error(err) == "NotFound"
            assert "no such host: nope" in (err.details() or "")
        twins = await rejected(api.scheduler.CordonHost(pb.HostRequest(host="twin")))
        assert twins.code() == grpc.StatusCode.INVALID_ARGUMENT and "use its id" in (twins.details() or "")
        assert (await record(api, 1)).admin is HostAdmin.ACTIVE
        assert (await record(api, 2)).admin is HostAdmin.ACTIVE
        empty = await rejected(api.scheduler.GetHost(pb.GetHostRequest(host="")))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario)


def test_a_draining_host_is_drained_only_once_its_last_replica_is_gone() -> None:
    """A replica being stopped still runs on the host: removing the host then would kill it mid-stop (and
    leave its container behind if the host comes back), so the host is not drained yet."""
    async def scenario(api: Api) -> None:
        await apply_yaml(api, service_yaml("web", replicas=1))
        await register(api, 1)
        revision = await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True))
        await api.scheduler.DrainHost(pb.HostRequest(host="node-1"))
        assert await state(api, "node-1") == pb.HOST_STATE_DRAINING
        # Its replacement runs elsewhere; the leader is stopping it.
        stopping = replica("web", "web-1", host=1, phase=ReplicaPhase.STOPPING, revision=revision)
        await put(api, stopping)
        host = await api.scheduler.GetHost(pb.GetHostRequest(host="node-1"))
        assert (host.state, host.replicas) == (pb.HOST_STATE_DRAINING, 1)
        listed = await api.scheduler.ListHosts(pb.ListHostsRequest())
        assert listed.hosts[0].state == pb.HOST_STATE_DRAINING
        gone = await api.store.get(api.store.schema.replica("web", "web-1"))
        assert gone is not None
        await api.store.commit([Delete(gone)])  # its container is removed
        assert await state(api, "node-1") == pb.HOST_STATE_DRAINED

    run(scenario)


def test_an_ambiguous_host_id_prefix_says_so() -> None:
    async def scenario(api: Api) -> None:
        await register(api, 1)
        await register(api, 2)
        err = await rejected(api.scheduler.CordonHost(pb.HostRequest(host=host_id(1)[:8])))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert "ambiguous" in (err.details() or "") and "no such host" not in (err.details() or "")
        for n in (1, 2):
            assert (await record(api, n)).admin is HostAdmin.ACTIVE

    run(scenario)


def test_a_gone_host_is_forgotten_with_its_replaced_replicas_and_a_live_one_is_not() -> None:
    async def scenario(api: Api) -> None:
        await apply_yaml(api, service_yaml("web", replicas=2))
        await register(api, 1)                       # ready: its agent would register again
        await register(api, 2, ready=False)          # gone, its replica already replaced
        await register(api, 3, ready=False)          # gone, but within the grace: its replica still counts
        await put(api, replica("web", "web-1", host=2, phase=ReplicaPhase.STOPPING),
                  replica("web", "web-2", host=3, phase=ReplicaPhase.RUNNING, ready=True))
        live = await rejected(api.scheduler.DeleteHost(pb.HostRequest(host="node-1")))
        assert live.code() == grpc.StatusCode.FAILED_PRECONDITION and "stop its agent first" in (
            live.details() or "")
        held = await rejected(api.scheduler.DeleteHost(pb.HostRequest(host="node-3")))
        assert held.code() == grpc.StatusCode.FAILED_PRECONDITION and "web-2" in (held.details() or "")
        missing = await rejected(api.scheduler.DeleteHost(pb.HostRequest(host="node-9")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND

        gone = await api.scheduler.DeleteHost(pb.HostRequest(host="node-2"))
        assert (gone.name, gone.state) == ("node-2", pb.HOST_STATE_NOT_READY)
        assert await api.store.get(api.store.schema.host(host_id(2))) is None
        assert await api.store.get(api.store.schema.host_status(host_id(2))) is None
        assert await api.store.get(api.store.schema.replica("web", "web-1")) is None  # replaced: goes too
        kept = [h.name for h in (await api.scheduler.ListHosts(pb.ListHostsRequest())).hosts]
        assert kept == ["node-1", "node-3"]
        # It comes back: it registers again under the same id, as new.
        await register(api, 2)
        assert await state(api, "node-2") == pb.HOST_STATE_READY

    run(scenario)
