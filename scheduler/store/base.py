"""The ``Store`` interface: the scheduler's state in etcd as typed records with revisions.

Callers are the API server (reads, and writes of services and host records), the leader's control loops
(snapshot → decide → commit a batch, under the leader guard; list + watch to follow changes) and the
election (leases and the leader key). Implementations: ``scheduler.store.etcd.EtcdStore`` (etcd v3 through
aetcd) and ``scheduler.store.memory.MemoryStore`` (in-process, same semantics, for tests of the code above
the store); ``tests/conformance/test_store.py`` holds both to the contract written here.

Semantics, as etcd defines them:

* One global revision counter: every transaction that writes bumps it once, and all its writes carry that
  revision as their mod revision. A record read from the store has ``revision`` = its key's mod revision.
* Every write is a compare-and-swap on that revision. ``Put(record)`` expects the key at
  ``record.revision`` (0 = the key must not exist); ``Delete(record)`` likewise (never 0). ``commit``
  splits a batch, in order, into transactions of at most ``MAX_TXN_OPS`` operations (etcd's default
  ``--max-txn-ops``; 127 with a guard, whose comparison takes the 128th slot) and ``MAX_TXN_BYTES``
  (under etcd's ``--max-request-bytes``: large records go fewer at a time); each transaction is atomic,
  and a failure stops the batch (see ``scheduler.store.errors`` for ``applied``). ``in_flight=N`` lets
  up to N of a batch's transactions be in flight at once (those after a failed one may land too);
  ``on_landed`` hears each transaction's revision and records as it lands, even when a later one fails. A
  conflict raises ``Conflict`` naming the keys; the caller re-reads and recomputes. A transaction whose
  reply was lost is retried, and recognised as applied when every key it wrote holds its bytes at one
  revision.
* ``guard=LeaderGuard(epoch)`` adds "the leader key's create revision is ``epoch``" to every transaction;
  when it fails the batch raises ``NotLeader`` (checked before conflicts), so a deposed leader's writes
  never land.
* ``snapshot()`` reads everything under the prefix at one revision; ``list`` one range, also at one
  revision; ``get`` one key.
* ``watch(after_revision)`` yields every change with a revision greater than ``after_revision``, in
  revision order, each exactly once, resuming by itself after a broken stream or a failed etcd member
  (the etcd implementation raises ``StoreUnavailable`` only after failing continuously for its
  ``watch_retry_s``). When the history after ``after_revision`` was compacted it raises ``Compacted``:
  take a snapshot and watch from its revision. Close it with ``contextlib.aclosing`` (or by breaking out of
  ``async for`` and letting the generator be collected).
* Leases: ``grant_lease`` / ``refresh_lease`` (returns the remaining TTL, ``LeaseExpired`` when gone) /
  ``revoke_lease`` (deletes what is attached; idempotent). ``campaign`` creates the leader key with the
  lease if it is absent, and returns whoever holds it afterwards (``.lease`` tells whether it is us).

Bounded: every call gives up with ``StoreUnavailable`` after the implementation's retry deadline; nothing
waits forever on an unreachable etcd.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from scheduler import model
from scheduler.evolve import evolve
from scheduler.store.keys import KeyRange, KeyRef, KeySchema, R
from scheduler.store.records import LeaderRecord, Record

T = TypeVar("T")

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops (comparisons, success ops and failure ops, each)
# etcd's default --max-request-bytes is 1.5 MiB; a transaction is kept under 1 MiB, leaving room for framing.
MAX_TXN_BYTES = 1 << 20


@dataclass(frozen=True)
class Put:
    """Write ``record`` at its key if the key is at ``expected`` (default ``record.revision``; 0 = absent),
    attached to ``lease`` if non-zero (the key goes when the lease does; a lease that is gone fails the
    batch with ``LeaseExpired``)."""

    record: Record
    expected: int | None = None
    lease: int = 0

    @property
    def expected_revision(self) -> int:
        return self.record.revision if self.expected is None else self.expected


@dataclass(frozen=True)
class Delete:
    """Delete ``record``'s key if it is at ``expected`` (default ``record.revision``, which must be > 0)."""

    record: Record
    expected: int | None = None

    @property
    def expected_revision(self) -> int:
        return self.record.revision if self.expected is None else self.expected


Op = Put | Delete

# Called as each transaction of a commit lands, with its revision and the records it put (as given: each
# now has that revision): the leader launches a replica once its record is in etcd, not once the whole
# pass's batch is, and records what its hosts report of it while the rest is in flight.
Landed = Callable[[int, tuple[Record, ...]], None]


@dataclass(frozen=True)
class LeaderGuard:
    """The leader's condition on its writes: the leader key still has create revision ``epoch``."""

    epoch: int


@dataclass(frozen=True)
class Committed:
    """A committed batch: one revision per transaction, and (``written``) the records it put, each with the
    revision it now has."""

    revisions: tuple[int, ...] = ()
    # (revision, records put at it) per transaction; ``written`` copies them with their revision, once
    # (the store's echoes ask for it after every commit: scheduler.store.echoes).
    puts: tuple[tuple[int, tuple[Record, ...]], ...] = field(default=(), repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False)  # the keys of ``written``, in its order

    @functools.cached_property
    def written(self) -> tuple[Record, ...]:
        return tuple(evolve(record, revision=revision)
                     for revision, records in self.puts for record in records)

    def share(self, made: Callable[[str, int], Record | None]) -> None:
        """Make ``written`` now (before anyone has read it), taking for a put the record ``made(key,
        revision)`` already holds for it (its echo's: ``scheduler.store.echoes``), else a copy."""
        if "written" in self.__dict__:
            return
        puts = [(revision, record) for revision, records in self.puts for record in records]
        # cached_property keeps its value in the instance's dict; a frozen dataclass still has one.
        self.__dict__["written"] = tuple(made(key, revision) or evolve(record, revision=revision)
                                         for key, (revision, record) in zip(self.keys, puts, strict=True))

    @property
    def revision(self) -> int:
        """The revision of the last transaction (0 for an empty batch)."""
        return self.revisions[-1] if self.revisions else 0


@dataclass(frozen=True)
class CorruptEntry:
    """A key whose bytes do not decode as its record type, and why."""

    key: str
    reason: str


@dataclass(frozen=True)
class Listing(Generic[T]):
    """Records of one range at one revision (key order); undecodable ones are left out and listed in
    ``corrupt``, so one damaged record does not hide the others."""

    revision: int
    items: tuple[T, ...]
    corrupt: tuple[CorruptEntry, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything under the prefix at ``revision``. Replica ids are unique across services. Keys that hold
    undecodable bytes are left out and listed in ``corrupt``; keys of unknown shape are skipped."""

    revision: int
    services: Mapping[model.ServiceName, model.Service] = field(default_factory=dict)
    replicas: Mapping[model.ReplicaId, model.Replica] = field(default_factory=dict)
    hosts: Mapping[model.HostId, model.HostRecord] = field(default_factory=dict)
    host_statuses: Mapping[model.HostId, model.HostStatus] = field(default_factory=dict)
    autoscale: Mapping[model.ServiceName, model.AutoscaleStatus] = field(default_factory=dict)
    hostgroups: Mapping[model.GroupName, model.HostGroup] = field(default_factory=dict)
    hostgroup_statuses: Mapping[model.GroupName, model.HostGroupStatus] = field(default_factory=dict)
    leader: LeaderRecord | None = None
    corrupt: tuple[CorruptEntry, ...] = ()

    def replicas_of(self, service: str) -> tuple[model.Replica, ...]:
        return tuple(r for r in self.replicas.values() if r.service == service)


class ChangeKind(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class Change:
    """One event of a watch. ``value`` is the decoded record on a put (with ``revision`` set), None on a
    delete — and on a put whose bytes did not decode, with ``error`` saying why. ``ids`` are the key's
    segments (``(service,)``, ``(service, replica)``, ``(host,)``, ``()`` for the leader key)."""

    kind: ChangeKind
    key: str
    record_type: type[Record]
    ids: tuple[str, ...]
    value: Record | None
    revision: int
    error: str = ""


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # as granted (etcd raises TTLs below its minimum, 2 s by default, to that minimum)


class Store(Protocol):
    """The scheduler's state (see the module docstring for the contract)."""

    @property
    def schema(self) -> KeySchema:
        """The key schema (and prefix) this store reads and writes."""
        ...

    async def snapshot(self) -> Snapshot: ...

    async def get(self, ref: KeyRef[R]) -> R | None:
        """The record at ``ref``, or None. Raises ``CorruptRecord`` for undecodable bytes."""
        ...

    async def list(self, key_range: KeyRange[R]) -> Listing[R]:
        """The records in ``key_range`` at one revision."""
        ...

    async def current_revision(self) -> int: ...

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        """Writes ``ops`` in transactions, ``in_flight`` of them at a time (see the module docstring);
        ``on_landed`` is called as each transaction lands, without waiting for the batch's others."""
        ...

    def watch(self, after_revision: int, *,
              scope: KeyRange[Any] | None = None) -> AsyncGenerator[Change, None]:
        """Changes after ``after_revision`` under the whole prefix, or within ``scope``."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (idempotent for revisions already compacted)."""
        ...

    async def grant_lease(self, ttl_s: int) -> Lease: ...

    async def refresh_lease(self, lease_id: int) -> int: ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    async def campaign(self, record: LeaderRecord, *, lease_id: int) -> LeaderRecord: ...

    async def close(self) -> None: ...


__all__ = [
    "MAX_TXN_BYTES",
    "MAX_TXN_OPS",
    "Change",
    "ChangeKind",
    "Committed",
    "CorruptEntry",
    "Delete",
    "Landed",
    "LeaderGuard",
    "Lease",
    "Listing",
    "Op",
    "Put",
    "Snapshot",
    "Store",
]
