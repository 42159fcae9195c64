"""The leader's mirror of etcd: the records, indexes kept as they change, and what changed since a pass.

The controller (``scheduler.controller``) loads a ``Mirror`` from a snapshot and applies every watched
change to it, and its own committed writes at once. Beside the tables it keeps what would otherwise be
regrouped from every replica on every pass — the replicas of each service and of each host, the ids of
pending and failed ones — updated on each change; and the *dirt*: the services and hosts a change
touched since the controller last took it (``take_dirt``), which scopes the next reconcile pass
(``reconcile.Scope``). A change dirties:

* a service record: that service;
* a replica record: its service, and its host before and after (their containers' owners changed);
* a host record or status: the host, wholly (every replica on it may be decided differently) — unless
  the record changed only in what no pass reads (``host_as_read``).

``apply`` answers whether a watched change could change a pass's decisions, so the controller wakes a
pass only then: the echo of its own writes, a host re-registering with nothing new but the time, and the
records only the autoscaler and the elastic loop read wake nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from scheduler.model import (
    AutoscaleStatus,
    GroupName,
    HostGroup,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
)
from scheduler.store import base
from scheduler.store.errors import Conflict

# What a reconcile pass reads of the state in etcd; the autoscaler's and the elastic loop's records are
# read by their own loops, on their own clocks.
PASS_READS = (Service, Replica, HostRecord, HostStatus)


@dataclass
class Dirt:
    """What changed since the controller last looked: services, hosts wholly, and containers whose owner
    may have changed (orphans)."""

    services: set[ServiceName] = field(default_factory=set)
    hosts: set[HostId] = field(default_factory=set)      # everything on them
    # (host, container id): the container, or its replica's record, changed there. An orphan is a
    # container no replica on its host owns, so only these (and whole hosts) can have become one.
    touched: set[tuple[HostId, str]] = field(default_factory=set)
    replicas: set[ReplicaId] = field(default_factory=set)              # their records or containers
    service_records: set[ServiceName] = field(default_factory=set)     # the services' own records

    def host(self, host: HostId | None) -> None:
        if host is not None:
            self.hosts.add(host)

    def replica(self, replica: Replica) -> None:
        self.services.add(replica.service)
        self.replicas.add(replica.id)
        if replica.host is not None:
            self.touched.add((replica.host, replica.id))


@dataclass
class Mirror:
    """The state in etcd as of ``revision`` (plus this leader's own writes), indexed."""

    revision: int
    services: dict[ServiceName, Service] = field(default_factory=dict)
    replicas: dict[ReplicaId, Replica] = field(default_factory=dict)
    hosts: dict[HostId, HostRecord] = field(default_factory=dict)
    statuses: dict[HostId, HostStatus] = field(default_factory=dict)
    autoscale: dict[ServiceName, AutoscaleStatus] = field(default_factory=dict)
    hostgroups: dict[GroupName, HostGroup] = field(default_factory=dict)
    hostgroup_statuses: dict[GroupName, HostGroupStatus] = field(default_factory=dict)
    # Indexes of ``replicas``, kept by ``put`` and ``drop``: read them, never change them.
    by_service: dict[ServiceName, set[ReplicaId]] = field(default_factory=dict)
    by_host: dict[HostId, set[ReplicaId]] = field(default_factory=dict)
    pending: set[ReplicaId] = field(default_factory=set)
    failed: set[ReplicaId] = field(default_factory=set)
    dirt: Dirt = field(default_factory=Dirt)
    # Records dropped before the watch brought their delete: (type, key) -> the revision dropped. The
    # watch, when behind, still brings puts made before the delete; one at or before that revision is
    # not put back (``apply``). Emptied as the deletes arrive.
    gone: dict[tuple[type, Any], int] = field(default_factory=dict)
    # Hosts whose record or status was put or dropped since the controller last took them, even by a put
    # no pass reads (a registration with nothing new): what it keeps of each host between passes is
    # worked out again for these alone (``Controller._host_facts``).
    hosts_changed: set[HostId] = field(default_factory=set)

    def __post_init__(self) -> None:
        for replica in self.replicas.values():
            self._index(None, replica)
        self.dirt = Dirt()

    @classmethod
    def of(cls, snap: base.Snapshot) -> Mirror:
        return cls(revision=snap.revision, services=dict(snap.services), replicas=dict(snap.replicas),
                   hosts=dict(snap.hosts), statuses=dict(snap.host_statuses), autoscale=dict(snap.autoscale),
                   hostgroups=dict(snap.hostgroups), hostgroup_statuses=dict(snap.hostgroup_statuses))

    def take_hosts_changed(self) -> set[HostId]:
        """The hosts whose record or status changed since the last call."""
        changed, self.hosts_changed = self.hosts_changed, set()
        return changed

    def take_dirt(self) -> Dirt:
        """What changed since the last call."""
        dirt, self.dirt = self.dirt, Dirt()
        return dirt

    def _table(self, record_type: type) -> dict[Any, Any] | None:
        tables: dict[type, dict[Any, Any]] = {Service: self.services, Replica: self.replicas,
                                              HostRecord: self.hosts, HostStatus: self.statuses,
                                              AutoscaleStatus: self.autoscale, HostGroup: self.hostgroups,
                                              HostGroupStatus: self.hostgroup_statuses}
        return tables.get(record_type)

    def put(self, record: object) -> None:
        """A record as written (by anyone): kept unless the mirror holds a newer revision."""
        table = self._table(type(record))
        if table is None:
            return
        key = record_key(record)
        if self._before_drop(type(record), key, record.revision):  # type: ignore[attr-defined]
            return
        known = table.get(key)
        if known is not None:
            revision = record.revision  # type: ignore[attr-defined]
            if known.revision > revision:
                return
            if known.revision == revision and known is not record and known == record:
                # This write's echo came first (the watch can bring it before the commit replies): keep
                # that object, which the follower holds too, so the leader keeps one per record.
                record = known
        table[key] = record
        self._changed(known, record)

    def _before_drop(self, record_type: type, key: Any, revision: int) -> bool:
        """Whether a put at ``revision`` was made before a delete this mirror already holds (``gone``): a
        watch behind still brings those, and put back, a pass decided from one would delete it again and
        conflict on it as absent (docs/scaling.md, part 33). A later one (the key made again) forgets
        the delete."""
        if not self.gone or (dropped := self.gone.get((record_type, key))) is None:
            return False
        if revision <= dropped:
            return True
        del self.gone[(record_type, key)]
        return False

    def drop(self, record: object) -> None:
        """A record deleted (by this leader: the watch's delete follows and finds it gone) as of the revision
        it was read at: one this mirror holds at a later revision (made again since, by its name) stays."""
        table = self._table(type(record))
        if table is not None:
            key = record_key(record)
            known = table.get(key)
            if known is not None and known.revision <= record.revision:  # type: ignore[attr-defined]
                del table[key]
                self.gone[(type(record), key)] = known.revision
                self._changed(known, None)

    def learn(self, conflict: Conflict) -> int:
        """What a failed compare-and-swap read of the keys it met (``KeyConflict.current``), kept as the
        watch's changes would be: a record etcd holds put unless this mirror holds a newer one, a record
        etcd no longer holds dropped. The number of keys that changed this mirror. A watch running
        behind brings these changes late: a pass that waited for it wrote the same keys from the same
        old revisions and conflicted again (docs/scaling.md, part 33)."""
        learned = 0
        for c in conflict.conflicts:
            record = c.current if c.current is not None else c.written if c.actual == 0 else None
            table = self._table(type(record))
            if record is None or table is None:
                continue  # a key holding what is not a record: the watch says so
            known = table.get(record_key(record))
            if c.current is not None:
                if known is None or known.revision < c.actual:
                    self.put(record)
                    learned += 1
            elif known is not None and known.revision <= c.expected:
                self.drop(known)  # deleted since the revision the writer read: not one made later
                learned += 1
        return learned

    def apply(self, change: base.Change) -> bool:
        """Apply a watched change; whether it could change what a reconcile pass decides."""
        self.revision = max(self.revision, change.revision)
        table = self._table(change.record_type)
        if table is None:
            return False
        if change.kind is base.ChangeKind.PUT and change.value is not None:
            record = change.value
            if self._before_drop(change.record_type, record_key(record), change.revision):
                return False
            known = table.get(record_key(record))
            if known is not None and known.revision >= change.revision:
                # This leader's own write, applied when it committed: seen by its passes. The echo is
                # the follower's decode of the same record, which the follower keeps: holding it instead
                # of the written copy keeps one object per record in the leader, not two (at 100,000
                # replicas, ~65 MiB; docs/scaling.md, part 6).
                if known.revision == change.revision and known is not record and known == record:
                    table[record_key(record)] = record
                return False
            self.put(record)
            return reads(known, record)
        if change.ids:
            key = change.ids[-1]
            if self.gone:
                self.gone.pop((change.record_type, key), None)  # the delete arrived
            known = table.get(key)
            if known is not None and known.revision < change.revision:
                del table[key]
                self._changed(known, None)
                return reads(known, None)
        return False

    def _changed(self, before: Any, after: Any) -> None:
        if isinstance(before, Replica) or isinstance(after, Replica):
            self._index(before, after)
            for replica in (before, after):
                if replica is not None:
                    self.dirt.replica(replica)
        elif isinstance(before, Service) or isinstance(after, Service):
            self.dirt.services.add((after or before).name)
            self.dirt.service_records.add((after or before).name)
        elif isinstance(before, HostRecord) or isinstance(after, HostRecord):
            host = (after or before).id
            self.hosts_changed.add(host)
            if reads(before, after):
                self.dirt.host(host)
        elif isinstance(before, HostStatus) or isinstance(after, HostStatus):
            host = (after or before).id
            self.hosts_changed.add(host)
            self.dirt.host(host)

    def _index(self, before: Replica | None, after: Replica | None) -> None:
        if before is not None:
            _discard(self.by_service, before.service, before.id)
            _discard(self.by_host, before.host, before.id)
            self.pending.discard(before.id)
            self.failed.discard(before.id)
        if after is not None:
            self.by_service.setdefault(after.service, set()).add(after.id)
            if after.host is not None:
                self.by_host.setdefault(after.host, set()).add(after.id)
            if after.phase is ReplicaPhase.PENDING:
                self.pending.add(after.id)
            elif after.phase is ReplicaPhase.FAILED:
                self.failed.add(after.id)


def _discard(index: dict[Any, set[ReplicaId]], key: Any, rid: ReplicaId) -> None:
    if key is None:
        return
    ids = index.get(key)
    if ids is not None:
        ids.discard(rid)
        if not ids:
            del index[key]


def record_key(record: object) -> Any:
    """The key a record is kept under in its table."""
    if isinstance(record, Service):
        return record.name
    if isinstance(record, AutoscaleStatus):
        return record.service
    if isinstance(record, HostGroup):
        return record.spec.name
    if isinstance(record, HostGroupStatus):
        return record.group
    return record.id  # type: ignore[attr-defined]


def reads(before: object | None, after: object | None) -> bool:
    """Whether a pass could decide differently after a record went from ``before`` to ``after``.

    A host re-registering with nothing new but the time (and the use figures its agent streams every
    second anyway) is rewritten in etcd at least every ``REGISTRATION_REWRITE`` seconds: at 5,000 hosts
    that was 80 passes a second deciding nothing (docs/scaling.md)."""
    record = after if after is not None else before
    if not isinstance(record, PASS_READS):
        return False
    if isinstance(before, HostRecord) and isinstance(after, HostRecord):
        return host_as_read(before) != host_as_read(after)
    return True


def host_as_read(record: HostRecord) -> HostRecord:
    """A host record without what no pass reads: the registration's time, its raw report, its revision,
    and the use figures (a pass takes room from the agent's usage stream, ``Controller._fresh``)."""
    capacity = replace(record.capacity, cpu_committed_millis=0, memory_committed_bytes=0, disk_free_bytes=0)
    return replace(record, capacity=capacity, last_registered_at=0.0, info_json="", revision=0)


__all__ = ["PASS_READS", "Dirt", "Mirror", "host_as_read", "reads", "record_key"]
