"""Which replicas to remove first on a scale-down: an order, for the reconcile loop to take from.

The order follows kube's ReplicaSet controller, adapted: replicas already stopping first (removing them
costs nothing), then pending ones (no host), failed, starting, running but not ready, and only then
ready ones. Within each class, replicas on hosts that are gone go first, then those on hosts placement
would not use now (cordoned, draining, not ready, under pressure); then those in the largest topology
domain of their service, then on the host with the most replicas of their service, then on the most
loaded host, then the newest, then by id. The counts are updated as the order is built, so removing
five replicas of a 6/2/2 spread takes four from the large zone and one more from wherever the tie then
falls, not five from one zone.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable

from scheduler import model
from scheduler.model import HostId, ReplicaPhase
from scheduler.placement.plugins import host_state
from scheduler.placement.view import ClusterView, facts_of

_CLASS = {
    ReplicaPhase.STOPPING: 0,
    ReplicaPhase.PENDING: 1,
    ReplicaPhase.FAILED: 2,
    ReplicaPhase.STARTING: 3,
}
_NOT_READY, _READY = 4, 5

_Key = tuple[int, int, int, int, float, float, str]


class _Counts:
    """Replicas of each service per host and per topology domain, minus those already ranked."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.per_host: dict[HostId, Counter[model.ServiceName]] = {
            h.id: Counter(h.replicas) for h in view.hosts}
        self.per_domain: dict[tuple[model.ServiceName, str], Counter[str]] = {}
        self.freed: Counter[tuple[HostId, str]] = Counter()

    def label_of(self, service: model.ServiceName) -> str | None:
        known = self.view.services.get(service)
        spread = known.spec.placement.topology_spread if known is not None else None
        return spread.label if spread is not None else None

    def domains(self, service: model.ServiceName, label: str) -> Counter[str]:
        key = (service, label)
        if key not in self.per_domain:
            counts = self.view.domain_counts(service, label, lambda host: True)
            self.per_domain[key] = Counter(counts.counts)
        return self.per_domain[key]

    def key(self, replica: model.Replica) -> _Key:
        klass = _CLASS.get(replica.phase, _READY if replica.ready else _NOT_READY)
        if replica.host is None:
            return (min(klass, _CLASS[ReplicaPhase.PENDING]), 0, 0, 0, 0.0, -replica.created_at, replica.id)
        host = self.view.by_id.get(replica.host)
        if host is None:  # the host is gone: first of its class
            return (klass, -1, 0, 0, 0.0, -replica.created_at, replica.id)
        usable = 0 if host_state.host_problem(host.record, host.status) else 1
        label = self.label_of(replica.service)
        in_domain = 0
        if label is not None and label in host.labels:
            in_domain = self.domains(replica.service, label)[host.labels[label]]
        on_host = self.per_host[host.id][replica.service]
        cpu = host.cpu_used - self.freed[(host.id, "cpu")]
        memory = host.memory_used - self.freed[(host.id, "memory")]
        load = max(cpu / host.cpu_allocatable if host.cpu_allocatable > 0 else 0.0,
                   memory / host.memory_allocatable if host.memory_allocatable > 0 else 0.0)
        return (klass, usable, -in_domain, -on_host, -load, -replica.created_at, replica.id)

    def remove(self, replica: model.Replica) -> None:
        host = self.view.by_id.get(replica.host) if replica.host is not None else None
        if host is None or replica.phase is ReplicaPhase.STOPPING:
            return  # not in the counts
        self.per_host[host.id][replica.service] -= 1
        label = self.label_of(replica.service)
        if label is not None and label in host.labels:
            self.domains(replica.service, label)[host.labels[label]] -= 1
        service = self.view.services.get(replica.service)
        if service is not None:
            facts = facts_of(replica, service)
            self.freed[(host.id, "cpu")] += facts.cpu_millis
            self.freed[(host.id, "memory")] += facts.memory_bytes


def rank_for_removal(replicas: Iterable[model.Replica], view: ClusterView) -> list[model.Replica]:
    """``replicas`` in the order to remove them (the first ``k`` are the ``k`` to remove)."""
    counts = _Counts(view)
    heap = [(counts.key(r), r.id, r) for r in replicas]
    heapq.heapify(heap)
    order: list[model.Replica] = []
    # Removing a replica only lowers counts and loads, which only makes other replicas' keys larger
    # (less preferred): an entry whose key is still current when popped is the true minimum.
    while heap:
        stored, rid, replica = heapq.heappop(heap)
        current = counts.key(replica)
        if current != stored:
            heapq.heappush(heap, (current, rid, replica))
            continue
        order.append(replica)
        counts.remove(replica)
    return order


__all__ = ["rank_for_removal"]
