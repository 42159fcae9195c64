"""Small constructors for placement tests: hosts, services, replicas, views and requests in one line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from scheduler import model
from scheduler.model import HostId, ReplicaId, ReplicaPhase, ServiceName
from scheduler.placement import framework, registry, view

GiB = 1 << 30
MiB = 1 << 20


def host(name: str, *, cpus: float = 4, memory: int = 8 * GiB, committed_cpus: float = 0,
         committed_memory: int = 0, zone: str | None = None, labels: Mapping[str, str] | None = None,
         admin: model.HostAdmin = model.HostAdmin.ACTIVE,
         conditions: Sequence[str] = ()) -> model.HostRecord:
    all_labels = dict(labels or {})
    if zone is not None:
        all_labels["zone"] = zone
    return model.HostRecord(
        id=HostId(name), name=f"node-{name}", address=f"{name}:7443",
        labels=tuple(sorted(all_labels.items())),
        capacity=model.Capacity(cpu_allocatable_millis=int(cpus * 1000), memory_allocatable_bytes=memory,
                                cpu_committed_millis=int(committed_cpus * 1000),
                                memory_committed_bytes=committed_memory),
        conditions=tuple(conditions), admin=admin)


def status(host_id: str, *, ready: bool = True) -> model.HostStatus:
    return model.HostStatus(HostId(host_id), ready=ready, reason="" if ready else "unreachable")


def facts(*, cpus: float = 0.5, memory: int = 256 * MiB, image: str = "registry.test/web:1",
          host_ports: Sequence[int | tuple[int, str]] = ()) -> model.TemplateFacts:
    ports = []
    for p in host_ports:
        number, protocol = (p, "tcp") if isinstance(p, int) else p
        ports.append(model.PortRequest(container_port=number, host_port=number, protocol=protocol))
    return model.TemplateFacts(image=image, cpu_millis=int(cpus * 1000), memory_bytes=memory,
                               ports=tuple(ports))


def constraint(key: str, op: str, *values: str) -> model.Constraint:
    text = {"=": f"{key}={','.join(values)}", "!=": f"{key}!={','.join(values)}",
            "in": f"{key} in ({','.join(values)})", "notin": f"{key} notin ({','.join(values)})",
            "exists": key, "notexists": f"!{key}"}[op]
    return model.Constraint(key=key, op=model.ConstraintOp(op), values=tuple(values), text=text)


def service(name: str = "web", *, replicas: int = 0, cpus: float = 0.5, memory: int = 256 * MiB,
            image: str = "registry.test/web:1", host_ports: Sequence[int | tuple[int, str]] = (),
            strategy: model.Strategy = model.Strategy.SPREAD,
            constraints: Sequence[model.Constraint] = (), spread: str | None = None,
            max_skew: int = 1) -> model.Service:
    placement = model.Placement(
        strategy=strategy, constraints=tuple(constraints),
        topology_spread=model.TopologySpread(spread, max_skew) if spread else None)
    return model.Service(spec=model.ServiceSpec(
        name=ServiceName(name), replicas=replicas, template_json="{}",
        facts=facts(cpus=cpus, memory=memory, image=image, host_ports=host_ports), placement=placement))


def replica(rid: str, svc: model.Service, host_id: str | None = None, *,
            phase: ReplicaPhase | None = None, ready: bool = False, created_at: float = 0.0,
            ports: Sequence[model.HostPort] = ()) -> model.Replica:
    if phase is None:
        phase = ReplicaPhase.PENDING if host_id is None else ReplicaPhase.RUNNING
    return model.Replica(id=ReplicaId(rid), service=svc.name, generation=svc.template_generation,
                         host=HostId(host_id) if host_id is not None else None, phase=phase, ready=ready,
                         created_at=created_at, ports=tuple(ports))


def cluster(hosts: Iterable[model.HostRecord], *, services: Iterable[model.Service] = (),
            replicas: Iterable[model.Replica] = (), not_ready: Iterable[str] = (),
            **extra: object) -> view.ClusterView:
    """A view where every host is ready unless named in ``not_ready``."""
    records = list(hosts)
    down = set(not_ready)
    return view.build_view(hosts=records, statuses=[status(h.id, ready=h.id not in down) for h in records],
                           replicas=replicas, services=services, **extra)  # type: ignore[arg-type]


def request(svc: model.Service, rid: str) -> framework.PlacementRequest:
    return framework.PlacementRequest(replica=ReplicaId(rid), service=svc.name, facts=svc.spec.facts,
                                      placement=svc.spec.placement)


def requests(svc: model.Service, n: int, *, prefix: str | None = None) -> list[framework.PlacementRequest]:
    return [request(svc, f"{prefix or svc.name}-{i:05d}") for i in range(n)]


def zones_of(cluster_view: view.ClusterView, placed: Mapping[ReplicaId, HostId]) -> dict[str, int]:
    """How many of ``placed`` went to each zone."""
    counts: dict[str, int] = {}
    for host_id in placed.values():
        zone = cluster_view.host(host_id).labels.get("zone", "")
        counts[zone] = counts.get(zone, 0) + 1
    return counts


class CountingFilter:
    """A host-level filter that passes every host and counts the host evaluations runs ask it for
    (``calls``, on the class: reset it before a run)."""

    name = "counting"
    reads = framework.Reads.HOST
    calls = 0

    def applies(self, request: framework.PlacementRequest) -> bool:
        return True

    def key(self, request: framework.PlacementRequest) -> None:
        return None

    def filter(self, request: framework.PlacementRequest, host: view.HostView) -> tuple[str, ...]:
        type(self).calls += 1
        return ()

    def filter_all(self, request: framework.PlacementRequest,
                   hosts: Sequence[view.HostView]) -> list[tuple[str, ...]]:
        type(self).calls += len(hosts)
        return [()] * len(hosts)


def counting_profile() -> framework.Profile:
    """The default profile plus ``CountingFilter`` (its count reset)."""
    CountingFilter.calls = 0
    return framework.build_profile(
        framework.ProfileConfig(filters=(*registry.DEFAULT_CONFIG.filters, "counting"),
                                scores=registry.DEFAULT_CONFIG.scores),
        {"counting": lambda args: CountingFilter(), **registry.REGISTRY})
