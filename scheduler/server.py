"""The scheduler's gRPC API: protobuf in, domain values to the store, protobuf out.

Every instance serves it, leader or not: reads and writes go to etcd, which is the only state, so any
instance answers the same and a client may fail over between them. Writes are compare-and-swap on the
record's revision, re-read and recomputed on a conflict (a few times), so two clients scaling at once
both succeed atomically — and a client that named an ``expected_generation`` that is no longer current
gets ABORTED instead. Nothing here decides placement or talks to agents: the leader's controller does.

This module is the only one that knows status codes: scheduler errors map one to one, and every error
carries the trailing metadata ``shoal-error`` naming its kind (the CLI fails over to another scheduler
only for an UNAVAILABLE *without* it: a scheduler that answers is up, even when etcd is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from proto.agent.v1 import agent_pb2 as apb
from proto.scheduler.v1 import scheduler_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler import api, api_hostgroups, auth, errors, instances
from scheduler.autoscale import replay
from scheduler.follower import ClusterReads, ClusterState, SnapshotReads
from scheduler.model import (
    Capacity,
    GroupName,
    HostAdmin,
    HostGroup,
    HostGroupSpec,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateRevision,
)
from scheduler.placement import batch
from scheduler.placement.framework import Profile, request_for
from scheduler.placement.view import build_view
from scheduler.spec import SpecError, parse_file, spec_from_api
from scheduler.store import base
from scheduler.store.errors import Compacted, Conflict, StoreError, StoreUnavailable
from scheduler.store.keys import InvalidKey

log = logging.getLogger(__name__)
T = TypeVar("T")

CAS_ATTEMPTS = 8
HISTORY_KEEP = 10
REGISTRATION_REFRESH = 5.0
# A registration that changes nothing a decision reads is written at most this often.
REGISTRATION_REWRITE = 60.0
_HOST_ID = re.compile(r"^[0-9a-f]{32}$")
_ADDRESS = re.compile(r"^[^\s/]+:\d{1,5}$")

_STATUS = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.RevisionCompacted, grpc.StatusCode.OUT_OF_RANGE),
]


def _as_scheduler_error(err: BaseException) -> errors.SchedulerError | None:
    if isinstance(err, errors.SchedulerError):
        return err
    if isinstance(err, SpecError | InvalidKey):  # InvalidKey: a name no record can have ("a/b")
        return errors.InvalidArgument(str(err))
    if isinstance(err, StoreUnavailable):
        if err.outcome_unknown or err.applied:  # etcd went away mid-commit: the change may have landed
            return errors.Unavailable(f"etcd cannot be reached ({err}); the change may or may not have been "
                                      "applied: read it again before you retry")
        return errors.Unavailable(f"etcd cannot be reached ({err}); nothing was written: retry shortly")
    if isinstance(err, Conflict):
        return errors.Aborted(f"it changed concurrently too many times; retry ({err})")
    if isinstance(err, StoreError):
        return errors.Unavailable(str(err))
    return None


async def _abort(context: Any, err: BaseException) -> None:
    mapped = _as_scheduler_error(err)
    if mapped is None:  # a bug: logged with its traceback, and still answered with the metadata
        log.exception("internal error", exc_info=err)
        context.set_trailing_metadata((("shoal-error", "Internal"),))
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {err}")
        return
    code = next((c for kind, c in _STATUS if isinstance(mapped, kind)), grpc.StatusCode.UNKNOWN)
    context.set_trailing_metadata((("shoal-error", type(mapped).__name__),))
    await context.abort(code, str(mapped))


def _unary(allowed: frozenset[str]) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: Any) -> T:
            try:
                auth.authorize(context, allowed)
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort(context, err)
                raise AssertionError("unreachable") from err
        return wrapper
    return wrap


api_call = _unary(auth.API_CALLERS)


def _streaming(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
        try:
            auth.authorize(context, auth.API_CALLERS)
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await _abort(context, err)
    return wrapper


def _check_changeable(service: Service, expected_generation: int) -> None:
    """A change asked at ``expected_generation`` (0: any) of a service that is not being deleted."""
    if expected_generation and service.generation != expected_generation:
        raise errors.Aborted(f"service {service.name} is at generation {service.generation}, not "
                             f"{expected_generation}: it changed since you read it")
    if service.deleting:
        raise errors.FailedPrecondition(f"service {service.name} is being deleted")


class SchedulerService(pb_grpc.SchedulerServicer):
    """The API. Reads come from ``reads`` (``scheduler.follower``): the instance's follower, consistent
    with etcd at the start of the call, or a snapshot per read when there is none. A state read there is
    used before the handler next awaits (it is the follower's live state, not a copy)."""

    def __init__(self, store: base.Store, *, profile: Profile, reads: ClusterReads | None = None) -> None:
        self.store = store
        self.schema = store.schema
        self.profile = profile
        self.reads: ClusterReads = reads if reads is not None else SnapshotReads(store)
        self.specs = api.SpecCache()

    async def _read(self, context: Any) -> ClusterState:
        """The cluster, at least as new as etcd when the call began; waiting for the follower takes at most
        half of what is left of the call's deadline (the rest is for the snapshot it would fall back to)."""
        remaining = context.time_remaining() if context is not None else None
        return await self.reads.read(timeout=remaining / 2 if remaining is not None else None)

    # -- services -----------------------------------------------------------------------------------

    @api_call
    async def ApplyService(self, request: pb.ApplyServiceRequest, context: Any) -> pb.ApplyServiceResponse:
        if request.yaml and request.HasField("spec"):
            raise errors.InvalidArgument("give either YAML or a structured spec, not both")
        groups: list[HostGroupSpec] = []
        if request.yaml:
            parsed = parse_file(request.yaml, source=request.source or "<input>")
            specs, groups = list(parsed.services), list(parsed.hostgroups)
        elif request.HasField("spec"):
            specs = [spec_from_api(json_format.MessageToDict(request.spec, preserving_proto_field_name=True))]
        else:
            raise errors.InvalidArgument("nothing to apply: give the service file's YAML or a spec")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            twice = sorted(n for n in set(names) if names.count(n) > 1)
            raise errors.InvalidArgument(f"a service is declared twice: {', '.join(twice)}")
        planned, planned_groups = await self._apply(specs, groups)
        state = await self.reads.current()  # the records are those written; only counts come from it
        results = [pb.ApplyResult(service=self._service_pb(state, plan.service), action=plan.action,
                                  replicas_kept=plan.replicas_kept, kind="service")
                   for plan in planned]
        results += [pb.ApplyResult(kind="hostgroup", action=action,
                                   hostgroup=self._hostgroup_pb(state, group))
                    for group, action in planned_groups]
        return pb.ApplyServiceResponse(results=results)

    async def _apply(self, specs: list[ServiceSpec], groups: list[HostGroupSpec]
                     ) -> tuple[list[_Applied], list[tuple[HostGroup, str]]]:
        """Every document of one apply in one commit: all of them land, or none (a refusal, or etcd going
        away, part way through a file must not leave half of it applied). One transaction holds 127
        records; a larger file is split by the store, in order. Host groups are compare-and-swap like
        services: an unchanged one writes nothing, a changed one bumps its generation."""
        for attempt in range(CAS_ATTEMPTS):
            now = time.time()
            # The current services from the instance's follower first, as a registration reads its host:
            # a write planned from a record read out of date fails its compare-and-swap, and the retry
            # reads etcd. A file of N services was N linearizable reads of etcd, each a raft round on a
            # machine where etcd is the slowest part while the leader places.
            held = self.reads.held() if attempt == 0 else None
            planned = list(await asyncio.gather(*(self._plan_apply(spec, now=now, held=held)
                                                  for spec in specs)))
            current_groups = await asyncio.gather(*(self.store.get(self.schema.hostgroup(g.name))
                                                    for g in groups))
            planned_groups = [api_hostgroups.planned_apply(current, g, now=now)
                              for current, g in zip(current_groups, groups, strict=True)]
            changed: list[Service | HostGroup] = [p.service for p in planned if p.action != "unchanged"]
            changed += [group for group, action in planned_groups if action != "unchanged"]
            if not changed:
                return planned, planned_groups
            try:
                committed = await self.store.commit([base.Put(record) for record in changed])
            except Conflict:
                continue
            written = {r.name: r for r in committed.written if isinstance(r, Service)}
            written_groups = {r.spec.name: r for r in committed.written if isinstance(r, HostGroup)}
            return ([dataclasses.replace(plan, service=written.get(plan.service.name, plan.service))
                     for plan in planned],
                    [(written_groups.get(g.spec.name, g), action) for g, action in planned_groups])
        names = ", ".join([*(spec.name for spec in specs), *(f"hostgroup/{g.name}" for g in groups)])
        raise errors.Aborted(f"{names} kept changing while being applied; retry")

    async def _plan_apply(self, spec: ServiceSpec, *, now: float, held: ClusterState | None) -> _Applied:
        if held is not None:
            # Only a write checks what it was planned from: "unchanged" (nothing written) and a refusal
            # are taken from etcd itself.
            with contextlib.suppress(errors.FailedPrecondition):
                plan = self._planned(held.services.get(ServiceName(spec.name)), spec, now=now)
                if plan.action != "unchanged":
                    return plan
        return self._planned(await self.store.get(self.schema.service(spec.name)), spec, now=now)

    def _planned(self, current: Service | None, spec: ServiceSpec, *, now: float) -> _Applied:
        if current is None:
            return _Applied(Service(spec=spec, created_at=now, updated_at=now), "created")
        if current.deleting:
            raise errors.FailedPrecondition(f"service {spec.name} is being deleted; apply it again once it "
                                            "is gone (shoal get services)")
        kept = api.replicas_to_keep(current.spec, spec)
        replicas_kept = kept != spec.replicas
        spec = dataclasses.replace(spec, replicas=kept)
        if current.spec == spec:
            return _Applied(current, "unchanged", replicas_kept=replicas_kept)
        return _Applied(self._changed(current, spec, now=now), "updated", replicas_kept=replicas_kept)

    @staticmethod
    def _changed(current: Service, spec: ServiceSpec, *, now: float) -> Service:
        generation = current.generation + 1
        template_changed = ((current.spec.template_json, current.spec.facts)
                            != (spec.template_json, spec.facts))
        history = current.history
        template_generation = current.template_generation
        if template_changed:
            previous = TemplateRevision(template_generation=current.template_generation,
                                        template_json=current.spec.template_json, facts=current.spec.facts)
            history = (*history, previous)[-HISTORY_KEEP:]
            template_generation = generation
        return dataclasses.replace(current, spec=spec, generation=generation,
                                   template_generation=template_generation, history=history, updated_at=now)

    async def _get_service(self, name: str) -> Service:
        if not name:
            raise errors.InvalidArgument("a service name is required")
        service = await self.store.get(self.schema.service(name))
        if service is None:
            raise errors.NotFound(f"no such service: {name} (shoal get services lists them)")
        return service

    def _service_in(self, state: ClusterState, name: str) -> Service:
        if not name:
            raise errors.InvalidArgument("a service name is required")
        self.schema.service(name)  # InvalidKey for a name no service can have ("a/b")
        service = state.services.get(ServiceName(name))
        if service is None:
            raise errors.NotFound(f"no such service: {name} (shoal get services lists them)")
        return service

    def _service_pb(self, state: ClusterState, service: Service) -> pb.Service:
        """``service`` (as read, or as just written) with its replicas counted in ``state``."""
        return api.counted_service_to_pb(service, state.counts(service), specs=self.specs)

    async def _service_now(self, service: Service) -> pb.Service:
        """A service just written, with its replicas as the API knows them now: the record is the one
        written, so nothing in the answer needs a read as new as the write (at 5,000 hosts, waiting for
        one made each apply queue behind the leader's passes: docs/scaling.md, part 6)."""
        return self._service_pb(await self.reads.current(), service)

    @api_call
    async def GetService(self, request: pb.GetServiceRequest, context: Any) -> pb.Service:
        state = await self._read(context)
        return self._service_pb(state, self._service_in(state, request.name))

    @api_call
    async def ListServices(self, request: pb.ListServicesRequest, context: Any) -> pb.ListServicesResponse:
        state = await self._read(context)
        services = [self._service_pb(state, s) for _, s in sorted(state.services.items())]
        self.specs.keep(state.services)
        return pb.ListServicesResponse(services=services, revision=state.revision)

    @api_call
    async def DeleteService(self, request: pb.DeleteServiceRequest, context: Any) -> pb.DeleteServiceResponse:
        async def change(service: Service) -> Service:
            return dataclasses.replace(service, deleting=True, updated_at=time.time())
        service = await self._update_service(request.name, change, skip=lambda s: s.deleting)
        return pb.DeleteServiceResponse(service=await self._service_now(service))

    @api_call
    async def ScaleService(self, request: pb.ScaleServiceRequest, context: Any) -> pb.Service:
        if request.replicas < 0:
            raise errors.InvalidArgument(f"replicas must not be negative, got {request.replicas}")

        async def change(service: Service) -> Service:
            _check_changeable(service, request.expected_generation)
            return service.scaled(request.replicas, now=time.time())

        service = await self._update_service(
            request.name, change, skip=lambda s: s.spec.replicas == request.replicas and not (
                request.expected_generation and s.generation != request.expected_generation),
            conflict_is_final=bool(request.expected_generation))
        return await self._service_now(service)

    @api_call
    async def AutoscaleService(self, request: pb.AutoscaleServiceRequest, context: Any) -> pb.Service:
        which = request.WhichOneof("policy")
        if which is None or (which == "off" and not request.off):
            raise errors.InvalidArgument("give the autoscale policy, or off to remove it")
        policy = request.autoscale if which == "autoscale" else None

        async def change(service: Service) -> Service:
            _check_changeable(service, request.expected_generation)
            spec = api.spec_with_autoscale(service.spec, policy)
            if spec == service.spec:
                return service
            return dataclasses.replace(service, spec=spec, generation=service.generation + 1,
                                       updated_at=time.time())

        service = await self._update_service(request.name, change, skip=lambda s: False,
                                             conflict_is_final=bool(request.expected_generation))
        return await self._service_now(service)

    async def _update_service(self, name: str, change: Callable[[Service], Awaitable[Service]], *,
                              skip: Callable[[Service], bool], conflict_is_final: bool = False) -> Service:
        """``change`` applied to the service, committed with compare-and-swap (re-read and redone on a
        conflict); ``change`` returning the service itself means there is nothing to write."""
        for _ in range(CAS_ATTEMPTS):
            current = await self._get_service(name)
            if skip(current):
                return current
            updated = await change(current)
            if updated is current:
                return current
            try:
                return _written(await self.store.commit([base.Put(updated)]), updated)
            except Conflict:
                if conflict_is_final:
                    raise errors.Aborted(f"service {name} changed since you read it; read it again") from None
        raise errors.Aborted(f"service {name} kept changing; retry")

    @api_call
    async def RolloutStatus(self, request: pb.GetServiceRequest, context: Any) -> pb.Rollout:
        state = await self._read(context)
        service = self._service_in(state, request.name)
        return api.rollout_of(service, list(state.replicas_of(service.name).values()))

    @api_call
    async def RolloutUndo(self, request: pb.RolloutUndoRequest, context: Any) -> pb.Service:
        async def change(service: Service) -> Service:
            if service.deleting:
                raise errors.FailedPrecondition(f"service {service.name} is being deleted")
            if not service.history:
                raise errors.FailedPrecondition(f"service {service.name} has no earlier template to go "
                                                "back to")
            previous = service.history[-1]
            spec = dataclasses.replace(service.spec, template_json=previous.template_json,
                                       facts=previous.facts)
            undone = self._changed(service, spec, now=time.time())
            return dataclasses.replace(undone, history=service.history[:-1])

        return await self._service_now(await self._update_service(request.name, change, skip=lambda s: False))

    # -- replicas -----------------------------------------------------------------------------------

    @api_call
    async def ListReplicas(self, request: pb.ListReplicasRequest, context: Any) -> pb.ListReplicasResponse:
        state = await self._read(context)
        host = _resolve_host(state.hosts, request.host) if request.host else None
        phases = {api.PHASE_OF_PB[s] for s in request.states if s in api.PHASE_OF_PB}
        # Only what the filters name is looked at: one service's replicas, or one host's.
        candidates: Mapping[ReplicaId, Replica] = state.replicas
        if request.service:
            candidates = state.replicas_of(request.service)
        elif host is not None:
            candidates = state.replicas_on(host)
        out = [api.replica_to_pb(r, state.hosts) for _, r in sorted(candidates.items())
               if (not request.service or r.service == request.service) and (host is None or r.host == host)
               and (not phases or r.phase in phases)]
        return pb.ListReplicasResponse(replicas=out, revision=state.revision)

    async def _get_replica(self, ref: str, context: Any) -> tuple[Replica, ClusterState]:
        if not ref:
            raise errors.InvalidArgument("a replica id is required")
        state = await self._read(context)
        if ref in state.replicas:
            return state.replicas[ReplicaId(ref)], state
        matches = [r for rid, r in state.replicas.items() if rid.startswith(ref)]
        if len(matches) == 1:
            return matches[0], state
        if matches:
            raise errors.InvalidArgument(f"replica id prefix {ref!r} is ambiguous: give more characters")
        raise errors.NotFound(f"no such replica: {ref} (shoal get replicas lists them)")

    @api_call
    async def GetReplica(self, request: pb.GetReplicaRequest, context: Any) -> pb.Replica:
        replica, state = await self._get_replica(request.id, context)
        return api.replica_to_pb(replica, state.hosts)

    @api_call
    async def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.Explanation:
        replica, state = await self._get_replica(request.replica, context)
        snap = state.view()
        out = pb.Explanation(replica=api.replica_to_pb(replica, snap.hosts),
                             decisions=[api.decision_to_pb(d) for d in replica.decisions])
        service = snap.services.get(replica.service)
        if service is None:
            out.summary = "its service no longer exists"
            return out
        others = [r for r in snap.replicas.values() if r.id != replica.id]
        view = build_view(hosts=snap.hosts.values(), statuses=snap.host_statuses, replicas=others,
                          services=snap.services.values())
        explained = batch.explain(request_for(replica, service), view, self.profile)
        for verdict in explained.verdicts:
            out.hosts.append(pb.HostVerdict(host=verdict.host, host_name=verdict.host_name,
                                            feasible=verdict.feasible, reasons=list(verdict.reasons),
                                            score=verdict.score, scores=dict(verdict.scores)))
        if replica.host is not None:
            name = snap.hosts[replica.host].name if replica.host in snap.hosts else replica.host
            placed = next((d.reason for d in reversed(replica.decisions) if d.action == "placed"), "")
            out.summary = (f"on {name}" + (f" ({placed})" if placed else "")
                           + f"; now: {explained.outcome.why}")
        else:
            out.summary = replica.reason or explained.outcome.why
        return out

    # -- hosts --------------------------------------------------------------------------------------

    @staticmethod
    def _host_pb(state: ClusterState, host: HostId) -> pb.Host:
        here = len(state.replicas_on(host))
        return api.host_to_pb(state.hosts[host], state.statuses.get(host), here)

    @api_call
    async def ListHosts(self, request: pb.ListHostsRequest, context: Any) -> pb.ListHostsResponse:
        state = await self._read(context)
        return pb.ListHostsResponse(hosts=[self._host_pb(state, h) for h in sorted(state.hosts)],
                                    revision=state.revision)

    @api_call
    async def GetHost(self, request: pb.GetHostRequest, context: Any) -> pb.Host:
        state = await self._read(context)
        return self._host_pb(state, _resolve_host(state.hosts, request.host))

    async def _set_admin(self, ref: str, admin: HostAdmin, context: Any) -> pb.Host:
        for _ in range(CAS_ATTEMPTS):
            state = await self._read(context)
            host = _resolve_host(state.hosts, ref)
            record = state.hosts[host]
            if record.admin is not admin:
                try:
                    await self.store.commit([base.Put(dataclasses.replace(record, admin=admin))])
                except Conflict:
                    continue
                state = await self._read(context)
            return self._host_pb(state, host)
        raise errors.Aborted(f"host {ref} kept changing; retry")

    @api_call
    async def CordonHost(self, request: pb.HostRequest, context: Any) -> pb.Host:
        return await self._set_admin(request.host, HostAdmin.CORDONED, context)

    @api_call
    async def UncordonHost(self, request: pb.HostRequest, context: Any) -> pb.Host:
        return await self._set_admin(request.host, HostAdmin.ACTIVE, context)

    @api_call
    async def DrainHost(self, request: pb.HostRequest, context: Any) -> pb.Host:
        return await self._set_admin(request.host, HostAdmin.DRAINING, context)

    @api_call
    async def DeleteHost(self, request: pb.HostRequest, context: Any) -> pb.Host:
        """Forgets a host that is gone (see ``api.delete_host_refusal``): its record, its status and the
        records of replicas replaced elsewhere, in one transaction that compares every revision."""
        for _ in range(CAS_ATTEMPTS):
            state = await self._read(context)
            host = _resolve_host(state.hosts, request.host)
            record, status = state.hosts[host], state.statuses.get(host)
            here = list(state.replicas_on(host).values())
            refusal = api.delete_host_refusal(record, status, here)
            if refusal is not None:
                raise errors.FailedPrecondition(refusal)
            shown = self._host_pb(state, host)
            ops: list[base.Op] = [base.Delete(record), *(base.Delete(r) for r in here)]
            if status is not None and status.revision > 0:
                ops.append(base.Delete(status))
            try:
                await self.store.commit(ops)
            except Conflict:
                continue
            return shown
        raise errors.Aborted(f"host {request.host} kept changing; retry")

    # -- endpoints and watching ---------------------------------------------------------------------

    @api_call
    async def ListEndpoints(self, request: pb.ListEndpointsRequest, context: Any) -> pb.ListEndpointsResponse:
        state = await self._read(context)
        if request.service and request.service not in state.services:
            raise errors.NotFound(f"no such service: {request.service}")
        replicas = state.replicas_of(request.service) if request.service else state.replicas
        return pb.ListEndpointsResponse(endpoints=_endpoints(replicas.values(), state.hosts),
                                        revision=state.revision)

    @api_call
    async def ListSchedulers(self, request: pb.ListSchedulersRequest, context: Any
                             ) -> pb.ListSchedulersResponse:
        listing = await instances.list_instances(self.store)
        reply = pb.ListSchedulersResponse(schedulers=[_instance_pb(v) for v in listing.instances],
                                          revision=listing.revision)
        if listing.leader is not None:
            reply.leader, reply.leader_epoch = listing.leader.instance, listing.leader.epoch
            reply.leader_since.CopyFrom(api.ts(listing.leader.acquired_at))
        return reply

    @api_call
    async def GetAutoscaleStatus(self, request: pb.GetServiceRequest, context: Any) -> pb.AutoscaleStatus:
        state = await self._read(context)
        if request.name not in state.services:
            raise errors.NotFound(f"service {request.name!r} not found")
        status = state.autoscale.get(ServiceName(request.name))
        reply = pb.AutoscaleStatus(service=request.name)
        if status is not None:
            reply.revision = status.revision
            reply.decisions.extend(pb.AutoscaleDecision(
                time=api.ts(d.time), current_replicas=d.current_replicas, desired_replicas=d.desired_replicas,
                reason=d.reason, error=d.error, input_json=d.input_json) for d in status.decisions)
        return reply

    @api_call
    async def ReplayAutoscale(self, request: pb.ReplayAutoscaleRequest, context: Any
                              ) -> pb.ReplayAutoscaleResponse:
        return pb.ReplayAutoscaleResponse(output_json=replay.replay(request.input_json))

    # -- host groups --------------------------------------------------------------------------------

    @staticmethod
    def _hostgroup_pb(state: ClusterState, group: HostGroup) -> pb.HostGroup:
        return api_hostgroups.hostgroup_to_pb(
            group, state.hostgroup_statuses.get(group.spec.name), hosts=state.hosts,
            host_statuses=state.statuses, replicas=state.replicas.values(),
            services=state.services.values())

    @staticmethod
    def _group_of(state: ClusterState, name: str) -> HostGroup:
        if not name:
            raise errors.InvalidArgument("a host group name is required")
        group = state.hostgroups.get(GroupName(name))
        if group is None:
            raise errors.NotFound(f"no such host group: {name} (shoal get hostgroups lists them)")
        return group

    @api_call
    async def ListHostGroups(self, request: pb.ListHostGroupsRequest, context: Any
                             ) -> pb.ListHostGroupsResponse:
        state = await self._read(context)
        return pb.ListHostGroupsResponse(
            hostgroups=[self._hostgroup_pb(state, g) for _, g in sorted(state.hostgroups.items())],
            revision=state.revision)

    @api_call
    async def GetHostGroup(self, request: pb.GetHostGroupRequest, context: Any) -> pb.HostGroup:
        state = await self._read(context)
        return self._hostgroup_pb(state, self._group_of(state, request.name))

    @api_call
    async def DeleteHostGroup(self, request: pb.DeleteHostGroupRequest, context: Any
                              ) -> pb.DeleteHostGroupResponse:
        """Deletes the declaration only (compare-and-swap on its revision). The status record is the
        leader's and stays: a group declared again continues its request numbers, so a provider never
        sees a request id twice for two different requests."""
        for _ in range(CAS_ATTEMPTS):
            state = await self._read(context)
            group = self._group_of(state, request.name)
            spec = group.spec
            refusal = api_hostgroups.delete_refusal(state.hostgroup_statuses.get(spec.name),
                                                    has_provider=bool(spec.webhook or spec.command))
            if refusal is not None and not request.force:
                raise errors.FailedPrecondition(
                    f"host group {group.spec.name} has work in flight: {refusal}. Wait for it (shoal "
                    f"describe hostgroup {group.spec.name}), or delete it with --force: its hosts stay, and "
                    "hosts it was draining stay draining until you uncordon them")
            shown = self._hostgroup_pb(state, group)  # built before the commit's await moves the state on
            try:
                await self.store.commit([base.Delete(group)])
            except Conflict:
                continue
            return pb.DeleteHostGroupResponse(hostgroup=shown)
        raise errors.Aborted(f"host group {request.name} kept changing; retry")

    @_streaming
    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.WatchEvent]:
        kinds = set(request.kinds) or set(WATCH_KINDS)
        unknown = kinds - set(WATCH_KINDS)
        if unknown:
            raise errors.InvalidArgument(f"unknown watch kinds {sorted(unknown)}: use service, replica, "
                                         "host, endpoint")
        state = await self._read(context)
        stream = _WatchStream(state.view(), kinds=kinds, service=request.service)
        after = request.after_revision or stream.view.revision
        # The follower's changes, decoded once for every stream, while it can give them; the store's own
        # watch from the last revision received when it cannot (resumed from the past, cut off).
        feed = self.reads.subscribe(after)
        if feed is not None:
            try:
                while (change := await feed.get()) is not None:
                    after = change.revision
                    for event in stream.events(change):
                        yield event
            finally:
                feed.end()
        try:
            async for change in self.store.watch(after):
                for event in stream.events(change):
                    yield event
        except Compacted:
            raise errors.RevisionCompacted(f"revision {after} was compacted: list again, then watch from "
                                           "the listing's revision") from None


WATCH_KINDS = ("service", "replica", "host", "endpoint")


@dataclasses.dataclass(frozen=True)
class _Applied:
    """One document of an apply: the service to write (or as it is), what happened, and whether the
    autoscaler's count was kept instead of the document's."""

    service: Service
    action: str  # created | updated | unchanged
    replicas_kept: bool = False


class _WatchView:
    """The state as one watch stream knows it: a snapshot read when the stream starts, kept current by
    the stream's own changes, so events are converted without reading etcd again — one read per stream,
    where a read per event made a watcher of N replica changes read N snapshots (quadratic in the
    cluster's size, on the event loop every API call shares), and gave an event the state of whenever
    it was converted rather than of its revision. Changes at or before the snapshot's revision (a watch
    resumed from the past) are already in it: those events carry the state as of the snapshot."""

    def __init__(self, snap: base.Snapshot) -> None:
        self.revision = snap.revision
        self.services: dict[ServiceName, Service] = dict(snap.services)
        self.hosts: dict[HostId, HostRecord] = dict(snap.hosts)
        self.statuses: dict[HostId, HostStatus] = dict(snap.host_statuses)
        self.replicas: dict[str, dict[str, Replica]] = {}  # by service, then id
        for replica in snap.replicas.values():
            self.replicas.setdefault(replica.service, {})[replica.id] = replica

    def replicas_of(self, service: str) -> list[Replica]:
        return list(self.replicas.get(service, {}).values())

    def all_replicas(self) -> list[Replica]:
        return [r for of_service in self.replicas.values() for r in of_service.values()]

    def apply(self, change: base.Change) -> None:
        if change.revision <= self.revision or not change.ids:
            return
        value, key = change.value, change.ids[-1]
        # A put whose bytes do not decode is left out, as a snapshot leaves it out.
        if change.record_type is Service:
            _set(self.services, ServiceName(key), value if isinstance(value, Service) else None)
        elif change.record_type is Replica:
            of_service = self.replicas.setdefault(change.ids[0], {})
            _set(of_service, key, value if isinstance(value, Replica) else None)
            if not of_service:
                del self.replicas[change.ids[0]]
        elif change.record_type is HostRecord:
            _set(self.hosts, HostId(key), value if isinstance(value, HostRecord) else None)
        elif change.record_type is HostStatus:
            _set(self.statuses, HostId(key), value if isinstance(value, HostStatus) else None)


def _set(mapping: dict[Any, T], key: Any, value: T | None) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


class _WatchStream:
    """One Watch call: its filters, its view, and the endpoint sets it last sent (an endpoints event goes
    out when a service's set changes)."""

    def __init__(self, snap: base.Snapshot, *, kinds: set[str], service: str) -> None:
        self.view = _WatchView(snap)
        self.kinds = kinds
        self.only = service
        self.sent_endpoints: dict[str, list[pb.Endpoint]] = {}

    def events(self, change: base.Change) -> list[pb.WatchEvent]:
        previous = self._replica_before(change)
        self.view.apply(change)
        kind, name, revision = change.kind.value, change.ids[-1] if change.ids else "", change.revision
        value = change.value
        out: list[pb.WatchEvent] = []
        if change.record_type is Service:
            if "service" in self.kinds and (not self.only or name == self.only):
                event = pb.WatchEvent(revision=revision, type=kind, name=name)
                if isinstance(value, Service):
                    event.service.CopyFrom(api.service_to_pb(value, self.view.replicas_of(name)))
                out.append(event)
        elif change.record_type is Replica:
            service = change.ids[0] if change.ids else ""
            if self.only and service != self.only:
                return out
            if "replica" in self.kinds:
                event = pb.WatchEvent(revision=revision, type=kind, name=name)
                if isinstance(value, Replica):
                    event.replica.CopyFrom(api.replica_to_pb(value, self.view.hosts))
                out.append(event)
            current = value if isinstance(value, Replica) else None
            if "endpoint" in self.kinds and (service not in self.sent_endpoints
                                             or self._endpoints_of(previous) != self._endpoints_of(current)):
                out.extend(self._endpoints_event(service, revision))
        elif change.record_type in (HostRecord, HostStatus) and "host" in self.kinds and not self.only:
            event = pb.WatchEvent(revision=revision, type=kind, name=name)
            host = HostId(name)
            if host in self.view.hosts:
                here = api.replicas_on(host, self.view.all_replicas())
                event.host.CopyFrom(api.host_to_pb(self.view.hosts[host], self.view.statuses.get(host), here))
                event.type = "put"
            elif change.record_type is HostStatus:
                return out
            out.append(event)
        return out

    def _replica_before(self, change: base.Change) -> Replica | None:
        if change.record_type is not Replica or len(change.ids) != 2:
            return None
        return self.view.replicas.get(change.ids[0], {}).get(change.ids[1])

    def _endpoints_of(self, replica: Replica | None) -> list[pb.Endpoint]:
        return api.endpoints_of(replica, self.view.hosts) if replica is not None else []

    def _endpoints_event(self, service: str, revision: int) -> list[pb.WatchEvent]:
        endpoints = _endpoints(self.view.replicas_of(service), self.view.hosts)
        if endpoints == self.sent_endpoints.get(service):
            return []
        self.sent_endpoints[service] = endpoints
        return [pb.WatchEvent(revision=revision, type="put", name=service,
                              endpoints=pb.ListEndpointsResponse(endpoints=endpoints, revision=revision))]


def _endpoints(replicas: Iterable[Replica], hosts: Mapping[HostId, HostRecord]) -> list[pb.Endpoint]:
    """The endpoints of ``replicas``, in replica id order."""
    return [e for r in sorted(replicas, key=lambda r: r.id) for e in api.endpoints_of(r, hosts)]


def _instance_pb(view: instances.InstanceView) -> pb.SchedulerInstance:
    record = view.record
    return pb.SchedulerInstance(id=record.instance, addresses=list(record.addresses),
                                http_address=record.http_address, started_at=api.ts(record.started_at),
                                version=record.version, leader=view.leader)


def _resolve_host(hosts: dict[HostId, HostRecord] | Any, ref: str) -> HostId:
    if not ref:
        raise errors.InvalidArgument("a host id or name is required")
    if ref in hosts:
        return HostId(ref)
    by_name = [h for h, record in hosts.items() if record.name == ref]
    if len(by_name) == 1:
        return HostId(by_name[0])
    if len(by_name) > 1:
        raise errors.InvalidArgument(f"several hosts are named {ref!r}: use its id (shoal get hosts -o wide)")
    prefix = [h for h in hosts if h.startswith(ref)]
    if len(prefix) == 1:
        return HostId(prefix[0])
    if len(prefix) > 1:
        raise errors.InvalidArgument(f"host id prefix {ref!r} is ambiguous: give more characters")
    raise errors.NotFound(f"no such host: {ref} (shoal get hosts lists them)")


def _written(committed: base.Committed, fallback: T) -> T:
    for record in committed.written:
        if type(record) is type(fallback):
            return record  # type: ignore[return-value, unused-ignore]
    return fallback


class RegistrationService(pb_grpc.RegistrationServicer):
    """``RegisterHost``, and how often each agent should come back (``refresh_seconds`` in the answer).

    Every registration is two etcd reads (and a write when something a decision reads changed, or once
    a ``REGISTRATION_REWRITE``), and nothing in it is urgent: capacity and conditions reach the leader
    every second on each agent's usage stream, and liveness is that stream's heartbeat. So the refresh
    grows with the fleet this instance answers: ``refresh_seconds`` (5 s by default) up to
    ``REFRESH_TARGET_RATE`` times that many hosts, then hosts / ``REFRESH_TARGET_RATE`` seconds, at most
    ``REFRESH_MAX`` — about 20 registrations a second whatever the size (100 hosts: 5 s, 1,000: 50 s,
    5,000: 60 s, 83 a second, instead of 1,000 a second at 5 s). A ``refresh_seconds`` above
    ``REFRESH_MAX`` is kept as given. The fleet is counted as the hosts that registered here within
    ``REFRESH_MEMORY`` (more than any refresh this answers, so every live host is counted).

    A grown refresh is answered **spread**: uniformly within ``REFRESH_SPREAD`` of itself (60 s becomes
    30-90 s, a minute on average, so the rate stays the same), as Nomad staggers its clients' heartbeat
    TTLs. Hosts that joined together (a fleet booted at once, 5,000 simulated hosts in 10 s) would
    otherwise come back together every minute for good: at 5,000 hosts a wave of 500 registrations a
    second, 1,000 linearizable etcd reads a second, for 10 s of every 60, which kept etcd's applies
    seconds behind and its lease renewals timing out (docs/scaling.md, part 8). Spread, a wave is
    smeared over the whole minute at its first return. The configured floor is answered as it is.

    The two reads come from the instance's follower when it follows etcd (``ClusterReads.held``), not
    from etcd: they were most of etcd's slow applies at 5,000 hosts (single-key linearizable reads, each
    waiting for etcd's applies to catch up). A record read there may be a moment old; the write it
    leads to is a compare-and-swap on its revision, so a stale one fails and the next attempt reads etcd.
    """

    REFRESH_TARGET_RATE = 20.0  # registrations a second this instance aims at, once the floor allows
    REFRESH_MAX = 60.0
    REFRESH_MEMORY = 2 * REFRESH_MAX
    REFRESH_SPREAD = 0.5        # a grown refresh is answered uniformly within this share of itself

    def __init__(self, store: base.Store, *, refresh_seconds: float = REGISTRATION_REFRESH,
                 spread: float = REFRESH_SPREAD, rng: random.Random | None = None,
                 reads: ClusterReads | None = None) -> None:
        if not 0.0 <= spread < 1.0:
            raise ValueError(f"the refresh spread is a share below 1, got {spread}")
        self.store = store
        self.schema = store.schema
        self.refresh_seconds = refresh_seconds
        self.spread = spread
        self._rng = rng or random.Random()
        self._reads = reads
        self._seen: dict[str, float] = {}  # host id -> when it last registered here
        self._pruned_at = 0.0
        # Each host's recorded report by the record's revision, serialized: a registration that changes
        # nothing is answered with the record as stored, and parsing its JSON again was about a sixth of
        # answering one, both ends of the call counted (bench/registration_cost.py; docs/scaling.md,
        # part 24). Kept as bytes (1.5 MiB at 5,000 hosts, decoded in a microsecond): kept parsed, the
        # reports took 15 MiB.
        self._reports: dict[str, tuple[int, bytes]] = {}

    def refresh_for(self, host_id: str, now: float) -> float:
        """Count ``host_id`` as registering at ``now``; the refresh to answer it with."""
        self._seen[host_id] = now
        if now - self._pruned_at >= self.REFRESH_MAX:  # forget hosts gone quiet (a full scan a minute)
            self._pruned_at = now
            self._seen = {h: at for h, at in self._seen.items() if now - at < self.REFRESH_MEMORY}
            self._reports = {h: r for h, r in self._reports.items() if h in self._seen}
        grown = min(self.REFRESH_MAX, len(self._seen) / self.REFRESH_TARGET_RATE)
        if grown <= self.refresh_seconds:
            return self.refresh_seconds
        return max(self.refresh_seconds, grown * (1.0 + self.spread * (2.0 * self._rng.random() - 1.0)))

    @_unary(auth.REGISTRATION_CALLERS)
    async def RegisterHost(self, request: pb.RegisterHostRequest, context: Any) -> pb.RegisterHostResponse:
        info = request.info
        if not _HOST_ID.match(info.host_id):
            raise errors.InvalidArgument(f"invalid host id {info.host_id!r}: 32 hex digits")
        if not _ADDRESS.match(request.address):
            raise errors.InvalidArgument(f"invalid address {request.address!r}: HOST:PORT")
        host_id = HostId(info.host_id)
        for attempt in range(CAS_ATTEMPTS):
            held = self._held() if attempt == 0 else None  # after a conflict, etcd itself
            current = (held.hosts.get(host_id) if held is not None
                       else await self.store.get(self.schema.host(host_id)))
            now = time.time()
            record = HostRecord(
                id=host_id, name=info.hostname, address=request.address,
                labels=tuple(sorted(info.labels.items())),
                capacity=Capacity(cpu_allocatable_millis=info.cpu_allocatable_millis,
                                  memory_allocatable_bytes=info.memory_allocatable_bytes,
                                  cpu_committed_millis=info.cpu_committed_millis,
                                  memory_committed_bytes=info.memory_committed_bytes,
                                  disk_free_bytes=info.disk_free_bytes),
                metrics_address=request.metrics_address, boot_id=info.boot_id,
                agent_version=info.agent_version,
                conditions=tuple(sorted(c.type for c in info.conditions)),
                admin=current.admin if current is not None else HostAdmin.ACTIVE,
                registered_at=current.registered_at if current is not None else now, last_registered_at=now,
                revision=current.revision if current is not None else 0)  # info_json: when written
            if current is not None and _same_registration(current, record) and \
                    now - current.last_registered_at < REGISTRATION_REWRITE:
                written, reported = current, self._recorded(current)
            else:
                record = dataclasses.replace(record, info_json=json_format.MessageToJson(
                    info, preserving_proto_field_name=True, indent=None))
                try:
                    # Pipelined (two in flight), not one after the other: nothing in a registration is
                    # urgent, and at 5,000 hosts ~40 a second went ahead of the leader's passes, each
                    # holding their next transaction back until it landed (docs/scaling.md, part 19).
                    written = _written(await self.store.commit([base.Put(record)], in_flight=2), record)
                except Conflict:
                    continue
                reported = info  # what its info_json was written from
                self._reports[host_id] = (written.revision, info.SerializeToString())
            held = self._held()
            status = (held.statuses.get(host_id) if held is not None
                      else await self.store.get(self.schema.host_status(host_id)))
            return pb.RegisterHostResponse(host=api.host_to_pb(written, status, 0, info=reported),
                                           refresh_seconds=self.refresh_for(info.host_id, now))
        raise errors.Aborted("the host record kept changing; registering again shortly")

    def _held(self) -> ClusterState | None:
        return self._reads.held() if self._reads is not None else None

    def _recorded(self, record: HostRecord) -> apb.HostInfo:
        """The report ``record.info_json`` was written from: its JSON parsed once per revision of the
        record."""
        kept = self._reports.get(record.id)
        if kept is not None and kept[0] == record.revision:
            return apb.HostInfo.FromString(kept[1])
        info = apb.HostInfo()
        if record.info_json:
            json_format.Parse(record.info_json, info, ignore_unknown_fields=True)
        self._reports[record.id] = (record.revision, info.SerializeToString())
        return info


def _same_registration(a: HostRecord, b: HostRecord) -> bool:
    """Whether two registrations differ only in what no decision reads (use, time, the raw report)."""
    def key(r: HostRecord) -> HostRecord:
        capacity = dataclasses.replace(r.capacity, cpu_committed_millis=0, memory_committed_bytes=0,
                                       disk_free_bytes=0)
        return dataclasses.replace(r, capacity=capacity, last_registered_at=0.0, info_json="", revision=0)
    return key(a) == key(b)


def add_services(server: grpc.aio.Server, *, store: base.Store, profile: Profile,
                 refresh_seconds: float = REGISTRATION_REFRESH,
                 spread: float = RegistrationService.REFRESH_SPREAD,
                 reads: ClusterReads | None = None) -> None:
    """``reads``: the instance's follower (``SchedulerMetrics.follower``); None: a snapshot per read."""
    pb_grpc.add_SchedulerServicer_to_server(SchedulerService(store, profile=profile, reads=reads), server)
    pb_grpc.add_RegistrationServicer_to_server(
        RegistrationService(store, refresh_seconds=refresh_seconds, spread=spread, reads=reads), server)


__all__ = ["RegistrationService", "SchedulerService", "add_services"]
