"""The scheduler API's services, called through the generated stubs on an in-process server over a
MemoryStore: apply (created / unchanged / updated, generations and template history, several documents,
YAML errors with path and line and nothing written, the structured form), scale (negative refused,
expected generation, concurrent scales both atomic), delete, get/list with their computed status, and
rollout status and undo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import grpc

from proto.agent.v1 import agent_pb2 as apb
from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler.follower import ClusterState
from scheduler.model import ReplicaPhase, Service
from scheduler.store.base import Committed, Delete, Landed, LeaderGuard, Op, Put
from scheduler.store.errors import StoreUnavailable
from scheduler.store.memory import MemoryStore
from tests.fixtures.scheduler_api import (
    Api,
    apply,
    put,
    rejected,
    replica,
    run,
    service_yaml,
    shoal_error,
)


async def stored(api: Api, name: str) -> Service:
    service = await api.store.get(api.store.schema.service(name))
    assert service is not None, f"service {name} is not in the store"
    return service


async def scale(api: Api, name: str, replicas: int, *, expected: int = 0) -> pb.Service:
    service: pb.Service = await api.scheduler.ScaleService(pb.ScaleServiceRequest(
        name=name, replicas=replicas, expected_generation=expected))
    return service


# -- apply ----------------------------------------------------------------------------------------------

def test_apply_creates_a_service_at_generation_one() -> None:
    async def scenario(api: Api) -> None:
        [result] = await apply(api, service_yaml("web", replicas=3))
        assert result.action == "created"
        assert (result.service.generation, result.service.template_generation) == (1, 1)
        assert result.service.spec.name == "web" and result.service.spec.replicas == 3
        assert result.service.spec.template.image == "busybox:1"
        service = await stored(api, "web")
        assert service.spec.replicas == 3 and service.revision == result.service.revision
        assert service.created_at > 0 and not service.deleting and service.history == ()

    run(scenario)


def test_applying_the_same_yaml_twice_changes_nothing() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web"))
        revision = await api.store.current_revision()
        # The same service written another way (keys reordered, flow style) is the same spec.
        same = ("replicas: 2\nname: web\ntemplate: {image: 'busybox:1', ports: [{container: 8080}], "
                "command: [httpd, -f, -p, '8080']}\n")
        for text in (service_yaml("web"), same):
            [result] = await apply(api, text)
            assert result.action == "unchanged"
            assert (result.service.generation, result.service.template_generation) == (1, 1)
        assert await api.store.current_revision() == revision  # nothing written

    run(scenario)


def test_apply_plans_from_the_follower_and_checks_with_etcd_what_it_read_there() -> None:
    """An apply reads the current services from the instance's follower; one read out of date (here: a
    follower frozen before the last change) costs a conflict and a retry on etcd, never a wrong answer."""
    async def scenario(api: Api) -> None:
        assert api.follower is not None
        await apply(api, service_yaml("web", replicas=1))
        await apply(api, service_yaml("gone", replicas=1))
        stale = ClusterState(await api.store.snapshot())  # web at 1 replica, gone still there
        await apply(api, service_yaml("web", replicas=2))
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="gone"))
        api.follower.held = lambda: stale  # type: ignore[method-assign]

        # Read as 1 replica, so planned as an update: its compare-and-swap fails, and etcd says unchanged.
        revision = await api.store.current_revision()
        [result] = await apply(api, service_yaml("web", replicas=2))
        assert result.action == "unchanged" and result.service.generation == 2
        assert await api.store.current_revision() == revision
        # Read as unchanged: that is checked with etcd, where it is a change, and written.
        [result] = await apply(api, service_yaml("web", replicas=1))
        assert result.action == "updated" and (await stored(api, "web")).spec.replicas == 1
        # Read as an update of a live service, while etcd has it being deleted: the retry refuses it.
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=service_yaml("gone"))))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

    run(scenario)


def test_a_replicas_only_change_bumps_the_generation_but_not_the_template() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        [result] = await apply(api, service_yaml("web", replicas=5))
        assert result.action == "updated"
        assert (result.service.generation, result.service.template_generation) == (2, 1)
        service = await stored(api, "web")
        assert service.spec.replicas == 5 and service.history == ()

    run(scenario)


def test_a_template_change_bumps_both_generations_and_records_the_previous_template() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", image="busybox:1"))
        await apply(api, service_yaml("web", replicas=4, image="busybox:1"))  # generation 2, template 1
        [result] = await apply(api, service_yaml("web", replicas=4, image="busybox:2"))
        assert result.action == "updated"
        assert (result.service.generation, result.service.template_generation) == (3, 3)
        service = await stored(api, "web")
        [previous] = service.history
        assert previous.template_generation == 1
        assert json.loads(previous.template_json)["image"] == "busybox:1"
        assert previous.facts.image == "busybox:1" and service.spec.facts.image == "busybox:2"

    run(scenario)


def test_several_documents_in_one_apply() -> None:
    async def scenario(api: Api) -> None:
        text = service_yaml("web") + "---\n" + service_yaml("api", replicas=1)
        results = await apply(api, text)
        assert [(r.service.spec.name, r.action) for r in results] == [("web", "created"), ("api", "created")]
        again = service_yaml("web") + "---\n" + service_yaml("api", replicas=3)
        results = await apply(api, again)
        assert [(r.service.spec.name, r.action, r.service.generation) for r in results] == [
            ("web", "unchanged", 1), ("api", "updated", 2)]
        listed = await api.scheduler.ListServices(pb.ListServicesRequest())
        assert [(s.spec.name, s.spec.replicas) for s in listed.services] == [("api", 3), ("web", 2)]

    run(scenario)


def test_a_yaml_error_names_the_path_and_line_and_writes_nothing() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web"))
        revision = await api.store.current_revision()
        # The first document is valid (and changes web); the second has a mistake on line 15 of the file.
        text = (service_yaml("web", replicas=9) + "---\n"
                + service_yaml("api", extra="placement:\n  strategy: spreed\n"))
        assert text.splitlines()[14] == "  strategy: spreed"
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=text, source="s.yaml")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert "s.yaml:15: placement.strategy: unknown strategy 'spreed'" in (err.details() or "")
        assert await api.store.current_revision() == revision
        assert (await stored(api, "web")).spec.replicas == 2
        assert await api.store.get(api.store.schema.service("api")) is None

        broken = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(
            yaml="name: web\nreplicas: [2\n", source="broken.yaml")))
        assert broken.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "broken.yaml:" in (broken.details() or "") and "not valid YAML" in (broken.details() or "")
        assert await api.store.current_revision() == revision

    run(scenario)


def test_every_problem_of_a_document_is_reported_at_once() -> None:
    async def scenario(api: Api) -> None:
        text = "name: web\nreplicas: x\ntemplate: {imag: busybox}\n"
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=text, source="w.yaml")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.details() or ""
        assert "w.yaml:2: replicas: expected a whole number" in details
        assert 'w.yaml:3: template.imag: unknown key (did you mean "image"?)' in details

    run(scenario)


def test_apply_needs_exactly_one_of_yaml_and_spec() -> None:
    async def scenario(api: Api) -> None:
        spec = pb.ServiceSpec(name="web", replicas=1, template=apb.ContainerSpec(image="busybox:1"))
        for request in (pb.ApplyServiceRequest(), pb.ApplyServiceRequest(yaml=service_yaml(), spec=spec)):
            err = await rejected(api.scheduler.ApplyService(request))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert await api.store.get(api.store.schema.service("web")) is None

    run(scenario)


def test_a_structured_spec_is_applied_and_validated_like_a_file() -> None:
    async def scenario(api: Api) -> None:
        spec = pb.ServiceSpec(name="web", replicas=2, template=apb.ContainerSpec(
            image="busybox:1", command=["httpd", "-f"], resources=apb.Resources(memory_bytes=64 << 20)))
        response = await api.scheduler.ApplyService(pb.ApplyServiceRequest(spec=spec))
        [result] = response.results
        assert result.action == "created" and result.service.spec.replicas == 2
        assert (await stored(api, "web")).spec.facts.memory_bytes == 64 << 20
        again = await api.scheduler.ApplyService(pb.ApplyServiceRequest(spec=spec))
        assert again.results[0].action == "unchanged"

        bad = pb.ServiceSpec(name="Bad_Name", replicas=-1, template=apb.ContainerSpec(image="busybox:1"))
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(spec=bad)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name:" in (err.details() or "") and "replicas:" in (err.details() or "")
        assert await api.store.get(api.store.schema.service("bad_name")) is None

    run(scenario)


def test_what_get_returns_applies_back_unchanged_even_at_zero_replicas() -> None:
    """A client that reads a service and applies its spec back (a structured read-modify-write) must not
    change it: in particular replicas 0 (absent from the protobuf JSON) is not the file's default of 1."""
    async def scenario(api: Api) -> None:
        extra = "update: {max_surge: 0, max_unavailable: 1}\nplacement: {constraints: ['zone!=c']}\n"
        await apply(api, service_yaml("web", memory="64M", extra=extra))
        await scale(api, "web", 0)
        service = await api.scheduler.GetService(pb.GetServiceRequest(name="web"))
        response = await api.scheduler.ApplyService(pb.ApplyServiceRequest(spec=service.spec))
        assert response.results[0].action == "unchanged"
        assert response.results[0].service.generation == service.generation
        assert (await stored(api, "web")).spec.replicas == 0

    run(scenario)


def test_a_service_being_deleted_refuses_apply() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web"))
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web"))
        revision = await api.store.current_revision()
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=service_yaml("web",
                                                                                                 replicas=4))))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert shoal_error(err) == "FailedPrecondition" and "being deleted" in (err.details() or "")
        assert await api.store.current_revision() == revision

    run(scenario)


# -- scale ----------------------------------------------------------------------------------------------

def test_scale_sets_replicas_and_bumps_the_generation() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        service = await scale(api, "web", 7)
        assert (service.spec.replicas, service.generation, service.template_generation) == (7, 2, 1)
        assert (await stored(api, "web")).spec.replicas == 7
        revision = await api.store.current_revision()
        same = await scale(api, "web", 7)  # nothing to change: nothing written
        assert same.generation == 2 and await api.store.current_revision() == revision

    run(scenario)


def test_a_negative_replica_count_is_refused() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        err = await rejected(scale(api, "web", -1))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert "must not be negative" in (err.details() or "")
        service = await stored(api, "web")
        assert (service.spec.replicas, service.generation) == (2, 1)

    run(scenario)


def test_scale_with_a_stale_expected_generation_is_aborted() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        await scale(api, "web", 3)  # generation 2
        err = await rejected(scale(api, "web", 5, expected=1))
        assert err.code() == grpc.StatusCode.ABORTED and shoal_error(err) == "Aborted"
        assert "generation 2, not 1" in (err.details() or "")
        assert (await stored(api, "web")).spec.replicas == 3
        # Even asking for the count it already has: the caller's premise is wrong, so it is told.
        assert (await rejected(scale(api, "web", 3, expected=1))).code() == grpc.StatusCode.ABORTED
        service = await scale(api, "web", 5, expected=2)
        assert (service.spec.replicas, service.generation) == (5, 3)

    run(scenario)


def test_two_concurrent_scales_both_land_atomically() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        first, second = await asyncio.gather(scale(api, "web", 3), scale(api, "web", 5))
        assert sorted([first.generation, second.generation]) == [2, 3]  # exactly two bumps, one each
        last = first if first.generation == 3 else second
        service = await stored(api, "web")
        assert (service.generation, service.spec.replicas) == (3, last.spec.replicas)

    run(scenario)


def test_of_two_concurrent_scales_expecting_one_generation_exactly_one_wins() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        outcomes = await asyncio.gather(scale(api, "web", 3, expected=1), scale(api, "web", 5, expected=1),
                                        return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, pb.Service)]
        lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert lost[0].code() == grpc.StatusCode.ABORTED and shoal_error(lost[0]) == "Aborted"
        service = await stored(api, "web")
        assert (service.generation, service.spec.replicas) == (2, won[0].spec.replicas)

    run(scenario)


def test_scaling_an_unknown_service_is_not_found() -> None:
    async def scenario(api: Api) -> None:
        err = await rejected(scale(api, "nope", 3))
        assert err.code() == grpc.StatusCode.NOT_FOUND and shoal_error(err) == "NotFound"
        assert "no such service: nope" in (err.details() or "")
        assert await api.store.get(api.store.schema.service("nope")) is None

    run(scenario)


def test_a_service_being_deleted_cannot_be_scaled() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web"))
        err = await rejected(scale(api, "web", 4))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await stored(api, "web")).spec.replicas == 2

    run(scenario)


# -- delete, get, list ----------------------------------------------------------------------------------

def test_delete_marks_the_service_deleting_and_is_idempotent() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web"))
        await put(api, replica("web", "web-1"))
        response = await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web"))
        assert response.service.deleting and response.service.generation == 1
        service = await stored(api, "web")
        assert service.deleting  # the leader removes it once its replicas are gone
        assert await api.store.get(api.store.schema.replica("web", "web-1")) is not None
        revision = await api.store.current_revision()
        again = await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web"))
        assert again.service.deleting and await api.store.current_revision() == revision
        got = await api.scheduler.GetService(pb.GetServiceRequest(name="web"))
        assert got.deleting

        err = await rejected(api.scheduler.DeleteService(pb.DeleteServiceRequest(name="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND and shoal_error(err) == "NotFound"

    run(scenario)


def test_get_and_list_carry_the_status_computed_from_replicas() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=4))
        await apply(api, service_yaml("api", replicas=0))
        await put(api,
                  replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True),
                  replica("web", "web-2", host=2, phase=ReplicaPhase.RUNNING, ready=True),
                  replica("web", "web-3", reason="0/2 hosts: 2 insufficient memory"),
                  replica("web", "web-4", host=1, phase=ReplicaPhase.FAILED, reason="image pull failed"),
                  replica("web", "web-5", host=2, phase=ReplicaPhase.STOPPING))
        service = await api.scheduler.GetService(pb.GetServiceRequest(name="web"))
        status = service.status
        # The stopping replica is on its way out: not counted.
        counts = (status.replicas, status.ready, status.pending, status.failed, status.updated)
        assert counts == (4, 2, 1, 1, 4)
        assert status.message == "0/2 hosts: 2 insufficient memory"
        listed = await api.scheduler.ListServices(pb.ListServicesRequest())
        assert [s.spec.name for s in listed.services] == ["api", "web"]
        assert listed.services[1].status == status and listed.services[0].status == pb.ServiceStatus()
        assert listed.revision == await api.store.current_revision()

        err = await rejected(api.scheduler.GetService(pb.GetServiceRequest(name="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "shoal get services" in (err.details() or "")
        empty = await rejected(api.scheduler.GetService(pb.GetServiceRequest(name="")))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario)


# -- rollouts -------------------------------------------------------------------------------------------

def test_rollout_status_counts_replicas_of_the_current_template() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2, image="busybox:1"))
        await apply(api, service_yaml("web", replicas=2, image="busybox:2"))  # template generation 2
        await put(api,
                  replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True, generation=1),
                  replica("web", "web-2", host=1, phase=ReplicaPhase.RUNNING, ready=True, generation=2),
                  replica("web", "web-3", host=2, phase=ReplicaPhase.STARTING, generation=2))
        rollout = await api.scheduler.RolloutStatus(pb.GetServiceRequest(name="web"))
        assert (rollout.template_generation, rollout.desired, rollout.updated, rollout.updated_ready,
                rollout.old, rollout.complete) == (2, 2, 2, 1, 1, False)
        assert rollout.previous_template_generation == 1
        assert "1/2 replicas of generation 2 ready, 1 of older generations" in rollout.message

        web_1 = await api.store.get(api.store.schema.replica("web", "web-1"))
        web_3 = await api.store.get(api.store.schema.replica("web", "web-3"))
        assert web_1 is not None and web_3 is not None
        running = replica("web", "web-3", host=2, phase=ReplicaPhase.RUNNING, ready=True, generation=2,
                          revision=web_3.revision)
        await api.store.commit([Delete(web_1), Put(running)])  # the old one stopped, the new one ready
        done = await api.scheduler.RolloutStatus(pb.GetServiceRequest(name="web"))
        assert done.complete and (done.updated, done.updated_ready, done.old) == (2, 2, 0)

        err = await rejected(api.scheduler.RolloutStatus(pb.GetServiceRequest(name="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND

    run(scenario)


def test_rollout_undo_goes_back_to_the_previous_template() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2, image="busybox:1"))
        await apply(api, service_yaml("web", replicas=3, image="busybox:2"))  # generation 2 = template 2
        service = await api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name="web"))
        assert service.spec.template.image == "busybox:1" and service.spec.replicas == 3
        assert (service.generation, service.template_generation) == (3, 3)
        stored_service = await stored(api, "web")
        assert stored_service.spec.facts.image == "busybox:1" and stored_service.history == ()
        rollout = await api.scheduler.RolloutStatus(pb.GetServiceRequest(name="web"))
        assert rollout.previous_template_generation == 0

        revision = await api.store.current_revision()
        err = await rejected(api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name="web")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and shoal_error(err) == "FailedPrecondition"
        assert "no earlier template" in (err.details() or "")
        assert await api.store.current_revision() == revision

    run(scenario)


def test_rollout_undo_without_history_is_a_failed_precondition() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        await apply(api, service_yaml("web", replicas=5))  # replicas only: no template history
        err = await rejected(api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name="web")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await stored(api, "web")).generation == 2
        missing = await rejected(api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name="nope")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND

    run(scenario)


def test_a_name_that_cannot_be_a_service_is_an_invalid_argument() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web"))
        revision = await api.store.current_revision()
        for name in ("a/b", "web x", "../web"):
            calls = (api.scheduler.GetService(pb.GetServiceRequest(name=name)),
                     api.scheduler.ScaleService(pb.ScaleServiceRequest(name=name, replicas=1)),
                     api.scheduler.DeleteService(pb.DeleteServiceRequest(name=name)),
                     api.scheduler.RolloutStatus(pb.GetServiceRequest(name=name)),
                     api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name=name)))
            for call in calls:
                err = await rejected(call)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
                assert shoal_error(err) == "InvalidArgument"
                assert f"service name {name!r}" in (err.details() or "")
        assert await api.store.current_revision() == revision

    run(scenario)


def test_several_documents_are_applied_all_or_nothing() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("api", replicas=1))
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="api"))
        revision = await api.store.current_revision()
        # web comes first in the file, but api (being deleted) refuses: web is not created either.
        text = service_yaml("web") + "---\n" + service_yaml("api", replicas=3)
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=text)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "api is being deleted" in (err.details() or "")
        assert await api.store.current_revision() == revision
        assert await api.store.get(api.store.schema.service("web")) is None

    run(scenario)


class OneCommitOnly(MemoryStore):
    """A store whose writes fail after the first commit (etcd lost its quorum then; reads still work)."""

    commits = 0

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        if self.commits:
            raise StoreUnavailable("etcd went away (test)")
        self.commits += 1
        return await super().commit(ops, guard=guard, in_flight=in_flight, on_landed=on_landed)


def test_several_documents_are_one_commit_so_etcd_going_away_cannot_half_apply_them() -> None:
    async def scenario(api: Api) -> None:
        text = service_yaml("web") + "---\n" + service_yaml("api") + "---\n" + service_yaml("db")
        results = await apply(api, text)
        assert [r.action for r in results] == ["created"] * 3
        assert len({r.service.revision for r in results}) == 1  # one transaction
        for name in ("web", "api", "db"):
            assert (await stored(api, name)).revision == results[0].service.revision

    run(scenario, store=OneCommitOnly)


def test_a_service_being_deleted_cannot_be_rolled_back() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", image="busybox:1"))
        await apply(api, service_yaml("web", image="busybox:2"))
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web"))
        revision = await api.store.current_revision()
        err = await rejected(api.scheduler.RolloutUndo(pb.RolloutUndoRequest(name="web")))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "being deleted" in (err.details() or "")
        assert await api.store.current_revision() == revision
        assert (await stored(api, "web")).spec.facts.image == "busybox:2"

    run(scenario)
