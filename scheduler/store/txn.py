"""How a batch becomes transactions, and what a failed transaction means — shared by both stores.

``plan_transactions`` checks a batch (no key twice, no delete of a record that was never read) and cuts
it, in order, into transactions that fit etcd's ``--max-txn-ops`` in all three of their lists (of etcd's
default size, or larger for a batch that fits in a few rounds: ``transaction_size``) — one
comparison per operation plus the guard's, one write per operation, and (the failure branch) one read
per written key plus the leader key, so a failed transaction reports in the same round trip which keys
changed and whether the guard held — and its ``--max-request-bytes`` (large records get fewer per
transaction). ``explain_failure`` turns that report into the error to raise (or,
for a retried transaction whose first reply was lost, recognises that it was applied after all).
``commit_in_transactions`` runs the plans through a store's ``execute``, one after the other or with
several in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from scheduler.store import raw, records
from scheduler.store.base import MAX_TXN_BYTES, MAX_TXN_OPS, Committed, Delete, Landed, LeaderGuard, Op
from scheduler.store.echoes import Echoes
from scheduler.store.errors import Conflict, CorruptRecord, KeyConflict, NotLeader, StoreError
from scheduler.store.keys import KeySchema
from scheduler.store.raw import RawKV


@dataclass(frozen=True)
class Write:
    """One compare-and-swap: ``key`` must be at ``expected`` (0 = absent); then put ``value`` (or delete
    when it is None)."""

    key: str
    expected: int
    value: bytes | None
    record: records.Record
    lease: int = 0  # a put attached to this lease (0: none)


@dataclass(frozen=True)
class TxnPlan:
    """One transaction of a batch: ``writes`` are the batch's operations ``first ..`` in order."""

    first: int
    writes: tuple[Write, ...]
    guard: LeaderGuard | None
    leader_key: str


@dataclass(frozen=True)
class TxnOutcome:
    """What executing a plan told: success and its revision, or the failure branch's reads (every written
    key as it is now, None when absent, and the leader key when guarded)."""

    succeeded: bool
    revision: int
    current: Mapping[str, RawKV | None] = dataclasses.field(default_factory=dict)
    leader: RawKV | None = None


def ops_per_transaction(guarded: bool, max_txn_ops: int = MAX_TXN_OPS) -> int:
    """A guard's comparison (and its read in the failure branch) takes one slot of each list."""
    return max_txn_ops - 1 if guarded else max_txn_ops


# A batch that etcd's limit lets go in at most this many rounds of ``in_flight`` transactions goes that way
# (a mass failure's marking pass at 5,000 hosts: ~4,000 writes); a larger one (a placing pass: tens of
# thousands) in transactions of etcd's default size, so that writes one after the other (the API's) wait
# only for small ones (docs/scaling.md, part 19).
LARGE_ROUNDS = 2
# ... and only while the API is quiet: with large transactions in flight during an apply of 1,000
# services at 5,000 hosts, each API write waited for them, and the apply took 70 s instead of 18-30.
QUIET_S = 5.0


def transaction_size(n_ops: int, *, guarded: bool, max_txn_ops: int = MAX_TXN_OPS, in_flight: int = 1,
                     large: bool = True) -> int:
    """Operations per transaction for a batch of ``n_ops``: as many as etcd's default allows (128, less
    the guard's slot), or ``max_txn_ops`` allows if that is less. Where etcd allows more (its
    ``--max-txn-ops``, matched by ``--etcd-max-txn-ops``), a batch that then fits in ``LARGE_ROUNDS``
    rounds of ``in_flight`` transactions is spread evenly over as few rounds as it needs (unless not
    ``large``: the store's API writes are not quiet, ``Gate.quiet``): at 5,000 hosts a commit of 4,000
    writes waited 2.3-2.9 s for etcd in rounds of four transactions of 127 on a loaded machine, each
    round a few raft round trips that all wait for a cpu."""
    small = ops_per_transaction(guarded, min(max_txn_ops, MAX_TXN_OPS))
    if max_txn_ops <= MAX_TXN_OPS or not large:
        return small
    lanes = max(1, in_flight)
    rounds = -(-n_ops // (lanes * ops_per_transaction(guarded, max_txn_ops)))
    if rounds > LARGE_ROUNDS:
        return small
    return max(small, -(-n_ops // (lanes * max(1, rounds))))


def request_bytes(write: Write) -> int:
    """About what a write adds to a transaction request: the key three times (comparison, write, failure
    read), the value once, and a few bytes of framing each."""
    return 3 * (len(write.key.encode()) + 8) + (len(write.value) if write.value is not None else 0)


def plan_transactions(ops: Sequence[Op], *, schema: KeySchema, guard: LeaderGuard | None,
                      max_txn_ops: int = MAX_TXN_OPS, max_txn_bytes: int = MAX_TXN_BYTES,
                      in_flight: int = 1, large: bool = True) -> list[TxnPlan]:
    writes: list[Write] = []
    seen: set[str] = set()
    for i, op in enumerate(ops):
        if isinstance(op.record, records.LeaderRecord):
            raise ValueError("the leader key is written by the election (campaign), not by commit")
        key = schema.key_of(op.record)
        if key in seen:
            raise ValueError(f"batch writes {key} twice (operation {i}): one operation per key")
        seen.add(key)
        expected = op.expected_revision
        if expected < 0:
            raise ValueError(f"operation {i} on {key}: expected revision {expected} is negative")
        if isinstance(op, Delete):
            if expected == 0:
                raise ValueError(f"delete of {key} (operation {i}) names no revision: delete a record "
                                 "read from the store, or give expected=")
            writes.append(Write(key, expected, None, op.record))
        else:
            writes.append(Write(key, expected, records.encode(op.record), op.record, op.lease))
    per = transaction_size(len(writes), guarded=guard is not None, max_txn_ops=max_txn_ops,
                           in_flight=in_flight, large=large)
    if per < 1:
        raise ValueError(f"max_txn_ops {max_txn_ops} leaves no room for an operation")
    plans: list[TxnPlan] = []
    start = 0
    while start < len(writes):
        first = request_bytes(writes[start])
        if first > max_txn_bytes:
            raise ValueError(f"{writes[start].key}: a record of {first} bytes does not fit in one etcd "
                             f"request ({max_txn_bytes} bytes)")
        end, size = start + 1, first
        while end < len(writes) and end - start < per:
            size += request_bytes(writes[end])
            if size > max_txn_bytes:
                break
            end += 1
        plans.append(TxnPlan(first=start, writes=tuple(writes[start:end]), guard=guard,
                             leader_key=schema.leader().key))
        start = end
    return plans


def explain_failure(plan: TxnPlan, outcome: TxnOutcome, *, retried: bool) -> StoreError | int:
    """The error a failed transaction raises — or, when ``retried`` and every key holds exactly what the
    plan wrote (puts at one revision, deletes absent), the revision the earlier attempt committed at."""
    if plan.guard is not None:
        holder = outcome.leader
        current_epoch = holder.create_revision if holder is not None else 0
        if current_epoch != plan.guard.epoch:
            return NotLeader(plan.guard.epoch, current_epoch)
    conflicts: list[KeyConflict] = []
    for w in plan.writes:
        now = outcome.current.get(w.key)
        actual = now.mod_revision if now is not None else 0
        if actual != w.expected:
            conflicts.append(KeyConflict(w.key, w.expected, actual, written=w.record,
                                         current=_current(w, now)))
    if not conflicts:
        return StoreError(f"transaction on {len(plan.writes)} keys failed although no comparison did "
                          "(a bug in the store)")
    if retried:
        applied_at = _applied_revision(plan, outcome)
        if applied_at is not None:
            return applied_at
    return Conflict(tuple(conflicts), etcd_revision=outcome.revision)


def _current(write: Write, now: RawKV | None) -> records.Record | None:
    """What a conflicting key holds now, as a record of the type written (None: absent, or not a record)."""
    if now is None:
        return None
    try:
        return raw.decode_any(type(write.record), now)
    except CorruptRecord:
        return None


def _applied_revision(plan: TxnPlan, outcome: TxnOutcome) -> int | None:
    revisions: set[int] = set()
    for w in plan.writes:
        now = outcome.current.get(w.key)
        if w.value is None:
            if now is not None:
                return None
        elif now is None or now.value != w.value:
            return None
        else:
            revisions.add(now.mod_revision)
    if len(revisions) > 1:
        return None
    # Deletes only: the revision they were applied at is gone with the keys; the reply's is an upper bound.
    return revisions.pop() if revisions else outcome.revision


class Gate:
    """A store's commits one after the other go ahead of its pipelined ones: while one is under way, no
    pipelined commit starts another transaction (those already in flight finish). With four of a
    placing pass's transactions in flight, every API write queued behind them: applying 1,000 services
    took 70 s instead of 10 (docs/scaling.md, part 11)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._ahead = 0
        self._clear = asyncio.Event()
        self._clear.set()
        self._clock = clock
        self._last_ahead = -math.inf  # when the last commit one after the other ended

    @contextlib.asynccontextmanager
    async def ahead(self) -> AsyncIterator[None]:
        self._ahead += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._ahead -= 1
            self._last_ahead = self._clock()
            if not self._ahead:
                self._clear.set()

    def quiet(self, for_s: float = QUIET_S) -> bool:
        """No commit one after the other is under way, nor ended within ``for_s``: large transactions
        would hold none back (``transaction_size``)."""
        return not self._ahead and self._clock() - self._last_ahead >= for_s

    async def wait(self) -> None:
        await self._clear.wait()


async def commit_in_transactions(plans: Sequence[TxnPlan], execute: Callable[[TxnPlan], Awaitable[int]], *,
                                 in_flight: int = 1, gate: Gate | None = None,
                                 on_landed: Landed | None = None) -> Committed:
    """Runs ``plans``; ``execute`` returns a plan's commit revision or raises.

    With ``in_flight`` 1 they run one after the other, and a failure carries how many operations of the
    batch (a prefix) went in before it. With more, up to ``in_flight`` transactions are in flight at
    once, taken in order (etcd commits concurrent proposals in one raft round and one fsync: a placing
    pass's writes at 5,000 hosts went through twice as fast with 4: docs/scaling.md, part 11).
    Transactions after a failed one may then have landed too: no new one starts once one
    fails, those in flight finish, and the first failure (in batch order) is raised with ``applied``
    counting every operation that went in (not a prefix) and ``revisions`` their transactions'
    revisions. Each transaction is still atomic and compare-and-swap guarded, so whatever landed was
    valid against what the caller read. With a ``gate``, a commit one after the other goes ahead of
    the pipelined ones (``Gate``), however few transactions they have: a write that is not urgent (a
    host's registration) asks for two in flight to wait behind the API's instead of holding passes back.
    ``on_landed`` is told each transaction's revision and puts as it lands."""
    if on_landed is not None:
        execute = _telling(execute, on_landed)
    if in_flight <= 1:
        async with gate.ahead() if gate is not None else contextlib.nullcontext():
            return await _in_sequence(plans, execute)
    if not plans:
        return _committed([])
    landed: dict[int, int] = {}  # plan index -> revision
    failures: dict[int, StoreError] = {}
    upcoming = iter(range(len(plans)))

    async def lane() -> None:
        for i in upcoming:  # shared: each index is taken by one lane
            if gate is not None:
                await gate.wait()
            if failures:
                return
            try:
                landed[i] = await execute(plans[i])
            except StoreError as err:
                failures[i] = err
                return

    async with asyncio.TaskGroup() as lanes:
        for _ in range(min(in_flight, len(plans))):
            lanes.create_task(lane())
    done = sorted(landed)
    if failures:
        err = failures[min(failures)]
        err.applied = sum(len(plans[i].writes) for i in done)
        err.revisions = tuple(sorted(landed[i] for i in done))
        err.deleted = _deleted(plans[i] for i in done)
        raise err
    # In revision order, as a sequential commit reports them (``Committed.revision`` is the last).
    return _committed([(plans[i], landed[i]) for i in sorted(done, key=landed.__getitem__)])


async def commit_batch(ops: Sequence[Op], execute: Callable[[TxnPlan], Awaitable[int]], *, schema: KeySchema,
                       guard: LeaderGuard | None, max_txn_ops: int, in_flight: int, gate: Gate,
                       on_landed: Landed | None, echoes: Echoes | None = None) -> Committed:
    """A store's ``commit``: ``ops`` planned (larger transactions only while ``gate`` is quiet) and run;
    ``echoes`` (the store's) learn the puts before they are sent, and what landed once it has."""
    plans = plan_transactions(ops, schema=schema, guard=guard, max_txn_ops=max_txn_ops, in_flight=in_flight,
                              large=gate.quiet())
    if echoes is None:
        return await commit_in_transactions(plans, execute, in_flight=in_flight, gate=gate,
                                            on_landed=on_landed)
    writes = [w for plan in plans for w in plan.writes]
    echoes.landing(writes)
    try:
        committed = await commit_in_transactions(plans, execute, in_flight=in_flight, gate=gate,
                                                 on_landed=on_landed)
        echoes.expect(committed)
    finally:
        echoes.settled(writes)
    return committed


def _telling(execute: Callable[[TxnPlan], Awaitable[int]],
             on_landed: Landed) -> Callable[[TxnPlan], Awaitable[int]]:
    async def landed(plan: TxnPlan) -> int:
        revision = await execute(plan)
        on_landed(revision, tuple(w.record for w in plan.writes if w.value is not None))
        return revision
    return landed


async def _in_sequence(plans: Sequence[TxnPlan], execute: Callable[[TxnPlan], Awaitable[int]]) -> Committed:
    landed: list[tuple[TxnPlan, int]] = []
    for plan in plans:
        try:
            landed.append((plan, await execute(plan)))
        except StoreError as err:
            err.applied = plan.first
            err.revisions = tuple(revision for _, revision in landed)
            err.deleted = _deleted(plan for plan, _ in landed)
            raise
    return _committed(landed)


def _deleted(plans: Iterable[TxnPlan]) -> tuple[records.Record, ...]:
    return tuple(w.record for plan in plans for w in plan.writes if w.value is None)


def _committed(landed: Sequence[tuple[TxnPlan, int]]) -> Committed:
    """The batch as committed: each transaction's revision, and what it put (records and their keys)."""
    written = [[w for w in plan.writes if w.value is not None] for plan, _ in landed]
    return Committed(revisions=tuple(revision for _, revision in landed),
                     puts=tuple((revision, tuple(w.record for w in puts))
                                for (_, revision), puts in zip(landed, written, strict=True)),
                     keys=tuple(w.key for puts in written for w in puts))


__all__ = ["LARGE_ROUNDS", "QUIET_S", "Gate", "TxnOutcome", "TxnPlan", "Write", "commit_batch",
           "commit_in_transactions", "explain_failure", "ops_per_transaction", "plan_transactions",
           "request_bytes", "transaction_size"]
