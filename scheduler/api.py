"""Domain values ↔ the scheduler API's protobuf messages, and the few things derived only for the API.

An autoscale policy comes in as ``pb.Autoscale`` and is read exactly as the service file's ``autoscale``
section (``spec_with_autoscale``), so the API and the file accept and refuse the same policies with the
same paths; the replica count an apply or a policy change leaves is decided here too.

Derived, never stored: a service's status (counted from its replicas), a host's state (from its admin
state, its status and whether replicas remain on it), a service's endpoints (its ready replicas'
published ports on their hosts' addresses), a rollout's progress.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf import json_format, timestamp_pb2

from proto.agent.v1 import agent_pb2 as apb
from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler.follower import ReplicaCounts
from scheduler.model import (
    Autoscale,
    Decision,
    HostAdmin,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaPhase,
    Service,
    ServiceSpec,
)
from scheduler.spec import spec_from_api
from scheduler.spec_render import api_dict

_PHASES = {
    ReplicaPhase.PENDING: pb.REPLICA_STATE_PENDING, ReplicaPhase.STARTING: pb.REPLICA_STATE_STARTING,
    ReplicaPhase.RUNNING: pb.REPLICA_STATE_RUNNING, ReplicaPhase.FAILED: pb.REPLICA_STATE_FAILED,
    ReplicaPhase.STOPPING: pb.REPLICA_STATE_STOPPING,
}
PHASE_OF_PB = {v: k for k, v in _PHASES.items()}


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    if seconds:
        out.FromNanoseconds(int(seconds * 1e9))
    return out


def live(replicas: Iterable[Replica]) -> list[Replica]:
    return [r for r in replicas if r.phase is not ReplicaPhase.STOPPING]


def service_status(service: Service, replicas: Sequence[Replica]) -> pb.ServiceStatus:
    return status_of_counts(ReplicaCounts.of(replicas, template_generation=service.template_generation))


def status_of_counts(counts: ReplicaCounts) -> pb.ServiceStatus:
    return pb.ServiceStatus(replicas=counts.replicas, ready=counts.ready, pending=counts.pending,
                            updated=counts.updated, failed=counts.failed, message=counts.pending_reason)


def service_to_pb(service: Service, replicas: Sequence[Replica]) -> pb.Service:
    return counted_service_to_pb(
        service, ReplicaCounts.of(replicas, template_generation=service.template_generation))


def counted_service_to_pb(service: Service, counts: ReplicaCounts, *,
                          specs: SpecCache | None = None) -> pb.Service:
    """The service with its status from ``counts`` (``ClusterState.counts``: no replica is read)."""
    spec = specs.spec_pb(service) if specs is not None else spec_to_pb(service)
    return pb.Service(
        spec=spec, generation=service.generation,
        template_generation=service.template_generation, status=status_of_counts(counts),
        created_at=ts(service.created_at), updated_at=ts(service.updated_at), deleting=service.deleting,
        revision=service.revision)


def spec_to_pb(service: Service) -> pb.ServiceSpec:
    return json_format.ParseDict(api_dict(service.spec), pb.ServiceSpec())


class SpecCache:
    """Converted specs by service, for the revision they were read at: converting a spec is most of the
    cost of ``get services`` (json_format, about 1 ms a service), and a spec changes only when its record
    does. A record read from etcd at revision R always holds the same spec; one not yet written
    (revision 0) is converted every time. Entries of services that are gone are dropped by ``keep``."""

    def __init__(self) -> None:
        self._specs: dict[str, tuple[int, pb.ServiceSpec]] = {}

    def spec_pb(self, service: Service) -> pb.ServiceSpec:
        if service.revision <= 0:
            return spec_to_pb(service)
        cached = self._specs.get(service.name)
        if cached is None or cached[0] != service.revision:
            cached = (service.revision, spec_to_pb(service))
            self._specs[service.name] = cached
        return cached[1]

    def keep(self, names: Iterable[str]) -> None:
        """Forget every service but ``names`` (the ones that exist)."""
        wanted = set(names)
        self._specs = {name: entry for name, entry in self._specs.items() if name in wanted}


def replicas_to_keep(current: ServiceSpec, applied: ServiceSpec) -> int:
    """The replica count an apply of ``applied`` over ``current`` writes: the document's, unless the
    service is to be autoscaled — then the count it runs now, clamped to the new min..max, so re-applying
    a file never undoes the autoscaler (nor does turning autoscaling on move a running service to the
    file's count)."""
    if applied.autoscale is None:
        return applied.replicas
    return clamped(current.replicas, applied.autoscale)


def clamped(count: int, policy: Autoscale) -> int:
    return min(max(count, policy.min_replicas), policy.max_replicas)


def spec_with_autoscale(spec: ServiceSpec, policy: pb.Autoscale | None) -> ServiceSpec:
    """``spec`` with ``policy`` (None: without one), read as the service file's ``autoscale`` section and
    checked against the service's template (``SpecError`` naming ``autoscale.…`` paths); the count is
    clamped to the new min..max, and kept as it is when the policy goes."""
    if policy is None:
        return dataclasses.replace(spec, autoscale=None)
    data = api_dict(spec)
    data["replicas"] = 0  # in the structured form: not given (the count is decided below)
    data["autoscale"] = json_format.MessageToDict(policy, preserving_proto_field_name=True)
    parsed = spec_from_api(data, source="autoscale").autoscale
    assert parsed is not None  # spec_from_api raises for a policy it cannot read
    return dataclasses.replace(spec, autoscale=parsed, replicas=clamped(spec.replicas, parsed))


def host_address(record: HostRecord | None) -> str:
    """The host part of the agent's advertised HOST:PORT: where its published ports are reached. An IPv6
    address keeps its brackets (``[fd00::1]``), so ``f"{host}:{port}"`` is an address clients parse."""
    if record is None:
        return ""
    return record.address.rpartition(":")[0]


def endpoints_of(replica: Replica, hosts: Mapping[HostId, HostRecord]) -> list[pb.Endpoint]:
    if not replica.ready or replica.host is None or replica.phase is not ReplicaPhase.RUNNING:
        return []
    address = host_address(hosts.get(replica.host))
    if not address:
        return []
    return [pb.Endpoint(service=replica.service, replica=replica.id, host=replica.host,
                        address=f"{address}:{port.host_port}", container_port=port.container_port,
                        protocol=port.protocol)
            for port in replica.ports if port.host_port]


def replica_to_pb(replica: Replica, hosts: Mapping[HostId, HostRecord]) -> pb.Replica:
    host = hosts.get(replica.host) if replica.host is not None else None
    return pb.Replica(
        id=replica.id, service=replica.service, host=replica.host or "", state=_PHASES[replica.phase],
        ready=replica.ready, generation=replica.generation, reason=replica.reason,
        created_at=ts(replica.created_at), updated_at=ts(replica.updated_at), restarts=replica.restarts,
        endpoints=endpoints_of(replica, hosts), host_name=host.name if host is not None else "",
        revision=replica.revision)


def decision_to_pb(decision: Decision) -> pb.Decision:
    return pb.Decision(time=ts(decision.time), action=decision.action, reason=decision.reason)


def replicas_on(host: HostId, replicas: Iterable[Replica]) -> int:
    """How many replicas are on ``host``, stopping ones included: a host is drained only once its last
    container is gone, or removing the host would kill replicas still being stopped gracefully."""
    return sum(1 for r in replicas if r.host == host)


def delete_host_refusal(record: HostRecord, status: HostStatus | None, replicas_here: Iterable[Replica]
                        ) -> str | None:
    """Why a host may not be forgotten now (``None``: it may). Only a host that is gone: a ready one's
    agent would register again within seconds, and a replica not yet replaced elsewhere still counts on
    it. Records of replicas already replaced (stopping, abandoned with their host) go with it."""
    if status is not None and status.ready:
        return (f"host {record.name} is ready (its agent is connected): stop its agent first, or it "
                "registers again within seconds; to empty it, shoal drain it")
    staying = sorted(r.id for r in replicas_here if r.phase is not ReplicaPhase.STOPPING)
    if staying:
        return (f"host {record.name} still holds {len(staying)} replica(s) not yet replaced elsewhere "
                f"({', '.join(staying[:3])}{', ...' if len(staying) > 3 else ''}): they are replaced "
                "once it has been unreachable for the scheduler's --host-grace; try again then")
    return None


START_FAILING = "StartFailing"  # the scheduler's own host condition (scheduler.start_health)


def host_state(record: HostRecord, status: HostStatus | None, replicas_here: int) -> pb.HostState.ValueType:
    """``replicas_here``: ``replicas_on(record.id, ...)``."""
    if status is None or not status.ready:
        return pb.HOST_STATE_NOT_READY
    if record.admin is HostAdmin.DRAINING:
        return pb.HOST_STATE_DRAINED if replicas_here == 0 else pb.HOST_STATE_DRAINING
    if record.admin is HostAdmin.CORDONED:
        return pb.HOST_STATE_CORDONED
    return pb.HOST_STATE_READY


def host_to_pb(record: HostRecord, status: HostStatus | None, replicas_here: int, *,
               info: apb.HostInfo | None = None) -> pb.Host:
    """``info``: the report ``record.info_json`` was written from, when the caller has it (parsing the
    JSON again was the largest part of answering a registration)."""
    if info is None:
        info = apb.HostInfo()
        if record.info_json:
            json_format.Parse(record.info_json, info, ignore_unknown_fields=True)
    reason = status.reason if status is not None and not status.ready else ""
    if status is None:
        reason = "the leader has not reached its agent yet"
    conditions = [c.type for c in info.conditions]
    if status is not None and status.start_failing:
        conditions.append(START_FAILING)
        reason = reason or (f"failing to start containers: {status.start_failures} in a row, last: "
                            f"{status.start_failure_reason}")
    return pb.Host(
        id=record.id, name=record.name, address=record.address,
        state=host_state(record, status, replicas_here), labels=dict(record.labels), info=info,
        replicas=replicas_here, reason=reason, registered_at=ts(record.registered_at),
        last_seen=ts(record.last_registered_at), metrics_address=record.metrics_address,
        revision=record.revision, conditions=conditions,
        start_failures=status.start_failures if status is not None else 0)


def rollout_of(service: Service, replicas: Sequence[Replica]) -> pb.Rollout:
    alive = live(replicas)
    updated = [r for r in alive if r.generation == service.template_generation]
    old = [r for r in alive if r.generation != service.template_generation]
    ready = sum(r.ready for r in updated)
    desired = service.spec.replicas
    complete = not old and len(updated) == desired and ready == desired
    if complete:
        message = f"rolled out generation {service.template_generation}: {ready}/{desired} ready"
    else:
        message = (f"{ready}/{desired} replicas of generation {service.template_generation} ready, "
                   f"{len(old)} of older generations still present")
    previous = service.history[-1].template_generation if service.history else 0
    return pb.Rollout(service=service.name, template_generation=service.template_generation,
                      desired=desired, updated=len(updated), updated_ready=ready, old=len(old),
                      complete=complete, message=message, previous_template_generation=previous)


__all__ = [
    "PHASE_OF_PB", "START_FAILING", "SpecCache", "clamped", "counted_service_to_pb", "decision_to_pb",
    "delete_host_refusal", "endpoints_of", "host_address", "host_state", "host_to_pb", "live",
    "replica_to_pb", "replicas_on", "replicas_to_keep", "rollout_of", "service_status", "service_to_pb",
    "spec_to_pb", "spec_with_autoscale", "status_of_counts", "ts",
]
