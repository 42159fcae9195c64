"""Each reconcile pass's placement view, built from the last one: unchanged hosts are copied, not recounted.

``build_view`` counts every replica onto its host: at 100,000 replicas on 5,000 hosts that is more than
half a second of cpu, paid by every pass that places anything, while a pass that replaces a mass failure
changes a few percent of the hosts (docs/scaling.md, part 12). A ``ViewCache`` keeps, per host, the
``HostView`` it built last time (never placed on: every view gets copies) and the inputs it was built
from, and builds that host again only when one of them is no longer the same object: its record, its
status, the collection of replicas its agent counts, the replica records on it — or the facts of a
service any of those replicas belong to. The records are immutable and replaced on every change (the
leader's mirror, ``Controller._fresh`` and ``_status`` keep the same object while nothing changed), so
identity is a sound test: a replica record replaced by an equal one is compared field by field and
the host kept; any other input replaced by an equal one only costs a rebuild.

What it builds is what ``build_view`` builds from the same inputs (a property test holds the two equal
through random changes: ``tests/unit/scheduler/placement/test_view_cache.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from scheduler import model
from scheduler.model import HostId, ReplicaId, ServiceName
from scheduler.placement.view import ClusterView, HostView, by_host, host_view


@dataclass(slots=True)
class _Kept:
    record: model.HostRecord
    status: model.HostStatus | None
    counted: Collection[ReplicaId] | None
    members: tuple[model.Replica, ...]
    services: frozenset[ServiceName]
    view: HostView  # as built: only ever copied


def _facts_key(service: model.Service | None) -> object:
    """What a host's figures read of a service: its facts, of each generation (``view.facts_of``)."""
    if service is None:
        return None
    return (service.template_generation, service.spec.facts,
            tuple((old.template_generation, old.facts) for old in service.history))


@dataclass(frozen=True, slots=True)
class ViewInputs:
    """What a view is built from, as ``build_view`` takes it, keyed by id (services by name)."""

    hosts: Mapping[HostId, model.HostRecord]
    statuses: Mapping[HostId, model.HostStatus]
    replicas: Mapping[ReplicaId, model.Replica]
    services: Mapping[ServiceName, model.Service]
    counted_by_agent: Mapping[HostId, Collection[ReplicaId]]


class ViewCache:
    """Builds views of one cluster over time, reusing what did not change since the last build."""

    def __init__(self) -> None:
        self._kept: dict[HostId, _Kept] = {}
        self._facts: dict[ServiceName, tuple[model.Service, object]] = {}  # each with its facts' key
        self.rebuilt = 0  # hosts built afresh by the last ``build`` or ``refresh`` (the rest were kept)

    def build(self, inputs: ViewInputs) -> ClusterView:
        """``build_view`` of these inputs."""
        self.refresh(inputs)
        return ClusterView([entry.view.copy() for entry in self._kept.values()], inputs.services,
                           inputs.replicas)

    def refresh(self, inputs: ViewInputs) -> None:
        """What ``build`` keeps, brought up to these inputs, without building a view: keeps the cache warm
        between passes that place (the copies and the view are most of a build that changed little)."""
        hosts, statuses, services = inputs.hosts, inputs.statuses, inputs.services
        counted_by_agent = inputs.counted_by_agent
        changed = self._changed_facts(services)
        on = by_host(inputs.replicas.values(), hosts)
        kept, rebuilt = {}, 0
        for host, record in hosts.items():
            status = statuses.get(host)
            counted = counted_by_agent.get(host)
            members = tuple(on[host])
            entry = self._kept.get(host)
            if (entry is None or entry.record is not record or entry.status is not status
                    or entry.counted is not counted or entry.members != members
                    or (changed and not entry.services.isdisjoint(changed))):
                # (``!=`` of two tuples of the same objects compares identities: no record is compared
                # field by field unless one really changed.)
                entry = _Kept(record, status, counted, members, frozenset(r.service for r in members),
                              host_view(record, status, members, services, counted=counted))
                rebuilt += 1
            kept[host] = entry
        self._kept = kept
        self.rebuilt = rebuilt

    def _changed_facts(self, services: Mapping[ServiceName, model.Service]) -> set[ServiceName]:
        """Services whose facts differ from the last build's (created and deleted ones included)."""
        known = self._facts
        changed = set(known.keys() - services.keys())
        facts: dict[ServiceName, tuple[model.Service, object]] = {}
        for name, service in services.items():
            entry = known.get(name)
            if entry is None or entry[0] is not service:
                key = _facts_key(service)
                if entry is None or entry[1] != key:
                    changed.add(name)
                entry = (service, key)
            facts[name] = entry
        self._facts = facts
        return changed


__all__ = ["ViewCache", "ViewInputs"]
