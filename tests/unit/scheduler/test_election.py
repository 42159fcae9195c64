"""scheduler/election.py on a MemoryStore: who leads, with which epoch, and when the leader's work is
started and cancelled — takeover on resign without waiting for the TTL, a new term after a lost lease,
stepping down while the lease still lives when the store is unreachable, errors resigning."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest

from scheduler.election import Election, ElectionSettings, Term
from scheduler.store.base import LeaderGuard, Put
from scheduler.store.errors import NotLeader, StoreError
from scheduler.store.memory import MemoryStore
from tests.fixtures import scheduler_records as build

HANG_GUARD_S = 20.0
LONG_TTL_S = 60  # longer than the hang guard: a takeover that waited for the TTL would fail the test


class Leader:
    """A ``lead`` callback that runs until cancelled and reports each term's start and end."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.started: asyncio.Queue[Term] = asyncio.Queue()
        self.stopped: asyncio.Queue[tuple[Term, bool]] = asyncio.Queue()  # (term, its lease still alive)

    async def lead(self, term: Term) -> None:
        self.started.put_nowait(term)
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.put_nowait((term, self.store.has_lease(term.lease_id)))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))  # type: ignore[arg-type]


async def first_of(*waits: Awaitable[Term]) -> Term:
    tasks = [asyncio.ensure_future(w) for w in waits]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return next(iter(done)).result()


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_the_first_candidate_leads_with_the_leader_keys_create_revision_as_epoch() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        election = Election(store, ElectionSettings("a", address="10.0.0.1:7443", ttl_s=LONG_TTL_S))
        leader = Leader(store)
        task = asyncio.create_task(election.run(leader.lead))
        term = await leader.started.get()
        record = await store.get(store.schema.leader())
        assert record is not None and record.epoch == term.epoch and record.lease == term.lease_id
        assert (record.instance, record.address) == ("a", "10.0.0.1:7443")
        assert election.is_leader and election.term == term and election.leader == record
        assert term.guard == LeaderGuard(term.epoch)
        await store.commit([Put(build.replica())], guard=term.guard)
        await cancel(task)
        assert not election.is_leader
        assert await store.get(store.schema.leader()) is None  # resigned: the key went with the lease
        assert not store.has_lease(term.lease_id)

    run(scenario)


def test_a_follower_takes_over_at_once_when_the_leader_resigns() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        a, b = Leader(store), Leader(store)
        election_a = Election(store, ElectionSettings("a", ttl_s=LONG_TTL_S))
        election_b = Election(store, ElectionSettings("b", ttl_s=LONG_TTL_S))
        task_a = asyncio.create_task(election_a.run(a.lead))
        first = await a.started.get()
        task_b = asyncio.create_task(election_b.run(b.lead))
        while election_b.leader is None:  # b campaigned and learnt who leads
            await asyncio.sleep(0.01)
        assert election_b.leader.instance == "a" and not election_b.is_leader
        await cancel(task_a)
        assert (await a.stopped.get())[0] == first
        second = await b.started.get()
        assert second.epoch > first.epoch and second.instance == "b"
        with pytest.raises(NotLeader):
            await store.commit([Put(build.replica())], guard=first.guard)
        await cancel(task_b)

    run(scenario)


def test_a_leader_whose_lease_ends_is_cancelled_and_campaigns_again() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        leader = Leader(store)
        election = Election(store, ElectionSettings("a", ttl_s=LONG_TTL_S))
        task = asyncio.create_task(election.run(leader.lead))
        first = await leader.started.get()
        store.expire_lease(first.lease_id)  # as if etcd expired it
        stopped, _ = await leader.stopped.get()
        assert stopped == first
        second = await leader.started.get()  # nobody else runs: the same instance wins a new term
        assert second.epoch > first.epoch and second.lease_id != first.lease_id
        await cancel(task)

    run(scenario)


def test_a_leader_cut_off_from_the_store_stops_while_its_lease_still_lives() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        a, b = Leader(store), Leader(store)
        task_a = asyncio.create_task(Election(store, ElectionSettings("a", ttl_s=2)).run(a.lead))
        first = await a.started.get()
        task_b = asyncio.create_task(Election(store, ElectionSettings("b", ttl_s=2)).run(b.lead))
        store.available = False
        term, lease_alive = await a.stopped.get()
        assert term == first and lease_alive  # stopped before anyone else could have been elected
        while store.has_lease(first.lease_id):  # the lease runs out on the store's side
            await asyncio.sleep(0.05)
        store.available = True
        assert (await first_of(a.started.get(), b.started.get())).epoch > first.epoch
        await cancel(task_a)
        await cancel(task_b)

    run(scenario)


def test_an_error_in_the_leaders_work_resigns_and_is_raised() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        terms: list[Term] = []

        async def failing(term: Term) -> None:
            terms.append(term)
            raise RuntimeError("reconcile bug")

        with pytest.raises(RuntimeError, match="reconcile bug"):
            await Election(store, ElectionSettings("a", ttl_s=LONG_TTL_S)).run(failing)
        assert len(terms) == 1 and not store.has_lease(terms[0].lease_id)
        assert await store.get(store.schema.leader()) is None

    run(scenario)


def test_work_that_returns_resigns_and_ends_the_run() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        terms: list[Term] = []

        async def once(term: Term) -> None:
            terms.append(term)

        await Election(store, ElectionSettings("a", ttl_s=LONG_TTL_S)).run(once)
        assert len(terms) == 1 and await store.get(store.schema.leader()) is None

    run(scenario)


@pytest.mark.parametrize(("settings", "message"), [
    ({"instance": ""}, "instance's id"),
    ({"instance": "a", "ttl_s": 0}, "at least 1 s"),
    ({"instance": "a", "ttl_s": 2, "step_down_after_s": 2.0}, "below the TTL"),
])
def test_settings_that_could_break_the_election_are_refused(settings: dict[str, object],
                                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ElectionSettings(**settings)  # type: ignore[arg-type]


def test_defaults_step_down_at_two_thirds_of_the_ttl_and_refresh_every_sixth() -> None:
    settings = ElectionSettings("a")
    assert (settings.ttl_s, settings.step_down_after, settings.keepalive_interval) == (2, 4 / 3, 2 / 3)
    assert settings.refresh_every == 1 / 3
    assert ElectionSettings("a", ttl_s=10).refresh_every == 0.5  # capped: more tolerance at longer TTLs


class CancelSurfacingAsError(MemoryStore):
    """A store whose calls, cancelled under their caller, fail with a StoreError instead of letting the
    CancelledError through (as a cancelled gRPC call mapped to the store's errors can)."""

    async def watch(self, after_revision: int, *, scope: Any = None) -> AsyncGenerator[Any, None]:
        try:
            async for change in super().watch(after_revision, scope=scope):
                yield change
        except asyncio.CancelledError:
            raise StoreError("etcd refused watch: CANCELLED") from None


def test_a_follower_cancelled_while_its_store_reports_the_cancellation_as_an_error_still_stops() -> None:
    """Seen as a scheduler ignoring SIGTERM now and then: the candidate's retry loop took the error for
    a store failure and campaigned on, so shutdown waited for it for ever."""
    async def scenario() -> bool:
        store = CancelSurfacingAsError()
        leader, follower = Leader(store), Leader(store)
        first = asyncio.create_task(Election(store, ElectionSettings("a", ttl_s=LONG_TTL_S)).run(leader.lead))
        await leader.started.get()
        candidate = Election(store, ElectionSettings("b", ttl_s=LONG_TTL_S))
        second = asyncio.create_task(candidate.run(follower.lead))
        for _ in range(20):  # let it reach its wait for the leader key to go
            await asyncio.sleep(0)
        second.cancel()
        done, _ = await asyncio.wait({second}, timeout=5)
        await cancel(first)
        return second in done and second.cancelled() and follower.started.empty()

    # Not asyncio.run: its teardown would wait for ever for a task that ignores its cancellation (and a
    # loop closed under such a task fails in its finalizers, so a failing run leaves the loop be).
    loop = asyncio.new_event_loop()
    stopped = loop.run_until_complete(asyncio.wait_for(scenario(), HANG_GUARD_S))
    assert stopped, "the cancelled follower kept campaigning"
    loop.close()
