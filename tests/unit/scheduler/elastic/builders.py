"""Small constructors for the elastic step's tests: group members, host groups, pending and running
replicas, the step's inputs, and applying a plan the way the loop commits it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from scheduler import model
from scheduler.elastic.step import ElasticInputs, ElasticPlan
from scheduler.model import (
    LABEL_GROUP,
    Decision,
    GroupName,
    HostAdmin,
    HostId,
    HostShape,
    ReplicaId,
    ReplicaPhase,
)
from scheduler.placement import registry
from tests.unit.scheduler.placement import builders as pb

GiB = pb.GiB
MiB = pb.MiB
NOW = 1_800_000_000.0
PROFILE = registry.default_profile()
service = pb.service
constraint = pb.constraint


def host(name: str, *, group: str | None = "workers", cpus: float = 2, memory: int = 4 * GiB,
         labels: Mapping[str, str] | None = None, admin: HostAdmin = HostAdmin.ACTIVE,
         registered_at: float = 0.0) -> model.HostRecord:
    all_labels = dict(labels or {})
    if group is not None:
        all_labels[LABEL_GROUP] = group
    record = pb.host(name, cpus=cpus, memory=memory, labels=all_labels, admin=admin)
    return replace(record, registered_at=registered_at)


def shape(*, cpus: float = 2, memory: int = 4 * GiB, labels: Mapping[str, str] | None = None) -> HostShape:
    return HostShape(cpu_millis=int(cpus * 1000), memory_bytes=memory,
                     labels=tuple(sorted((labels or {}).items())))


def group(name: str = "workers", *, max_hosts: int = 10, the_shape: HostShape | None = None,
          **spec: object) -> model.HostGroup:
    return model.HostGroup(spec=model.HostGroupSpec(name=GroupName(name), max_hosts=max_hosts,
                                                    shape=the_shape, **spec))  # type: ignore[arg-type]


def pending(rid: str, svc: model.Service, *, since: float = NOW - 10) -> model.Replica:
    """A replica created at ``since`` and pending without a host since then."""
    return model.Replica(id=ReplicaId(rid), service=svc.name, generation=svc.template_generation,
                         created_at=since, reason="0/1 hosts: 1 insufficient cpu",
                         decisions=(Decision(since, "created", "the service wants more replicas"),
                                    Decision(since, "pending", "0/1 hosts: 1 insufficient cpu")))


def pendings(svc: model.Service, n: int, *, since: float = NOW - 10) -> list[model.Replica]:
    return [pending(f"{svc.name}-p{i:03d}", svc, since=since) for i in range(n)]


def running(rid: str, svc: model.Service, host_id: str, *,
            phase: ReplicaPhase = ReplicaPhase.RUNNING) -> model.Replica:
    return pb.replica(rid, svc, host_id, phase=phase, ready=phase is ReplicaPhase.RUNNING)


def inputs(*, groups: Iterable[model.HostGroup], hosts: Iterable[model.HostRecord],
           services: Iterable[model.Service] = (), replicas: Sequence[model.Replica] = (),
           statuses: Iterable[model.HostGroupStatus] = (), not_ready: Iterable[str] = (),
           now: float = NOW) -> ElasticInputs:
    records = {h.id: h for h in hosts}
    down = set(not_ready)
    return ElasticInputs(
        groups={g.spec.name: g for g in groups}, statuses={s.group: s for s in statuses}, hosts=records,
        host_statuses={h: pb.status(h, ready=h not in down) for h in records},
        services={s.name: s for s in services}, replicas=list(replicas), profile=PROFILE, now=now)


def applied(before: ElasticInputs, plan: ElasticPlan, *, now: float | None = None) -> ElasticInputs:
    """The inputs after the loop committed ``plan``: the new statuses, drained hosts draining, forgotten
    hosts gone (and, with ``now``, later)."""
    statuses = {**before.statuses, **plan.statuses}
    hosts = {h: (replace(r, admin=HostAdmin.DRAINING) if h in plan.drain else r)
             for h, r in before.hosts.items() if h not in plan.forget}
    host_statuses = {h: s for h, s in before.host_statuses.items() if h not in plan.forget}
    return replace(before, statuses=statuses, hosts=hosts, host_statuses=host_statuses,
                   now=before.now if now is None else now)


def delivered(inp: ElasticInputs, group_name: str = "workers") -> ElasticInputs:
    """The inputs after the loop delivered every pending request of the group."""
    status = inp.statuses[GroupName(group_name)]
    requests = tuple(replace(r, state=model.DeliveryState.DELIVERED, attempts=1, delivered_at=inp.now)
                     for r in status.requests)
    return replace(inp, statuses={**inp.statuses, status.group: replace(status, requests=requests)})


def status_of(plan: ElasticPlan, inp: ElasticInputs, group_name: str = "workers") -> model.HostGroupStatus:
    """The group's status after the plan (its old one when the plan left it unchanged)."""
    name = GroupName(group_name)
    return plan.statuses.get(name) or inp.statuses.get(name) or model.HostGroupStatus(group=name)


def ids(*names: str) -> tuple[HostId, ...]:
    return tuple(HostId(n) for n in names)


def host_status(host_id: str, *, ready: bool = True) -> model.HostStatus:
    return pb.status(host_id, ready=ready)


__all__ = ["NOW", "PROFILE", "ElasticInputs", "ElasticPlan", "GiB", "MiB", "applied", "constraint",
           "delivered", "group", "host", "host_status", "ids", "inputs", "pending", "pendings", "running",
           "service", "shape", "status_of"]
