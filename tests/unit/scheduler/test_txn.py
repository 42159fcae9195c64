"""scheduler/store/txn.py: how batches are cut into transactions and what a failed transaction means
(the guard first, then every conflicting key; a retried transaction recognised as applied)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from scheduler.model import Replica
from scheduler.store import records
from scheduler.store.base import MAX_TXN_BYTES, Delete, LeaderGuard, Put
from scheduler.store.errors import Conflict, NotLeader, StoreError
from scheduler.store.keys import KeySchema
from scheduler.store.raw import RawKV
from scheduler.store.txn import (
    QUIET_S,
    Gate,
    TxnOutcome,
    TxnPlan,
    commit_in_transactions,
    explain_failure,
    plan_transactions,
    request_bytes,
)
from tests.fixtures import scheduler_records as build

SCHEMA = KeySchema()


def plan_sizes(n: int, guard: LeaderGuard | None = None, max_txn_ops: int = 128,
               in_flight: int = 1) -> list[int]:
    plans = plan_transactions([Put(build.replica("web", i)) for i in range(n)], schema=SCHEMA, guard=guard,
                              max_txn_ops=max_txn_ops, in_flight=in_flight)
    assert [p.first for p in plans] == [sum(len(q.writes) for q in plans[:i]) for i in range(len(plans))]
    return [len(p.writes) for p in plans]


def test_batches_are_cut_at_the_transaction_limit_minus_the_guard() -> None:
    assert plan_sizes(0) == []
    assert plan_sizes(128) == [128]
    assert plan_sizes(129) == [128, 1]
    assert plan_sizes(127, LeaderGuard(5)) == [127]
    assert plan_sizes(128, LeaderGuard(5)) == [127, 1]
    assert plan_sizes(10, max_txn_ops=4) == [4, 4, 2]
    with pytest.raises(ValueError, match="no room"):
        plan_sizes(1, LeaderGuard(5), max_txn_ops=1)


@pytest.mark.parametrize(("n", "in_flight", "sizes"), [
    (4000, 4, [1000] * 4),                   # one round of four
    (5000, 4, [625] * 8),                    # two rounds, spread evenly
    (8184, 4, [1023] * 8),                   # as much as two rounds hold
    (8185, 4, [127] * 64 + [57]),            # more: etcd's default size, the API's writes in between
    (300, 4, [127, 127, 46]),                # one round either way: no larger than the default needs
    (2046, 1, [1023, 1023]),                 # one after the other: two rounds of one
], ids=["one-round", "two-rounds", "two-full-rounds", "bulk", "small", "sequential"])
def test_where_etcd_allows_more_a_batch_of_a_few_rounds_goes_in_larger_transactions(
        n: int, in_flight: int, sizes: list[int]) -> None:
    guard = LeaderGuard(epoch=7)
    assert plan_sizes(n, guard, max_txn_ops=1024, in_flight=in_flight) == sizes
    # etcd's default limit: always its size, whatever the batch
    assert set(plan_sizes(n, guard, in_flight=in_flight)[:-1]) <= {127}


def test_large_records_go_fewer_per_transaction() -> None:
    big = [Put(dataclasses.replace(build.replica("web", i), reason="x" * 100_000)) for i in range(25)]
    plans = plan_transactions(big, schema=SCHEMA, guard=None)
    assert [len(p.writes) for p in plans] == [10, 10, 5]
    assert all(sum(request_bytes(w) for w in p.writes) <= MAX_TXN_BYTES for p in plans)
    huge = Put(dataclasses.replace(build.replica("web", 9), reason="x" * MAX_TXN_BYTES))
    with pytest.raises(ValueError, match=r"web-00009: a record of .* does not fit in one etcd request"):
        plan_transactions([*big[:3], huge], schema=SCHEMA, guard=None)
    mixed = plan_transactions([Put(build.replica("web", 99)), *big], schema=SCHEMA, guard=None)
    assert [len(p.writes) for p in mixed] == [11, 10, 5]


def test_a_plan_keeps_the_order_and_the_expected_revisions() -> None:
    ops = [Put(build.service("web", revision=7)), Delete(build.host("h1", revision=3)),
           Put(build.host("h2"), expected=9)]
    (plan,) = plan_transactions(ops, schema=SCHEMA, guard=None)
    assert [(w.key, w.expected, w.value is None) for w in plan.writes] == [
        ("/shoal/v1/services/web", 7, False), ("/shoal/v1/hosts/h1", 3, True),
        ("/shoal/v1/hosts/h2", 9, False)]
    assert plan.writes[0].value == records.encode(build.service("web"))


@pytest.mark.parametrize(("ops", "message"), [
    ([Put(build.host("h1")), Put(build.host("h1", zone="b"))], "twice"),
    ([Delete(build.host("h1"))], "names no revision"),
    ([Put(build.host("h1"), expected=-1)], "negative"),
    ([Put(build.full_leader())], "election"),
])
def test_malformed_batches_are_refused(ops: list[Put | Delete], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_transactions(ops, schema=SCHEMA, guard=None)


def kv(key: str, mod: int, value: bytes = b"x", create: int = 1) -> RawKV:
    return RawKV(key, value, create, mod)


def test_a_failed_guard_is_reported_before_conflicts() -> None:
    (plan,) = plan_transactions([Put(build.host("h1"))], schema=SCHEMA, guard=LeaderGuard(10))
    key = plan.writes[0].key
    deposed = explain_failure(plan, TxnOutcome(False, 50, {key: kv(key, 40)},
                                               kv(SCHEMA.leader().key, 30, create=30)), retried=False)
    assert isinstance(deposed, NotLeader) and (deposed.epoch, deposed.current_epoch) == (10, 30)
    vacant = explain_failure(plan, TxnOutcome(False, 50, {key: None}, None), retried=False)
    assert isinstance(vacant, NotLeader) and vacant.current_epoch == 0
    conflict = explain_failure(plan, TxnOutcome(False, 50, {key: kv(key, 40)},
                                                kv(SCHEMA.leader().key, 10, create=10)), retried=False)
    assert isinstance(conflict, Conflict) and conflict.keys == (key,)


def test_every_changed_key_is_named() -> None:
    ops = [Put(build.host("h1", revision=5)), Put(build.host("h2", revision=6)), Put(build.host("h3"))]
    (plan,) = plan_transactions(ops, schema=SCHEMA, guard=None)
    h1, h2, h3 = (w.key for w in plan.writes)
    error = explain_failure(plan, TxnOutcome(False, 9, {h1: kv(h1, 8), h2: kv(h2, 6), h3: kv(h3, 9)}),
                            retried=False)
    assert isinstance(error, Conflict)
    assert [(c.key, c.expected, c.actual) for c in error.conflicts] == [(h1, 5, 8), (h3, 0, 9)]
    assert "expected at revision 5, is at revision 8" in str(error) and "expected absent" in str(error)
    bug = explain_failure(plan, TxnOutcome(False, 9, {h1: kv(h1, 5), h2: kv(h2, 6), h3: None}),
                          retried=False)
    assert type(bug) is StoreError


def test_a_retried_transaction_whose_writes_are_all_there_counts_as_applied() -> None:
    ops = [Put(build.host("h1", revision=5)), Put(build.host("h2")), Delete(build.host("h3", revision=4))]
    (plan,) = plan_transactions(ops, schema=SCHEMA, guard=None)
    h1, h2, h3 = (w.key for w in plan.writes)
    ours = {h1: kv(h1, 12, plan.writes[0].value or b""), h2: kv(h2, 12, plan.writes[1].value or b""),
            h3: None}
    assert explain_failure(plan, TxnOutcome(False, 13, ours), retried=True) == 12
    # Not on a first attempt: identical bytes may come from another writer that raced us.
    assert isinstance(explain_failure(plan, TxnOutcome(False, 13, ours), retried=False), Conflict)
    theirs = dict(ours) | {h2: kv(h2, 12, b"someone else's")}
    assert isinstance(explain_failure(plan, TxnOutcome(False, 13, theirs), retried=True), Conflict)
    split = dict(ours) | {h2: dataclasses.replace(ours[h2], mod_revision=11)}  # type: ignore[type-var]
    assert isinstance(explain_failure(plan, TxnOutcome(False, 13, split), retried=True), Conflict)
    recreated = dict(ours) | {h3: kv(h3, 12)}
    assert isinstance(explain_failure(plan, TxnOutcome(False, 13, recreated), retried=True), Conflict)


# -- transactions in flight, and what goes ahead of them ---------------------------------------------

def test_a_commit_one_after_the_other_goes_ahead_of_pipelined_transactions() -> None:
    """While a commit without pipelining is under way, a pipelined one starts no new transaction (those
    in flight finish), so an API write never queues behind a whole pass's."""
    schema = KeySchema()
    big = plan_transactions([Put(build.replica("web", i)) for i in range(6 * 127)], schema=schema,
                            guard=None, max_txn_ops=127)
    small = plan_transactions([Put(build.service("api"))], schema=schema, guard=None)
    assert len(big) == 6

    async def scenario() -> list[str]:
        gate = Gate()
        order: list[str] = []
        held: dict[int, asyncio.Event] = {}
        urgent_done = asyncio.Event()

        async def pipelined(plan: TxnPlan) -> int:
            order.append(f"start {plan.first // 127}")
            held[plan.first // 127] = event = asyncio.Event()
            await event.wait()
            return 100 + plan.first

        async def alone(plan: TxnPlan) -> int:
            order.append("urgent")
            await urgent_done.wait()
            return 1

        async def settle() -> None:
            for _ in range(20):  # bounded: each round lets every ready task run once
                await asyncio.sleep(0)

        batch = asyncio.create_task(commit_in_transactions(big, pipelined, in_flight=2, gate=gate))
        await settle()
        urgent = asyncio.create_task(commit_in_transactions(small, alone, gate=gate))
        await settle()
        held[0].set()
        held[1].set()
        await settle()
        order.append("urgent done")
        urgent_done.set()
        await urgent
        for _ in range(6):  # bounded: the rest, released as they start
            await settle()
            for event in held.values():
                event.set()
        committed = await batch
        assert len(committed.revisions) == 6
        return order

    order = asyncio.run(scenario())
    assert order[:4] == ["start 0", "start 1", "urgent", "urgent done"]
    assert sorted(order[4:]) == [f"start {i}" for i in range(2, 6)]


def test_a_write_that_is_not_urgent_waits_behind_the_api_and_holds_nothing_back() -> None:
    """A one-transaction commit with two in flight (a host's registration) is pipelined: it waits while a
    commit one after the other is under way, never closes the gate itself, and the gate stays quiet for
    large transactions; the API's commit does neither (at 5,000 hosts, ~40 registrations a second went
    ahead of the leader's passes: docs/scaling.md, part 19)."""
    one = plan_transactions([Put(build.service("api"))], schema=SCHEMA, guard=None)
    now = [100.0]

    async def scenario() -> list[str]:
        gate = Gate(clock=lambda: now[0])
        order: list[str] = []
        api_done = asyncio.Event()

        async def api(plan: TxnPlan) -> int:
            order.append("api")
            await api_done.wait()
            return 1

        async def registration(plan: TxnPlan) -> int:
            order.append("registration")
            return 2

        assert gate.quiet()
        await commit_in_transactions(one, registration, in_flight=2, gate=gate)
        assert gate.quiet()  # a registration is not API activity
        urgent = asyncio.create_task(commit_in_transactions(one, api, gate=gate))
        for _ in range(5):  # bounded: the API's commit is under way
            await asyncio.sleep(0)
        later = asyncio.create_task(commit_in_transactions(one, registration, in_flight=2, gate=gate))
        for _ in range(20):  # bounded: the registration would have run by now, were it not held
            await asyncio.sleep(0)
        assert not gate.quiet() and order == ["registration", "api"]
        api_done.set()
        await urgent
        await later
        assert not gate.quiet()  # the API wrote just now
        now[0] += QUIET_S
        assert gate.quiet()
        return order

    assert asyncio.run(scenario()) == ["registration", "api", "registration"]


def test_each_transaction_is_told_as_it_lands_not_when_the_batch_has() -> None:
    """``on_landed`` hears a transaction's puts once it lands, while the batch's later ones are still in
    flight: the leader launches a replica once its own record is in etcd."""
    plans = plan_transactions([Put(build.replica("web", i)) for i in range(3 * 127)], schema=SCHEMA,
                              guard=None, max_txn_ops=127)

    async def scenario() -> None:
        held = {i: asyncio.Event() for i in range(3)}
        heard: list[list[str]] = []

        async def execute(plan: TxnPlan) -> int:
            await held[plan.first // 127].wait()
            return 100 + plan.first

        def landed(_revision: int, puts: tuple[records.Record, ...]) -> None:
            heard.append([r.id for r in puts if isinstance(r, Replica)])

        batch = asyncio.create_task(commit_in_transactions(plans, execute, in_flight=3, on_landed=landed))
        held[1].set()
        for _ in range(20):  # bounded: each round lets every ready task run once
            await asyncio.sleep(0)
        assert not batch.done()
        assert heard == [[f"web-{i:05d}" for i in range(127, 254)]]  # the second, alone so far
        held[0].set()
        held[2].set()
        committed = await batch
        assert len(committed.revisions) == 3
        assert sorted(id_ for puts in heard for id_ in puts) == [f"web-{i:05d}" for i in range(3 * 127)]

    asyncio.run(scenario())
