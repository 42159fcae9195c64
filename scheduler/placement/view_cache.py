"""Each reconcile pass's placement view, built from the last one: unchanged hosts are kept, not recounted.

``build_view`` counts every replica onto its host: at 100,000 replicas on 5,000 hosts that is more than
half a second of cpu, paid by every pass that places anything, while a pass that replaces a mass failure
changes a few percent of the hosts (docs/scaling.md, part 12). A ``ViewCache`` keeps, per host, the
``HostView`` it built last time (never placed on: views share it, and a batch places on a copy, made
by ``ClusterView.assume`` the first time it places on that host) and the inputs it was built
from, and builds that host again only when one of them is no longer the same object: its record, its
status, the collection of replicas its agent counts, the replica records on it — or the facts of a
service any of those replicas belong to. The records are immutable and replaced on every change (the
leader's mirror, ``Controller._fresh`` and ``_status`` keep the same object while nothing changed), so
identity is a sound test: a replica record replaced by an equal one is compared field by field and
the host kept, and so is a host record that differs only in what re-registering rewrites every time
(``_reregistered``: at 5,000 hosts every host's, once a minute, so a view a minute after the last
counted every host again); one whose capacity alone changed (the agent's committed figures, as
containers start and stop) has a copy of its kept view take the new figures (``HostView.with_capacity``)
instead of being counted again; a status that differs only in what placement does not read (all but
``ready`` and ``start_failing``: ``host_state.status_read``) is kept as a record registered again is; any
other input replaced by an equal one only costs a rebuild.

A host whose record, status and services' facts are those of its kept view, but whose replicas (or
those its agent counts) changed, is brought up to date from a copy of that view: the replicas gone
taken out (``HostView.remove_replica``, the exact inverse of counting them), the new ones counted.
That is what the pass after a mass failure's first marking pass meets on every host that got a
replacement (about 2,000 at 5,000 hosts: 20 replicas counted again on each, most of that pass's view,
docs/scaling.md part 26), and every placing pass after the first on the hosts it places on. A replica
gone that held host ports or ran an image has the host counted again (another replica may hold the
same port or image).

What it builds is what ``build_view`` builds from the same inputs (a property test holds the two equal
through random changes, counting again and updating: ``tests/unit/scheduler/placement/test_view_cache.py``).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from scheduler import model
from scheduler.model import HostId, ReplicaId, ReplicaPhase, ServiceName
from scheduler.placement.plugins.host_state import status_read
from scheduler.placement.view import (
    ClusterView,
    HostView,
    Layout,
    by_host,
    count_replica,
    facts_of,
    fixed_host_ports,
    host_view,
    not_started,
)

# A host whose replicas changed is brought up to date from its kept view while the replicas to take out
# (twice: out and in again, for those the agent now counts) and to add are fewer than this share of
# those on it; past that, counting them all again costs about as much.
UPDATE_SHARE = 1.0


@dataclass(slots=True)
class _Kept:
    record: model.HostRecord
    status: model.HostStatus | None
    counted: Collection[ReplicaId] | None
    members: tuple[model.Replica, ...]
    services: frozenset[ServiceName]
    view: HostView  # as built: shared by views, never placed on (``ClusterView``, shared)


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

    def __init__(self, *, update_share: float = UPDATE_SHARE) -> None:
        self.update_share = update_share
        self._kept: dict[HostId, _Kept] = {}
        self._facts: dict[ServiceName, tuple[model.Service, object]] = {}  # each with its facts' key
        # The views' layout (``view.Layout``): the hosts' ids in view order, their indices, and the
        # hosts (by index) whose kept entries name each service. Sets changed by a refresh are replaced,
        # not changed in place: a view built before may still be read (a placer's explanations).
        self._order: list[HostId] = []
        self._index: dict[HostId, int] = {}
        self._service_hosts: dict[ServiceName, set[int]] = {}
        self.rebuilt = 0  # hosts built afresh by the last ``build`` or ``refresh``
        self.updated = 0  # hosts whose kept view was brought up to date by what changed (the rest: kept)

    def build(self, inputs: ViewInputs) -> ClusterView:
        """``build_view`` of these inputs."""
        self.refresh(inputs)
        kept = self._kept
        return ClusterView([kept[host].view for host in self._order], inputs.services, inputs.replicas,
                           shared=True, layout=Layout(self._index, self._service_hosts))

    def refresh(self, inputs: ViewInputs) -> None:
        """What ``build`` keeps, brought up to these inputs, without building a view: keeps the cache warm
        between passes that place (the view is most of a build that changed little)."""
        hosts, statuses, services = inputs.hosts, inputs.statuses, inputs.services
        counted_by_agent = inputs.counted_by_agent
        changed = self._changed_facts(services)
        on = by_host(inputs.replicas.values(), hosts)
        kept: dict[HostId, _Kept] = {}
        rebuilt, updated = 0, 0
        for host, record in hosts.items():
            status = statuses.get(host)
            counted = counted_by_agent.get(host)
            members = tuple(on[host])
            entry = self._kept.get(host)
            resized = False
            if entry is not None and entry.record is not record:
                if _reregistered(entry.record, record):
                    # Nothing a view reads changed: the kept view (and every view sharing it) takes the
                    # new record, so the old one is not held, and the next pass finds it by identity.
                    entry.record = entry.view.record = record
                elif _resized(entry.record, record):
                    # Only the agent's figures: a copy with them (views built before keep theirs).
                    entry = _Kept(record, entry.status, entry.counted, entry.members, entry.services,
                                  entry.view.with_capacity(record))
                    resized = True
            if entry is not None and status is not None and entry.status is not status \
                    and _status_alike(entry.status, status):
                # Nothing placement reads changed (whether its containers were listed, since when, the
                # reason's words, failures counted short of failing): kept, as a record registered again.
                # A new term's sessions completing changed every host's status so, and the next view
                # counted all 5,000 hosts again (docs/scaling.md, part 38).
                entry.status = entry.view.status = status
            if entry is None or entry.record is not record or entry.status is not status or (
                    changed and not entry.services.isdisjoint(changed)):
                entry = _Kept(record, status, counted, members, _services(members),
                              host_view(record, status, members, services, counted=counted))
                rebuilt += 1
            elif entry.counted is not counted or entry.members != members:
                # (``!=`` of two tuples of the same objects compares identities: no record is compared
                # field by field unless one really changed.)
                update = _updated(entry, members, counted, services, self.update_share)
                if update is None:
                    entry = _Kept(record, status, counted, members, _services(members),
                                  host_view(record, status, members, services, counted=counted))
                    rebuilt += 1
                else:
                    entry = _Kept(record, status, counted, members, *update)
                    updated += 1
            elif resized:
                updated += 1
            kept[host] = entry
        self._lay_out(kept)
        self._kept = kept
        self.rebuilt, self.updated = rebuilt, updated

    def _lay_out(self, kept: dict[HostId, _Kept]) -> None:
        """The layout brought up to ``kept``: found again when hosts came or went, else the per-service
        index changed only where a host's services did."""
        if kept.keys() != self._index.keys():
            self._order = sorted(kept, key=lambda h: (kept[h].view.key_hash, h))
            self._index = {h: i for i, h in enumerate(self._order)}
            index: dict[ServiceName, set[int]] = {}
            for i, host in enumerate(self._order):
                for service in kept[host].services:
                    index.setdefault(service, set()).add(i)
            self._service_hosts = index
            return
        old, index, replaced = self._kept, self._service_hosts, set()
        for host, entry in kept.items():
            before = old[host].services
            if entry.services is before or entry.services == before:
                continue
            i = self._index[host]
            for service in before ^ entry.services:
                if service not in replaced:
                    replaced.add(service)
                    index[service] = set(index.get(service, ()))
                if service in before:
                    index[service].discard(i)
                else:
                    index[service].add(i)
        for service in replaced:
            if not index[service]:
                del index[service]

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


# A host record's fields but those registering again rewrites every time (``server.REGISTRATION_REWRITE``):
# its revision, the registration's time and its raw report. (The use figures in its capacity come from
# the agent's reports, ``Controller._fresh``, and are compared.) ``mirror.host_as_read`` draws a like
# line for waking passes, but copies each record twice; this is asked per host on every refresh.
_REREGISTERED = frozenset({"revision", "last_registered_at", "info_json"})
_compared = operator.attrgetter(*(f.name for f in dataclasses.fields(model.HostRecord)
                                  if f.name not in _REREGISTERED))
_but_capacity = operator.attrgetter(*(f.name for f in dataclasses.fields(model.HostRecord)
                                      if f.name not in _REREGISTERED | {"capacity"}))


def _reregistered(kept: model.HostRecord, record: model.HostRecord) -> bool:
    """Whether ``record`` is ``kept`` registered again with nothing new."""
    return bool(_compared(kept) == _compared(record))


def _resized(kept: model.HostRecord, record: model.HostRecord) -> bool:
    """Whether ``record`` differs from ``kept`` in its capacity alone (and what registering rewrites):
    the agent's figures, which ``HostView.with_capacity`` applies to a copy of the kept view. Every
    host's change as the replicas placed on it start; before this, each such host was counted again."""
    return bool(_but_capacity(kept) == _but_capacity(record))


def _status_alike(kept: model.HostStatus | None, status: model.HostStatus) -> bool:
    """Whether ``status`` places as ``kept`` does (no status at all is a status "not ready")."""
    return kept is not None and status_read(kept) == status_read(status)


def _services(members: tuple[model.Replica, ...]) -> frozenset[ServiceName]:
    return frozenset(r.service for r in members)


def _updated(entry: _Kept, members: tuple[model.Replica, ...], counted: Collection[ReplicaId] | None,
             services: Mapping[ServiceName, model.Service], share: float
             ) -> tuple[frozenset[ServiceName], HostView] | None:
    """A copy of the kept view with only what changed on its host counted again: the replicas gone (or
    replaced) taken out, the new ones added, those the agent now counts or no longer counts moved
    between placed and counted; with the services of the replicas on it now (exactly: they say which
    services' new facts have the host counted again, and which hosts the views' per-service index
    names; the kept set itself when they did not change, so the layout sees no change). The host's record
    and status and its services' facts are those the kept view was built from. None when counting the
    host again is needed (a replica gone that held host ports or ran an image: another may hold the
    same) or as cheap."""
    old_ids = {id(r) for r in entry.members}
    new_ids = {id(r) for r in members}
    removed = [r for r in entry.members if id(r) not in new_ids]
    added = [r for r in members if id(r) not in old_ids]
    flipped = [] if counted is entry.counted else [
        r for r in members if id(r) in old_ids and r.phase is not ReplicaPhase.STOPPING
        and not_started(r, entry.counted) != not_started(r, counted)]
    if not (removed or flipped or added):
        # What changed counts nothing differently (a host's session listing the running replicas the
        # phase rule already took as counted, a new term's every host): the kept view as it is.
        return entry.services, entry.view
    if 2 * len(removed) + 2 * len(flipped) + len(added) >= share * len(members):
        return None
    undo: list[tuple[model.Replica, model.TemplateFacts]] = []
    for replica in removed:
        if any(port.host_port for port in replica.ports):
            return None
        service = services.get(replica.service)
        if service is None:
            continue  # counted nothing (nor does it now)
        facts = facts_of(replica, service)
        if fixed_host_ports(facts) or replica.phase is ReplicaPhase.RUNNING:
            return None
        if replica.phase is not ReplicaPhase.STOPPING:
            undo.append((replica, facts))
    view = entry.view.copy()
    for replica, facts in undo:
        view.remove_replica(replica.service, facts, not_started=not_started(replica, entry.counted))
    for replica in flipped:
        service = services.get(replica.service)
        if service is None:
            continue  # not counted either way
        facts = facts_of(replica, service)
        view.remove_replica(replica.service, facts, not_started=not_started(replica, entry.counted))
        view.add_replica(replica.service, facts, not_started=not_started(replica, counted))
    images = set()
    for replica in added:
        image = count_replica(view, replica, services, counted)
        if image is not None and image not in view.images:
            images.add(image)
    if images:
        view.images = view.images | images
    on_it = _services(members)
    return (entry.services if on_it == entry.services else on_it), view


__all__ = ["UPDATE_SHARE", "ViewCache", "ViewInputs"]
