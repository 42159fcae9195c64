"""Host groups at the API edge: domain values → protobuf, what an apply of a group writes, and when a
delete is refused.

A group's answer joins three things read in one snapshot: the declaration (``hostgroups/{group}``), the
leader's status record (``hostgroup-status/{group}``, absent until the leader's elastic loop first writes
it) and the member hosts — every host whose labels say ``group=NAME``, with its state as ``get hosts``
derives it and its requests against its allocatable as placement counts them
(``scheduler.placement.view``), so the utilization shown is the one scale-in judges. The spec also goes
out as its service file document (``spec_yaml``), rendered here, so the CLI prints what ``apply`` takes
back without a copy of the renderer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import spec_hostgroup
from scheduler.api import host_state, replicas_on, ts
from scheduler.model import (
    LABEL_GROUP,
    DeliveryState,
    GroupName,
    HostGroup,
    HostGroupSpec,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostShape,
    HostStatus,
    ProviderRequest,
    Replica,
    Service,
)
from scheduler.placement.view import build_view


def planned_apply(current: HostGroup | None, spec: HostGroupSpec, *, now: float) -> tuple[HostGroup, str]:
    """The record an apply of ``spec`` writes over ``current`` and what it is: "created", "configured"
    (the generation bumps) or "unchanged" (``current`` itself: nothing to write)."""
    if current is None:
        return HostGroup(spec=spec, created_at=now, updated_at=now), "created"
    if current.spec == spec:
        return current, "unchanged"
    return dataclasses.replace(current, spec=spec, generation=current.generation + 1, updated_at=now), \
        "configured"


def delete_refusal(status: HostGroupStatus | None, *, has_provider: bool = True) -> str | None:
    """Why deleting the group now would abandon work in flight (None: nothing would be): a request the
    provider has not accepted (hosts asked for and never bought, or drained hosts never removed), or a
    drain the group started (its host would stay draining). A group without a provider (a dry run) has
    no delivery to abandon."""
    if status is None:
        return None
    reasons = []
    pending = [r for r in status.requests if r.state is DeliveryState.PENDING] if has_provider else []
    if pending:
        last = next((r.last_error for r in reversed(pending) if r.last_error), "")
        reasons.append(f"{len(pending)} request(s) not yet accepted by the provider "
                       f"({', '.join(r.id for r in pending)})" + (f", last error: {last}" if last else ""))
    if status.draining:
        reasons.append(f"{len(status.draining)} host(s) being drained for scale-in "
                       f"({', '.join(h for h, _ in status.draining)}), which would stay draining")
    if not reasons:
        return None
    return "; ".join(reasons)


def is_member(record: HostRecord, group: str) -> bool:
    return dict(record.labels).get(LABEL_GROUP) == group


def shape_to_pb(shape: HostShape) -> pb.HostShape:
    return pb.HostShape(cpu_millis=shape.cpu_millis, memory_bytes=shape.memory_bytes,
                        labels=dict(shape.labels))


def spec_to_pb(spec: HostGroupSpec) -> pb.HostGroupSpec:
    out = pb.HostGroupSpec(
        name=spec.name, min_hosts=spec.min_hosts, max_hosts=spec.max_hosts,
        pending_for_seconds=spec.pending_for_seconds, max_per_request=spec.max_per_request,
        scale_out_cooldown_seconds=spec.scale_out_cooldown_seconds,
        provision_timeout_seconds=spec.provision_timeout_seconds, scale_in=spec.scale_in,
        scale_in_utilization_percent=spec.scale_in_utilization_percent,
        scale_in_after_seconds=spec.scale_in_after_seconds,
        scale_in_delay_after_scale_out_seconds=spec.scale_in_delay_after_scale_out_seconds,
        max_concurrent_drains=spec.max_concurrent_drains)
    if spec.shape is not None:
        out.shape.CopyFrom(shape_to_pb(spec.shape))
    if spec.webhook is not None:
        w = spec.webhook
        out.webhook.CopyFrom(pb.WebhookProvider(url=w.url, token_file=w.token_file, ca_file=w.ca_file,
                                                cert_file=w.cert_file, key_file=w.key_file,
                                                timeout_seconds=w.timeout_seconds))
    if spec.command is not None:
        out.command.CopyFrom(pb.CommandProvider(argv=list(spec.command.argv),
                                                timeout_seconds=spec.command.timeout_seconds))
    return out


def request_to_pb(request: ProviderRequest) -> pb.ProviderRequest:
    out = pb.ProviderRequest(
        id=request.id, kind=request.kind.value, created_at=ts(request.created_at), count=request.count,
        hosts=list(request.hosts), reason=request.reason, state=request.state.value,
        attempts=request.attempts, next_attempt_at=ts(request.next_attempt_at), last_error=request.last_error,
        delivered_at=ts(request.delivered_at))
    if request.shape is not None:
        out.shape.CopyFrom(shape_to_pb(request.shape))
    return out


def _group_hosts(pairs: Iterable[tuple[HostId, float]],
                 hosts: Mapping[HostId, HostRecord]) -> list[pb.GroupHost]:
    return [pb.GroupHost(host=host, host_name=hosts[host].name if host in hosts else "", since=ts(since))
            for host, since in pairs]


def status_to_pb(status: HostGroupStatus, *, members: int,
                 hosts: Mapping[HostId, HostRecord]) -> pb.HostGroupStatus:
    return pb.HostGroupStatus(
        hosts=members, desired_hosts=status.desired_hosts, pending_replicas=status.pending_replicas,
        expected_hosts=status.expected_hosts, expected_until=ts(status.expected_until),
        last_scale_out_at=ts(status.last_scale_out_at),
        undelivered_requests=sum(r.state is DeliveryState.PENDING for r in status.requests),
        requests=[request_to_pb(r) for r in status.requests],
        draining=_group_hosts(status.draining, hosts), released=_group_hosts(status.released, hosts),
        underused=_group_hosts(status.underused_since, hosts),
        decisions=[pb.Decision(time=ts(d.time), action=d.action, reason=d.reason) for d in status.decisions],
        revision=status.revision)


def members_to_pb(group: str, status: HostGroupStatus, *, hosts: Mapping[HostId, HostRecord],
                  host_statuses: Mapping[HostId, HostStatus], replicas: Iterable[Replica],
                  services: Iterable[Service]) -> list[pb.HostGroupMember]:
    records = [r for r in hosts.values() if is_member(r, group)]
    if not records:
        return []
    every = list(replicas)
    view = build_view(hosts=records, statuses=host_statuses, replicas=every, services=services)
    underused = dict(status.underused_since)
    draining = dict(status.draining)
    out = []
    for record in sorted(records, key=lambda r: (r.name, r.id)):
        used = view.host(record.id)
        here = replicas_on(record.id, every)
        out.append(pb.HostGroupMember(
            id=record.id, name=record.name, address=record.address,
            state=host_state(record, host_statuses.get(record.id), here), replicas=here,
            cpu_allocatable_millis=used.cpu_allocatable, cpu_requested_millis=used.cpu_used,
            memory_allocatable_bytes=used.memory_allocatable, memory_requested_bytes=used.memory_used,
            underused_since=ts(underused.get(record.id, 0.0)),
            draining_since=ts(draining.get(record.id, 0.0))))
    return out


def hostgroup_to_pb(group: HostGroup, status: HostGroupStatus | None, *, hosts: Mapping[HostId, HostRecord],
                    host_statuses: Mapping[HostId, HostStatus], replicas: Iterable[Replica],
                    services: Iterable[Service]) -> pb.HostGroup:
    """The group with its status and members (``status`` None: the leader has written none yet)."""
    name = group.spec.name
    status = status if status is not None else HostGroupStatus(group=GroupName(name))
    members = members_to_pb(name, status, hosts=hosts, host_statuses=host_statuses, replicas=replicas,
                            services=services)
    return pb.HostGroup(
        spec=spec_to_pb(group.spec), spec_yaml=spec_hostgroup.render_yaml(group.spec),
        generation=group.generation, created_at=ts(group.created_at), updated_at=ts(group.updated_at),
        revision=group.revision, status=status_to_pb(status, members=len(members), hosts=hosts),
        members=members)


__all__ = ["delete_refusal", "hostgroup_to_pb", "is_member", "members_to_pb", "planned_apply",
           "request_to_pb", "shape_to_pb", "spec_to_pb", "status_to_pb"]
