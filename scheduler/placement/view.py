"""What placement sees of the cluster: each host's state, room, ports, images and replicas.

A ``ClusterView`` is built from plain inputs — host records and statuses, the replicas the scheduler
knows, the services, and optionally what the agents reported beyond their registration (images on the
host, ports taken by other containers, which replicas the agent's committed figures already include) —
and then updated in place as a batch places replicas (``assume``), so the next decision of the same
batch sees the previous ones. It decides nothing; the plugins read it.

Room on a host is the agent's *allocatable* minus its *committed* requests (every container holding a
reservation, as the agent last reported) minus the requests of replicas the scheduler placed there that
the agent does not count yet: placed but not started. Without an explicit report of which replicas the
agent counted, a replica counts as not started while it is pending with a host, ``starting`` or
``failed`` (about to be retried there); ``running`` and ``stopping`` ones are in the agent's figures.
Counting a replica twice for a moment only makes placement cautious; counting it never would overcommit.
The agent's committed figure arrives with its registration, which can lag the container list the
scheduler follows; so the requests of the replicas the agent counts are a floor for it (a replica that
just started is counted even before the agent's next registration says so).

Scoring uses one more figure, as kube-scheduler does: a replica that requests nothing counts as
``SCORING_DEFAULT_CPU_MILLIS`` / ``SCORING_DEFAULT_MEMORY_BYTES`` when hosts are compared (never when
fit is decided), so replicas without requests still spread instead of all landing on the first host
(``HostView.cpu_scoring_used``).

Hosts are kept in the order of their ids' hashes (ties by id), so everything computed from a view is
independent of input order, and a run's sample of hosts is a slice of it (``placement.batch``).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from scheduler import model
from scheduler.model import HostId, ReplicaId, ReplicaPhase, ServiceName

# A label every host carries (unless its agent set it): the host id, so constraints and topology spread
# can name single hosts ("shoal.host!=h3", topology_spread {label: shoal.host}).
LABEL_HOST = "shoal.host"

# What a replica without requests counts as when hosts are scored (kube-scheduler's non-zero defaults).
SCORING_DEFAULT_CPU_MILLIS = 100
SCORING_DEFAULT_MEMORY_BYTES = 200 << 20

# Phases whose replicas the agent does not count yet when no report says otherwise (see module doc).
_NOT_STARTED = frozenset({ReplicaPhase.PENDING, ReplicaPhase.STARTING, ReplicaPhase.FAILED})

Port = tuple[int, str]  # (host port, protocol)
_T = TypeVar("_T")


def fixed_host_ports(facts: model.TemplateFacts) -> list[Port]:
    """The host ports a replica of this template needs free: those given in the template (0 = any)."""
    return [(p.host_port, p.protocol) for p in facts.ports if p.host_port]


def facts_of(replica: model.Replica, service: model.Service) -> model.TemplateFacts:
    """The template facts of the generation a replica runs (the current template when it is unknown)."""
    if replica.generation != service.template_generation:
        for old in service.history:
            if old.template_generation == replica.generation:
                return old.facts
    return service.spec.facts


def _short(counted: int, more: int, committed: int) -> int:
    """How much adding ``more`` to ``counted`` raises the shortfall of ``committed`` below it."""
    return max(0, counted + more - committed) - max(0, counted - committed)


class HostView:
    """One host as placement sees it. Only ``ClusterView.assume`` changes it once built.

    The figures plugins read on every evaluation are plain attributes kept current by ``add_replica``
    (a batch reads them hundreds of thousands of times; properties over the record would cost more than
    the decisions themselves).
    """

    __slots__ = (
        "cpu_allocatable", "cpu_committed", "cpu_counted", "cpu_placed", "cpu_scoring_used", "cpu_used", "id",
        "images", "key_hash", "labels", "memory_allocatable", "memory_committed", "memory_counted",
        "memory_placed", "memory_scoring_used", "memory_used", "name", "ports",
        "record", "replicas", "status",
    )

    def __init__(self, record: model.HostRecord, status: model.HostStatus, *, labels: dict[str, str],
                 images: frozenset[str] = frozenset(), ports: Iterable[Port] = ()) -> None:
        self.record = record
        self.status = status
        self.id: HostId = record.id
        self.name: str = record.name or record.id
        self.labels = labels
        self.images = images
        self.ports: set[Port] = set(ports)
        self.replicas: Counter[ServiceName] = Counter()  # of each service here, stopping ones excepted
        self.key_hash = zlib.crc32(record.id.encode())    # a stable hash of the id, for tie-breaks
        capacity = record.capacity
        self.cpu_allocatable = capacity.cpu_allocatable_millis
        self.memory_allocatable = capacity.memory_allocatable_bytes
        self.cpu_placed = 0       # requests of replicas placed here that the agent does not count yet
        self.memory_placed = 0
        self.cpu_counted = 0      # requests of replicas here the agent counts (their containers are live)
        self.memory_counted = 0
        self.cpu_committed = capacity.cpu_committed_millis
        self.memory_committed = capacity.memory_committed_bytes
        # Promised: the agent's committed requests (at least what its counted replicas request) plus
        # placed-not-started.
        self.cpu_used = self.cpu_committed
        self.memory_used = self.memory_committed
        # What scoring compares: used plus the scoring defaults of replicas here that request nothing.
        self.cpu_scoring_used = self.cpu_used
        self.memory_scoring_used = self.memory_used

    def copy(self) -> HostView:
        """A copy a batch may place on without changing this one. A batch changes a host only through
        ``ClusterView.assume`` (``add_replica`` and the port set): the figures are ints, rebound on the
        copy; the replica counter and the port set are the only containers changed in place, so they are
        copied; the rest (record, status, labels, images) is never changed once built."""
        twin = object.__new__(HostView)
        for name in _HOST_SLOTS:  # (copy.copy of a slotted object costs several times this)
            setattr(twin, name, getattr(self, name))
        twin.replicas = Counter(self.replicas)
        twin.ports = set(self.ports)
        return twin

    def with_capacity(self, record: model.HostRecord) -> HostView:
        """A copy for ``record``, which differs from this view's record only in its capacity (the agent's
        figures: its committed requests change as containers start and stop), without counting the
        replicas again. Exact: what is used is the larger of the committed figure and what the counted
        replicas request (``add_replica``'s floor), plus what is placed, so only that larger part moves."""
        twin = self.copy()
        twin.record = record
        capacity = record.capacity
        twin.cpu_allocatable = capacity.cpu_allocatable_millis
        twin.memory_allocatable = capacity.memory_allocatable_bytes
        cpu = max(capacity.cpu_committed_millis, self.cpu_counted) - max(self.cpu_committed, self.cpu_counted)
        memory = max(capacity.memory_committed_bytes, self.memory_counted) - max(self.memory_committed,
                                                                                self.memory_counted)
        twin.cpu_committed = capacity.cpu_committed_millis
        twin.memory_committed = capacity.memory_committed_bytes
        twin.cpu_used += cpu
        twin.cpu_scoring_used += cpu
        twin.memory_used += memory
        twin.memory_scoring_used += memory
        return twin

    def __repr__(self) -> str:
        return (f"HostView({self.id}, cpu {self.cpu_used}/{self.cpu_allocatable}, "
                f"memory {self.memory_used}/{self.memory_allocatable}, replicas {dict(self.replicas)})")

    @property
    def cpu_free(self) -> int:
        return self.cpu_allocatable - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory_allocatable - self.memory_used

    def add_replica(self, service: ServiceName, facts: model.TemplateFacts, *, not_started: bool) -> None:
        """Count one more replica here; ``not_started``: its requests are not in the agent's figures."""
        self.replicas[service] += 1
        if not not_started:
            # The agent's committed figure comes with its registration, which can lag the container
            # list by a few seconds: a replica whose container is already live may not be in it yet. So
            # what the replicas counted by the agent request is a floor for the committed figure.
            cpu_short = _short(self.cpu_counted, facts.cpu_millis, self.cpu_committed)
            memory_short = _short(self.memory_counted, facts.memory_bytes, self.memory_committed)
            self.cpu_counted += facts.cpu_millis
            self.memory_counted += facts.memory_bytes
            self.cpu_used += cpu_short
            self.memory_used += memory_short
            self.cpu_scoring_used += cpu_short
            self.memory_scoring_used += memory_short
        if not_started:
            self.cpu_placed += facts.cpu_millis
            self.memory_placed += facts.memory_bytes
            self.cpu_used += facts.cpu_millis
            self.memory_used += facts.memory_bytes
            self.cpu_scoring_used += facts.cpu_millis
            self.memory_scoring_used += facts.memory_bytes
        if not facts.cpu_millis:
            self.cpu_scoring_used += SCORING_DEFAULT_CPU_MILLIS
        if not facts.memory_bytes:
            self.memory_scoring_used += SCORING_DEFAULT_MEMORY_BYTES

    def remove_replica(self, service: ServiceName, facts: model.TemplateFacts, *, not_started: bool) -> None:
        """Undo ``add_replica`` of the same arguments, exactly: what it added is taken back (the floor's
        share is found again from the counted figures less this replica, as adding it back would find
        it). Only the view cache uses it, on a copy of a view it keeps; a batch never removes."""
        left = self.replicas[service] - 1
        if left:
            self.replicas[service] = left
        else:
            del self.replicas[service]
        if not not_started:
            self.cpu_counted -= facts.cpu_millis
            self.memory_counted -= facts.memory_bytes
            cpu_short = _short(self.cpu_counted, facts.cpu_millis, self.cpu_committed)
            memory_short = _short(self.memory_counted, facts.memory_bytes, self.memory_committed)
            self.cpu_used -= cpu_short
            self.memory_used -= memory_short
            self.cpu_scoring_used -= cpu_short
            self.memory_scoring_used -= memory_short
        else:
            self.cpu_placed -= facts.cpu_millis
            self.memory_placed -= facts.memory_bytes
            self.cpu_used -= facts.cpu_millis
            self.memory_used -= facts.memory_bytes
            self.cpu_scoring_used -= facts.cpu_millis
            self.memory_scoring_used -= facts.memory_bytes
        if not facts.cpu_millis:
            self.cpu_scoring_used -= SCORING_DEFAULT_CPU_MILLIS
        if not facts.memory_bytes:
            self.memory_scoring_used -= SCORING_DEFAULT_MEMORY_BYTES

    def load(self) -> float:
        """The larger of the cpu and memory fractions promised (0 when nothing is allocatable)."""
        cpu = self.cpu_used / self.cpu_allocatable if self.cpu_allocatable > 0 else 0.0
        memory = self.memory_used / self.memory_allocatable if self.memory_allocatable > 0 else 0.0
        return max(cpu, memory)


_HOST_SLOTS: tuple[str, ...] = tuple(HostView.__slots__)


class DomainCounts:
    """Replicas of one service per value of one label, over the domains a filter calls eligible.

    Kept for topology spread: ``minimum`` is the global minimum kube-scheduler's PodTopologySpread
    compares against (the fewest replicas in any eligible domain), maintained in O(1) per ``add`` with a
    histogram of the counts, because a batch adds one replica at a time.
    """

    def __init__(self, label: str, counts: Mapping[str, int]) -> None:
        self.label = label
        self.counts: dict[str, int] = dict(counts)
        self._histogram: dict[int, int] = {}  # count -> domains with that count
        for n in self.counts.values():
            self._histogram[n] = self._histogram.get(n, 0) + 1
        self.minimum = min(self.counts.values()) if self.counts else 0

    def count(self, domain: str) -> int:
        return self.counts.get(domain, 0)

    def add(self, domain: str) -> bool:
        """One more replica in ``domain``; True when that raised the minimum. A domain that is not
        eligible is not counted (no eligible host can be in it)."""
        counts, histogram = self.counts, self._histogram
        old = counts.get(domain)
        if old is None:
            return False
        counts[domain] = old + 1
        histogram[old + 1] = histogram.get(old + 1, 0) + 1
        left = histogram[old] - 1
        if left:
            histogram[old] = left
            return False
        del histogram[old]
        if old == self.minimum:
            self.minimum = old + 1
            return True
        return False


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each host is in a view, and which hosts hold replicas of each service (in any phase, stopping
    ones too: a superset of those counted on them), by index. What ``ClusterView`` finds from its hosts
    every time it is built (about half of building a view of 100,000 replicas on 5,000 hosts), kept by
    ``ViewCache`` between views: the order changes only when hosts come or go, the index only where a
    host's services did. Shared by the views given it, which never change it."""

    index: Mapping[HostId, int]
    service_hosts: Mapping[ServiceName, set[int]]


class ClusterView:
    """Every host (in the order of their ids' hashes), the services, the replicas known, and what batches
    placed since.

    Batches derive per-host answers from a view over and over (one pass per service). Two caches keep
    that cheap, both valid only because nothing but ``assume`` changes a view once built: ``memo`` for
    values from what batches never change, ``tracked`` for per-host values that ``assume`` changes only
    for the host it places on (recomputed for those hosts alone, from the log of changed hosts).

    ``shared``: the hosts' views belong to someone else (``ViewCache`` keeps them for the next pass), and
    ``assume`` places on a copy of a host, made the first time it places there: a pass that places on a
    few hundred hosts of 5,000 copies those, not all (docs/scaling.md, part 27). ``hosts`` and ``by_id``
    then hold the copy; a host's view taken from them earlier is the one before.
    """

    def __init__(self, hosts: list[HostView], services: Mapping[ServiceName, model.Service],
                 replicas: Mapping[ReplicaId, model.Replica], *, shared: bool = False,
                 layout: Layout | None = None) -> None:
        """``replicas`` is read, not copied: the caller does not change it while the view is in use.
        ``layout``: the hosts' order, indices and per-service index, kept by the caller (``ViewCache``)
        for these very ``hosts``; else found here."""
        # In the order of their ids' hashes, the order a run's sample takes them from its own starting
        # point (``placement.sampling``): a spread-out sample whatever the hosts are named, whose values
        # are slices of the view's columns.
        self._shared = shared
        self._copied: set[int] = set()  # hosts ``assume`` copied (``shared``): this view's own
        self._own_services: set[ServiceName] | None = None  # service sets ``assume`` copied (a layout's)
        if layout is None:
            self.hosts: list[HostView] = sorted(hosts, key=lambda h: (h.key_hash, h.id))
            self.index: Mapping[HostId, int] = {h.id: i for i, h in enumerate(self.hosts)}
            self._service_hosts: dict[ServiceName, set[int]] = {}
            for i, host in enumerate(self.hosts):
                for service in host.replicas:
                    self._service_hosts.setdefault(service, set()).add(i)
        else:
            self.hosts = hosts
            self.index = layout.index
            self._service_hosts = dict(layout.service_hosts)  # the sets shared until ``assume`` adds
            self._own_services = set()
        self.by_id: dict[HostId, HostView] = {h.id: h for h in self.hosts}
        self.services = dict(services)
        self.replicas = replicas
        self.assumed: dict[ReplicaId, HostId] = {}  # placed by batches on this view
        self.changes: list[int] = []                # indices of the hosts ``assume`` changed, in order
        self._memo: dict[Hashable, object] = {}
        self._tracked: dict[Hashable, tuple[int, list[Any]]] = {}
        self._asked: set[Hashable] = set()

    def memo(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """A value derived only from what batches never change (host records, statuses, labels, images),
        computed once per view: static filter answers, eligible hosts. ``key`` must name everything the
        value depends on besides those."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[return-value]

    def tracked(self, key: Hashable, every_host: Callable[[], list[_T]],
                one_host: Callable[[HostView], _T]) -> list[_T]:
        """A value per host (in host order) that depends only on that host, ``key`` naming everything
        else it depends on: computed for every host the first time, afterwards only for the hosts
        ``assume`` changed since the last call with this key. The list is shared and a later call
        updates it in place: do not change it, and copy what must keep this call's values."""
        values = self.known(key, one_host)
        if values is None:
            values = every_host()
            self._tracked[key] = (len(self.changes), values)
        return values

    def asked(self, key: Hashable) -> bool:
        """Whether ``key`` was asked about on this view before (and note that it now was)."""
        if key in self._asked:
            return True
        self._asked.add(key)
        return False

    def known(self, key: Hashable, one_host: Callable[[HostView], _T]) -> list[_T] | None:
        """What ``tracked`` holds for ``key``, brought up to date, or None when it holds nothing yet."""
        entry = self._tracked.get(key)
        if entry is None:
            return None
        seen, values = entry
        if seen < len(self.changes):
            hosts = self.hosts
            for i in set(self.changes[seen:]):
                values[i] = one_host(hosts[i])
            self._tracked[key] = (len(self.changes), values)
        return values

    def host(self, host_id: HostId) -> HostView:
        return self.by_id[host_id]

    def service_hosts(self, service: ServiceName) -> Collection[int]:
        """The indices of the hosts holding replicas of ``service`` (or that did: a superset), kept
        current by ``assume``. Do not change it."""
        return self._service_hosts.get(service, ())

    def host_of(self, replica: ReplicaId) -> HostId | None:
        """Where a replica is, as far as this view knows (placed by a batch or read with it)."""
        if replica in self.assumed:
            return self.assumed[replica]
        known = self.replicas.get(replica)
        return known.host if known is not None else None

    def assume(self, host_id: HostId, *, replica: ReplicaId, service: ServiceName,
               facts: model.TemplateFacts) -> None:
        """Count a replica placed on a host by a batch: its requests as placed-not-started, its fixed
        host ports as taken, and one more replica of its service there."""
        index = self.index[host_id]
        host = self.hosts[index]
        if self._shared and index not in self._copied:
            host = self.hosts[index] = self.by_id[host_id] = host.copy()
            self._copied.add(index)
        host.add_replica(service, facts, not_started=True)
        for port in facts.ports:
            if port.host_port:
                host.ports.add((port.host_port, port.protocol))
        self.assumed[replica] = host_id
        self.changes.append(index)
        own = self._own_services
        if own is not None and service not in own:
            own.add(service)
            self._service_hosts[service] = {*self._service_hosts.get(service, ()), index}
        else:
            self._service_hosts.setdefault(service, set()).add(index)

    def domain_counts(self, service: ServiceName, label: str, eligible: Callable[[HostView], bool],
                      eligible_key: Hashable = None) -> DomainCounts:
        """Replicas of ``service`` per value of ``label`` over the hosts ``eligible`` accepts (and that
        carry the label); a domain with an eligible host but no replica counts 0. With an
        ``eligible_key`` (naming what ``eligible`` depends on), the domains are found once per view and
        only the hosts holding replicas of the service are visited."""
        if eligible_key is None:
            domains = _eligible_domains(self.hosts, label, eligible)
        else:
            domains = self.memo(("view.domains", label, eligible_key),
                                lambda: _eligible_domains(self.hosts, label, eligible))
        counts = dict(domains)
        hosts = self.hosts
        for i in self._service_hosts.get(service, ()):
            host = hosts[i]
            value = host.labels.get(label)
            if value is not None and value in counts and eligible(host):
                counts[value] += host.replicas[service]
        return DomainCounts(label, counts)


def _eligible_domains(hosts: Iterable[HostView], label: str,
                      eligible: Callable[[HostView], bool]) -> dict[str, int]:
    return {host.labels[label]: 0 for host in hosts if label in host.labels and eligible(host)}


def host_view(record: model.HostRecord, status: model.HostStatus | None, replicas: Iterable[model.Replica],
              service_of: Mapping[ServiceName, model.Service], *, images: Iterable[str] = (),
              ports_in_use: Iterable[Port] = (), counted: Collection[ReplicaId] | None = None) -> HostView:
    """One host as placement sees it, from its record and status and the ``replicas`` on it (``build_view``
    says what the other arguments mean)."""
    labels = dict(record.labels)
    labels.setdefault(LABEL_HOST, record.id)
    view = HostView(record, status or model.HostStatus(record.id, reason="no status"), labels=labels,
                    ports=ports_in_use)
    running_images = set(images)
    for replica in replicas:
        image = count_replica(view, replica, service_of, counted)
        if image is not None:
            running_images.add(image)
    view.images = frozenset(running_images)
    return view


def count_replica(view: HostView, replica: model.Replica, service_of: Mapping[ServiceName, model.Service],
                  counted: Collection[ReplicaId] | None) -> str | None:
    """Count one replica on its host's view as ``host_view`` does (its ports, its requests); the image it
    adds to those the host runs, if any."""
    service = service_of.get(replica.service)
    facts = facts_of(replica, service) if service is not None else None
    for port in replica.ports:
        if port.host_port:
            view.ports.add((port.host_port, port.protocol))
    if facts is None:
        return None  # a replica of a service that is gone: nothing known beyond its ports
    view.ports.update(fixed_host_ports(facts))
    if replica.phase is ReplicaPhase.STOPPING:
        return None  # still in the agent's figures and holding its ports; leaving, so not counted
    view.add_replica(replica.service, facts, not_started=not_started(replica, counted))
    return facts.image if replica.phase is ReplicaPhase.RUNNING else None


def not_started(replica: model.Replica, counted: Collection[ReplicaId] | None) -> bool:
    """Whether a replica's requests are not in its agent's figures yet (the module doc)."""
    return (replica.id not in counted) if counted is not None else replica.phase in _NOT_STARTED


def by_host(replicas: Iterable[model.Replica], hosts: Iterable[HostId]) -> dict[HostId, list[model.Replica]]:
    """The replicas on each of ``hosts``, in the order given (those on other hosts or none are left out)."""
    on: dict[HostId, list[model.Replica]] = {h: [] for h in hosts}
    for replica in replicas:
        members = on.get(replica.host) if replica.host is not None else None
        if members is not None:
            members.append(replica)
    return on


def build_view(*, hosts: Iterable[model.HostRecord],
               statuses: Iterable[model.HostStatus] | Mapping[HostId, model.HostStatus],
               replicas: Iterable[model.Replica], services: Iterable[model.Service],
               images: Mapping[HostId, Iterable[str]] | None = None,
               ports_in_use: Mapping[HostId, Iterable[Port]] | None = None,
               counted_by_agent: Mapping[HostId, Collection[ReplicaId]] | None = None) -> ClusterView:
    """A view of the cluster from what the scheduler read.

    ``statuses``: a host without one is not ready. ``images``: images known to be on each host (those of
    its running replicas are added). ``ports_in_use``: host ports taken on each host by containers that
    are not replicas (the replicas' own are derived). ``counted_by_agent``: for a host, the replicas the
    agent's committed figures include (its containers holding a reservation), when the caller knows;
    otherwise the phase rule of the module doc applies. Replicas on hosts not in ``hosts`` are ignored.
    """
    status_of = dict(statuses) if isinstance(statuses, Mapping) else {s.id: s for s in statuses}
    service_of = {s.name: s for s in services}
    images = images or {}
    ports_in_use = ports_in_use or {}
    counted_by_agent = counted_by_agent or {}
    records = {r.id: r for r in hosts}
    known = {r.id: r for r in replicas}
    on = by_host(known.values(), records)
    views = [host_view(record, status_of.get(h), on[h], service_of, images=images.get(h, ()),
                       ports_in_use=ports_in_use.get(h, ()), counted=counted_by_agent.get(h))
             for h, record in records.items()]
    return ClusterView(views, service_of, known)


__all__ = [
    "LABEL_HOST", "SCORING_DEFAULT_CPU_MILLIS", "SCORING_DEFAULT_MEMORY_BYTES", "ClusterView",
    "DomainCounts", "HostView", "Layout", "Port", "build_view", "by_host", "count_replica", "facts_of",
    "fixed_host_ports", "host_view", "not_started",
]
