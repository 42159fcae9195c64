"""``MemoryStore``: the ``Store`` contract in process, for tests of the code above the store.

It keeps what etcd keeps — one revision counter bumped once per writing transaction, create and mod
revisions per key, an event history that ``compact`` truncates, leases that expire on the event loop's
clock and delete what is attached — and runs batches through the same planning as ``EtcdStore``
(``scheduler.store.txn``), so a batch splits, conflicts and reports exactly as it would against etcd.
Every call yields to the event loop once before acting, so concurrent callers interleave as they would
over a network. Test switches: ``available = False`` makes reads, writes and lease calls raise
``StoreUnavailable`` (watches wait, as the etcd store's resume would; leases keep expiring, as etcd's do
while a client cannot reach it), ``expire_lease`` ends a lease now, ``has_lease`` tells whether one lives,
and ``put_raw`` writes bytes unchecked.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import itertools
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.store import raw, txn
from scheduler.store.base import (
    MAX_TXN_OPS,
    Change,
    ChangeKind,
    Committed,
    Landed,
    LeaderGuard,
    Lease,
    Listing,
    Op,
    Snapshot,
)
from scheduler.store.echoes import Echoes
from scheduler.store.errors import Compacted, LeaseExpired, StoreError, StoreUnavailable
from scheduler.store.keys import DEFAULT_PREFIX, KeyRange, KeyRef, KeySchema, R
from scheduler.store.raw import RawKV
from scheduler.store.records import LeaderRecord, encode


@dataclass
class _Lease:
    id: int
    ttl: int
    timer: asyncio.TimerHandle | None = None
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    """An in-process ``Store`` (see the module docstring)."""

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, max_txn_ops: int = MAX_TXN_OPS) -> None:
        self._schema = KeySchema(prefix)
        self._max_txn_ops = max_txn_ops
        self._kvs: dict[str, RawKV] = {}
        self._revision = 1  # etcd starts at 1
        self._history: list[tuple[ChangeKind, RawKV]] = []
        self._history_revisions: list[int] = []
        self._compacted = 0
        self._changed = asyncio.Event()
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x7E57_0001)
        self._closed = False
        self._gate = txn.Gate()  # commits one after the other go ahead of pipelined ones
        self._echoes = Echoes()  # as EtcdStore: its own writes are not decoded again by its watch
        self.available = True

    @property
    def schema(self) -> KeySchema:
        return self._schema

    @property
    def revision(self) -> int:
        return self._revision

    async def _enter(self) -> None:
        await asyncio.sleep(0)
        if self._closed:
            raise StoreUnavailable("the memory store is closed")
        if not self.available:
            raise StoreUnavailable("the memory store is switched unavailable (test)")

    # -- reads -----------------------------------------------------------------------------------------

    def _range(self, start: str, end: str) -> list[RawKV]:
        return [self._kvs[k] for k in sorted(k for k in self._kvs if start <= k < end)]

    async def snapshot(self) -> Snapshot:
        await self._enter()
        everything = self._schema.everything()
        return raw.build_snapshot(self._schema, self._revision, self._range(everything.start, everything.end))

    async def get(self, ref: KeyRef[R]) -> R | None:
        await self._enter()
        kv = self._kvs.get(ref.key)
        return raw.decode(ref.record_type, kv) if kv is not None else None

    async def list(self, key_range: KeyRange[R]) -> Listing[R]:
        await self._enter()
        return raw.build_listing(key_range.record_type, self._revision,
                                 self._range(key_range.start, key_range.end))

    async def current_revision(self) -> int:
        await self._enter()
        return self._revision

    # -- writes ----------------------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        committed = await txn.commit_batch(ops, self._execute, schema=self._schema, guard=guard,
                                           max_txn_ops=self._max_txn_ops, in_flight=in_flight,
                                           gate=self._gate, on_landed=on_landed, echoes=self._echoes)
        return committed

    async def _execute(self, plan: txn.TxnPlan) -> int:
        await self._enter()
        outcome = self._apply(plan)
        if outcome.succeeded:
            return outcome.revision
        error = txn.explain_failure(plan, outcome, retried=False)
        assert isinstance(error, StoreError)  # only a retried transaction can turn out applied
        raise error

    def _apply(self, plan: txn.TxnPlan) -> txn.TxnOutcome:
        leader = self._kvs.get(plan.leader_key)
        guard_ok = plan.guard is None or (leader is not None and leader.create_revision == plan.guard.epoch)
        if not guard_ok or any(self._mod_revision(w.key) != w.expected for w in plan.writes):
            return txn.TxnOutcome(False, self._revision, {w.key: self._kvs.get(w.key) for w in plan.writes},
                                  leader)
        if plan.writes:
            gone = [w.lease for w in plan.writes if w.lease and w.lease not in self._leases]
            if gone:  # etcd refuses the whole transaction, as an error rather than a failed comparison
                raise LeaseExpired(f"lease {gone[0]:x} expired or was revoked")
            self._revision += 1
            for w in plan.writes:
                if w.value is None:
                    self._delete(w.key)
                else:
                    self._put(w.key, w.value, w.lease)
            self._notify()
        return txn.TxnOutcome(True, self._revision)

    def _mod_revision(self, key: str) -> int:
        kv = self._kvs.get(key)
        return kv.mod_revision if kv is not None else 0

    def _put(self, key: str, value: bytes, lease: int = 0) -> None:
        """Writes at the current revision (the caller bumped it); a put without a lease detaches one."""
        old = self._kvs.get(key)
        if old is not None and old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        kv = RawKV(key, value, old.create_revision if old is not None else self._revision, self._revision,
                   lease)
        self._kvs[key] = kv
        if lease:
            self._leases[lease].keys.add(key)
        self._record(ChangeKind.PUT, kv)

    def _delete(self, key: str) -> None:
        if self._kvs.pop(key, None) is not None:
            self._record(ChangeKind.DELETE, RawKV(key, b"", 0, self._revision))

    def _record(self, kind: ChangeKind, kv: RawKV) -> None:
        self._history.append((kind, kv))
        self._history_revisions.append(kv.mod_revision)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def put_raw(self, key: str, value: bytes) -> int:
        """Writes bytes unchecked, as a person with ``etcdctl put`` could (tests of bad data); returns the
        revision."""
        self._revision += 1
        self._put(key, value)
        self._notify()
        return self._revision

    async def compact(self, revision: int) -> None:
        await self._enter()
        if revision > self._revision:
            raise StoreError(f"cannot compact at revision {revision}: the store is at {self._revision}")
        if revision <= self._compacted:
            return
        cut = bisect.bisect_left(self._history_revisions, revision)
        del self._history[:cut], self._history_revisions[:cut]
        self._compacted = revision
        self._notify()

    # -- watch -----------------------------------------------------------------------------------------

    async def watch(self, after_revision: int, *,
                    scope: KeyRange[Any] | None = None) -> AsyncGenerator[Change, None]:
        everything = self._schema.everything()
        start, end = (scope.start, scope.end) if scope is not None else (everything.start, everything.end)
        position = after_revision
        while True:
            if self._closed:
                raise StoreUnavailable("the memory store is closed")
            if position + 1 < self._compacted:
                raise Compacted(position + 1, self._compacted)
            changed = self._changed
            index = bisect.bisect_right(self._history_revisions, position)
            pending = self._history[index:]
            if not pending:
                await changed.wait()
                continue
            for kind, kv in pending:
                position = kv.mod_revision
                if start <= kv.key < end:
                    change = raw.change_from(self._schema, kind, kv, self._echoes)
                    if change is not None:
                        yield change

    # -- leases and the leader key ---------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        await self._enter()
        lease = _Lease(next(self._lease_ids), max(1, ttl_s))
        self._leases[lease.id] = lease
        self._arm(lease)
        return Lease(lease.id, lease.ttl)

    def _arm(self, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = asyncio.get_running_loop().call_later(lease.ttl, self.expire_lease, lease.id)

    async def refresh_lease(self, lease_id: int) -> int:
        await self._enter()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        self._arm(lease)
        return lease.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        await self._enter()
        self.expire_lease(lease_id)

    def has_lease(self, lease_id: int) -> bool:
        """Whether the lease is alive (tests of what happens before it expires)."""
        return lease_id in self._leases

    def expire_lease(self, lease_id: int) -> None:
        """Ends the lease now and deletes its keys in one revision, as etcd's expiry does."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.timer is not None:
            lease.timer.cancel()
        if lease.keys:
            self._revision += 1
            for key in sorted(lease.keys):
                self._delete(key)
            self._notify()

    async def campaign(self, record: LeaderRecord, *, lease_id: int) -> LeaderRecord:
        await self._enter()
        if lease_id not in self._leases:
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        key = self._schema.leader().key
        if key not in self._kvs:
            self._revision += 1
            self._put(key, encode(dataclasses.replace(record, revision=0)), lease=lease_id)
            self._notify()
        return raw.decode(LeaderRecord, self._kvs[key])

    async def close(self) -> None:
        self._closed = True
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        self._notify()


__all__ = ["MemoryStore"]
