"""Every scheduler instance's own copy of the cluster in etcd, and consistent reads served from it.

``Follower`` reads one snapshot, then watches from its revision (a new snapshot after a compaction or a
failure), applying each change — decoded once, by the store's watch — to a ``ClusterState``: the records
plus the indexes the API's answers need (a service's replicas, a host's replicas, per-service counts kept
as replicas change), so ``get services`` counts without looking at any replica and ``get replicas
--service X`` touches only X's. The metrics publisher (``scheduler.metrics``) and the API
(``scheduler.server``) share the one follower, so a change is decoded once for both.

Reads are consistent the way Kubernetes serves consistent reads from its watch cache (KEP-2340): the
read asks etcd for its current revision (``Store.current_revision``, one small call), waits until the
follower has applied that revision, then answers from the state as it is — a read-only view, not a copy,
valid until the caller next awaits. So a write acknowledged before the read began is always in the
answer. The wait is bounded: when the follower is not synced, falls behind past the bound, or goes quiet
short of the revision (a revision with no change under the prefix: a scheduler instance's record, or
another prefix's keys, which the watch does not deliver), the read falls back to a snapshot as before,
counted in ``shoal_scheduler_consistent_read_fallbacks_total``; the follower adopts that snapshot when it
is newer, so the next read does not wait for the same revision again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.cancellation import raise_if_cancelling
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
from scheduler.store.errors import Compacted

log = logging.getLogger(__name__)

RESYNC_BACKOFF = (0.5, 30.0)  # first and longest wait before reading etcd again after a failure
READ_WAIT = 1.0   # longest wait for the follower to reach a read's revision before reading a snapshot
READ_QUIET = 0.1  # a follower that applies nothing for this long while a read waits is not coming
READ_LIMIT = 10.0  # longest wait, stalls of the event loop included (a call may give less)
FEED_LIMIT = 10_000  # changes queued for one API watch stream before it is cut off the feed


# -- the state and its indexes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplicaCounts:
    """What a service's status counts of its replicas (stopping ones are not counted); ``pending_reason``
    is the reason of its pending replica with the smallest id ("" when none is pending)."""

    replicas: int = 0
    ready: int = 0
    pending: int = 0
    failed: int = 0
    updated: int = 0   # of the service's template generation
    pending_reason: str = ""

    @staticmethod
    def of(replicas: Iterable[Replica], *, template_generation: int) -> ReplicaCounts:
        tally = _Tally()
        for replica in replicas:
            tally.add(replica, 1)
        return tally.counts(template_generation)


@dataclass
class _Tally:
    """Per-service counters, kept as replicas come and go (the follower's index behind ``counts``)."""

    replicas: int = 0
    ready: int = 0
    failed: int = 0
    pending: dict[ReplicaId, str] = field(default_factory=dict)  # id → reason
    generations: dict[int, int] = field(default_factory=dict)

    def add(self, replica: Replica, sign: int) -> None:
        if replica.phase is ReplicaPhase.STOPPING:
            return
        self.replicas += sign
        self.ready += sign * replica.ready
        self.failed += sign * (replica.phase is ReplicaPhase.FAILED)
        if replica.phase is ReplicaPhase.PENDING:
            if sign > 0:
                self.pending[replica.id] = replica.reason
            else:
                self.pending.pop(replica.id, None)
        left = self.generations.get(replica.generation, 0) + sign
        if left:
            self.generations[replica.generation] = left
        else:
            self.generations.pop(replica.generation, None)

    def counts(self, template_generation: int) -> ReplicaCounts:
        reason = self.pending[min(self.pending)] if self.pending else ""
        return ReplicaCounts(replicas=self.replicas, ready=self.ready, pending=len(self.pending),
                             failed=self.failed, updated=self.generations.get(template_generation, 0),
                             pending_reason=reason)

    @property
    def empty(self) -> bool:
        return not self.replicas and not self.generations


class ClusterState:
    """The records under the prefix as of ``revision``, with indexes; changed only by ``apply`` (its
    owner's). Readers treat every mapping as read-only and use it before they next await."""

    def __init__(self, snap: base.Snapshot) -> None:
        self.revision = snap.revision
        self.services: dict[ServiceName, Service] = dict(snap.services)
        self.replicas: dict[ReplicaId, Replica] = {}
        self.hosts: dict[HostId, HostRecord] = dict(snap.hosts)
        self.statuses: dict[HostId, HostStatus] = dict(snap.host_statuses)
        self.autoscale: dict[ServiceName, AutoscaleStatus] = dict(snap.autoscale)
        self.hostgroups: dict[GroupName, HostGroup] = dict(snap.hostgroups)
        self.hostgroup_statuses: dict[GroupName, HostGroupStatus] = dict(snap.hostgroup_statuses)
        self.corrupt: dict[str, str] = {entry.key: entry.reason for entry in snap.corrupt}
        self._by_service: dict[str, dict[ReplicaId, Replica]] = {}
        self._by_host: dict[str, dict[ReplicaId, Replica]] = {}
        self._tallies: dict[str, _Tally] = {}
        for replica in snap.replicas.values():
            self._add_replica(replica)
        self._tables: dict[type, dict[Any, Any]] = {
            Service: self.services, HostRecord: self.hosts, HostStatus: self.statuses,
            AutoscaleStatus: self.autoscale, HostGroup: self.hostgroups,
            HostGroupStatus: self.hostgroup_statuses}

    # -- reading ------------------------------------------------------------------------------------

    def replicas_of(self, service: str) -> Mapping[ReplicaId, Replica]:
        return self._by_service.get(service, {})

    def replicas_on(self, host: str) -> Mapping[ReplicaId, Replica]:
        """Every replica recorded on ``host``, stopping ones included (``api.replicas_on``)."""
        return self._by_host.get(host, {})

    def counts(self, service: Service) -> ReplicaCounts:
        tally = self._tallies.get(service.name)
        return tally.counts(service.template_generation) if tally is not None else ReplicaCounts()

    def view(self) -> base.Snapshot:
        """The state as a ``Snapshot`` over the live mappings (nothing copied: read it before the next
        await)."""
        return base.Snapshot(revision=self.revision, services=self.services, replicas=self.replicas,
                             hosts=self.hosts, host_statuses=self.statuses, autoscale=self.autoscale,
                             hostgroups=self.hostgroups, hostgroup_statuses=self.hostgroup_statuses,
                             corrupt=self._corrupt_entries())

    def copy(self) -> base.Snapshot:
        """The state as a ``Snapshot`` of its own (what the metrics publisher hands to other threads)."""
        return base.Snapshot(
            revision=self.revision, services=dict(self.services), replicas=dict(self.replicas),
            hosts=dict(self.hosts), host_statuses=dict(self.statuses), autoscale=dict(self.autoscale),
            hostgroups=dict(self.hostgroups), hostgroup_statuses=dict(self.hostgroup_statuses),
            corrupt=self._corrupt_entries())

    def indexes(self) -> tuple[Any, ...]:
        """The indexes as plain values, for tests comparing a followed state with a fresh build."""
        return ({s: dict(r) for s, r in self._by_service.items()},
                {h: dict(r) for h, r in self._by_host.items()},
                {s: (t.replicas, t.ready, t.failed, dict(t.pending), dict(t.generations))
                 for s, t in self._tallies.items()})

    def _corrupt_entries(self) -> tuple[base.CorruptEntry, ...]:
        return tuple(base.CorruptEntry(key, reason) for key, reason in sorted(self.corrupt.items()))

    # -- changing -----------------------------------------------------------------------------------

    def apply(self, change: base.Change) -> None:
        """One watched change. Changes before ``revision`` are already in (a watch older than an adopted
        snapshot) and are skipped: re-applying a put deleted later would bring it back. Those *at*
        ``revision`` are applied: a transaction's changes share its revision, and applying again one
        already in changes nothing (a transaction writes a key at most once)."""
        if change.revision < self.revision:
            return
        self.revision = change.revision
        if change.kind is base.ChangeKind.PUT and change.value is None:
            self.corrupt[change.key] = change.error or "undecodable"
        else:
            self.corrupt.pop(change.key, None)
        if not change.ids:
            return
        key, value = change.ids[-1], change.value  # a put that did not decode is left out, as a snapshot does
        if change.record_type is Replica:
            known = self.replicas.get(ReplicaId(key))
            if known is not None:
                self._drop_replica(known)
            if isinstance(value, Replica):
                self._add_replica(value)
            return
        table = self._tables.get(change.record_type)
        if table is None:
            return
        if change.kind is base.ChangeKind.PUT and value is not None:
            table[key] = value
        else:
            table.pop(key, None)

    def _add_replica(self, replica: Replica) -> None:
        self.replicas[replica.id] = replica
        self._by_service.setdefault(replica.service, {})[replica.id] = replica
        if replica.host is not None:
            self._by_host.setdefault(replica.host, {})[replica.id] = replica
        self._tallies.setdefault(replica.service, _Tally()).add(replica, 1)

    def _drop_replica(self, replica: Replica) -> None:
        del self.replicas[replica.id]
        _unindex(self._by_service, replica.service, replica.id)
        if replica.host is not None:
            _unindex(self._by_host, replica.host, replica.id)
        tally = self._tallies[replica.service]
        tally.add(replica, -1)
        if tally.empty:
            del self._tallies[replica.service]


def _unindex(index: dict[str, dict[ReplicaId, Replica]], key: str, replica: ReplicaId) -> None:
    members = index.get(key)
    if members is None:
        return
    members.pop(replica, None)
    if not members:
        del index[key]


# -- reads ------------------------------------------------------------------------------------------------

class ClusterReads(Protocol):
    """Where the API reads the cluster: ``read`` returns a state at least as new as etcd was when the call
    began (``timeout``: the most the call may spend waiting for a follower; None: the default).
    ``current`` returns the state as held now, without waiting for etcd: for answers built around records
    the call itself just wrote, which take only their replica counts from it (a write's own answer must not
    queue behind a busy leader's backlog: docs/scaling.md, part 6).
    ``subscribe(after)``, called before the caller next awaits, is a feed of the changes after ``after``
    (None when there is none to give: the caller watches the store itself). ``held()`` is the state held
    now if it follows etcd, else None, and never reads the store: for callers that check what they read
    with a compare-and-swap anyway (registration), where a snapshot of all of etcd would cost far more
    than the read it saves."""

    async def read(self, *, timeout: float | None = None) -> ClusterState: ...

    async def current(self) -> ClusterState: ...

    def held(self) -> ClusterState | None: ...

    def subscribe(self, after: int) -> ChangeFeed | None: ...


class ChangeFeed:
    """The changes a follower receives after a revision, already decoded, for one consumer — an API watch
    stream, or the leader's controller (so a change is decoded once however many consumers there are).
    The follower cuts a feed off — ``get`` returns None — when its state is read again (a compaction or
    a failure: the changes in between were never delivered) or when a bounded feed falls ``FEED_LIMIT``
    changes behind; only ever between two revisions, so the consumer resumes a watch of the store after
    the last revision it got, whole."""

    def __init__(self, owner: Follower, after: int, *, unbounded: bool = False) -> None:
        self._owner = owner
        self._limit = None if unbounded else FEED_LIMIT
        self.last_offered = after
        self._queue: asyncio.Queue[base.Change | None] = asyncio.Queue()
        self.cut = False

    async def get(self) -> base.Change | None:
        return await self._queue.get()

    def offer(self, change: base.Change) -> None:
        if self.cut:
            return
        if (self._limit is not None and change.revision > self.last_offered
                and self._queue.qsize() >= self._limit):
            self.end()
            return
        self.last_offered = max(self.last_offered, change.revision)
        self._queue.put_nowait(change)

    def end(self) -> None:
        if not self.cut:
            self.cut = True
            self._queue.put_nowait(None)
            self._owner.unsubscribe(self)


class SnapshotReads:
    """Reads that decode a whole snapshot each time (what the API did before the follower; kept for
    servers run without one, such as tests of single calls)."""

    def __init__(self, store: base.Store) -> None:
        self.store = store

    async def read(self, *, timeout: float | None = None) -> ClusterState:
        return ClusterState(await self.store.snapshot())

    async def current(self) -> ClusterState:
        return await self.read()

    def held(self) -> ClusterState | None:
        return None

    def subscribe(self, after: int) -> ChangeFeed | None:
        return None


class Follower:
    """The follower (see the module docstring); ``run`` follows etcd, ``read`` serves consistent reads.
    Both on the event loop only. ``on_resync`` is called for every full re-read after the first,
    ``on_fallback(reason)`` for every read served from a snapshot ("not_synced", "behind", "quiet")."""

    def __init__(self, store: base.Store, *, on_resync: Callable[[], None] = lambda: None,
                 on_fallback: Callable[[str], None] = lambda reason: None,
                 read_wait: float = READ_WAIT, read_quiet: float = READ_QUIET) -> None:
        self.store = store
        self.on_resync = on_resync
        self.on_fallback = on_fallback
        self.read_wait = read_wait
        self.read_quiet = read_quiet
        self.state: ClusterState | None = None
        self.version = 0      # bumped on every change, so the metrics publisher knows when to copy
        self._synced = asyncio.Event()  # set while the state follows etcd (``synced``)
        self._backoff = RESYNC_BACKOFF[0]
        self._failing = False
        self._applied = asyncio.Event()  # replaced after every change while reads wait (a pulse)
        self._waiting = 0
        self._feeds: set[ChangeFeed] = set()
        self._received = 0  # the revision of the last change the running watch delivered

    @property
    def synced(self) -> bool:
        """The state follows etcd: a snapshot was read and its watch runs."""
        return self._synced.is_set()

    @synced.setter
    def synced(self, value: bool) -> None:
        if value:
            self._synced.set()
        else:
            self._synced.clear()

    async def wait_synced(self, timeout: float) -> bool:
        """Whether the follower is synced, waiting at most ``timeout`` seconds for it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._synced.wait()
        return self.synced

    # -- following ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Compacted:
                log.info("follower: etcd compacted the watched history; reading the cluster again")
                self.synced = False
            except Exception as err:  # following must never take the scheduler down
                raise_if_cancelling()
                self.synced = False
                if not self._failing:
                    log.warning("follower: cannot follow etcd (%s); reads fall back to snapshots, retrying",
                                err)
                self._failing = True
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, RESYNC_BACKOFF[1])
            else:  # the watch ended by itself: read again, not in a tight loop
                self.synced = False
                await asyncio.sleep(self._backoff)

    async def _follow(self) -> None:
        snap = await self.store.snapshot()
        if self.state is not None:
            self.on_resync()
        if self._failing:
            log.info("follower: following etcd again (revision %d)", snap.revision)
        self._backoff, self._failing = RESYNC_BACKOFF[0], False
        self._install(ClusterState(snap))
        self._received = snap.revision
        self.synced = True
        try:
            async with contextlib.aclosing(self.store.watch(snap.revision)) as changes:
                async for change in changes:
                    state = self.state  # may have been replaced by an adopted snapshot meanwhile
                    assert state is not None
                    state.apply(change)
                    self._received = change.revision
                    for feed in list(self._feeds):  # every change, also those an adopted snapshot holds
                        feed.offer(change)
                    self.version += 1
                    self._pulse()
        finally:  # whatever ends this watch, the feeds' streams go on from the store
            self._cut_feeds()

    def _install(self, state: ClusterState) -> None:
        self.state = state
        self.version += 1
        self._pulse()

    def _pulse(self) -> None:
        if self._waiting:
            self._applied.set()
            self._applied = asyncio.Event()

    def subscribe(self, after: int, *, unbounded: bool = False) -> ChangeFeed | None:
        """A feed of the changes after ``after``: only when this follower's watch has delivered exactly up
        to it (``after`` is the revision of the state just read from it), else None. An ``unbounded`` feed is
        never cut off for being behind: the leader's controller must see every change, and its queue
        drains after each pass."""
        if not self.synced or after != self._received:
            return None
        feed = ChangeFeed(self, after, unbounded=unbounded)
        self._feeds.add(feed)
        return feed

    async def attach(self, *, wait: float) -> tuple[ClusterState, ChangeFeed] | None:
        """The state and an unbounded feed of the changes right after it, for the leader's controller;
        None when not synced. The state is as new as etcd's current revision if the watch brings that
        within ``wait``, else as it is: unlike an API read, the controller needs a state and the
        changes that follow it, not one as new as the call (each of its writes is revision-guarded)."""
        if not self.synced:
            return None
        target = await self.store.current_revision()
        await self._wait_for(target, wait)
        state = self.state
        if not self.synced or state is None or state.revision != self._received:
            return None  # an adopted snapshot is ahead of the watch: the feed would not start at it
        feed = self.subscribe(state.revision, unbounded=True)
        return (state, feed) if feed is not None else None

    def unsubscribe(self, feed: ChangeFeed) -> None:
        self._feeds.discard(feed)

    def _cut_feeds(self) -> None:
        for feed in list(self._feeds):
            feed.end()

    def adopt(self, snap: base.Snapshot) -> None:
        """A snapshot read by a fallback: when newer than the state, it becomes the state (the watch goes
        on; changes it already holds are skipped)."""
        if self.synced and self.state is not None and snap.revision > self.state.revision:
            self._install(ClusterState(snap))

    # -- reading ------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """How many reads wait for the follower now."""
        return self._waiting

    async def read(self, *, timeout: float | None = None) -> ClusterState:
        if not self.synced or self.state is None:
            return await self._fallback("not_synced")
        target = await self.store.current_revision()
        wait = self.read_wait if timeout is None else max(0.0, min(self.read_wait, timeout))
        limit = READ_LIMIT if timeout is None else max(0.0, min(READ_LIMIT, timeout))
        reason = await self._wait_for(target, wait, limit=max(wait, limit))
        if reason is None and self.state is not None:
            return self.state
        return await self._fallback(reason or "not_synced")

    async def current(self) -> ClusterState:
        if not self.synced or self.state is None:
            return await self._fallback("not_synced")
        return self.state

    def held(self) -> ClusterState | None:
        return self.state if self.synced else None

    async def _wait_for(self, target: int, wait: float, *, limit: float | None = None) -> str | None:
        """None once the state holds ``target``; else why it will not soon. ``wait`` and the quiet bound
        count only the time the event loop was free to run the follower: a wake-up more than
        ``read_quiet`` late means the loop was busy elsewhere (a long pass, a collection), when the
        follower could apply nothing either, and reading a snapshot of all of etcd instead would stall the
        loop longer still (at 5,000 hosts, seconds per fallback). ``limit`` bounds the whole wait, stalls
        included (``wait`` when not given)."""
        loop = asyncio.get_running_loop()
        hard = loop.time() + (wait if limit is None else limit)
        left = wait  # of the wait, time the loop was free
        self._waiting += 1
        try:
            while True:
                state = self.state
                if not self.synced or state is None:
                    return "not_synced"
                if state.revision >= target:
                    return None
                now = loop.time()
                if left <= 0 or now >= hard:
                    return "behind"
                step = min(self.read_quiet, left, hard - now)
                pulse = self._applied
                try:
                    async with asyncio.timeout(step):
                        await pulse.wait()
                except TimeoutError:
                    pass
                elapsed = loop.time() - now
                stalled = elapsed > step + self.read_quiet
                left -= min(elapsed, step) if stalled else elapsed
                if not pulse.is_set() and not stalled:
                    return "quiet" if left > 0 else "behind"
        finally:
            self._waiting -= 1

    async def _fallback(self, reason: str) -> ClusterState:
        self.on_fallback(reason)
        snap = await self.store.snapshot()
        self.adopt(snap)
        state = self.state
        if state is not None and state.revision == snap.revision:
            return state
        return ClusterState(snap)


__all__ = ["FEED_LIMIT", "READ_QUIET", "READ_WAIT", "ChangeFeed", "ClusterReads", "ClusterState", "Follower",
           "ReplicaCounts", "SnapshotReads"]
