"""scheduler/keepalive.py's ``ThreadedKeepalive`` with a scripted store opened on its thread: the term's
lease is kept from a thread and loop of its own (the store is opened there, not on the caller's loop),
keeps being refreshed while the caller's loop is blocked, and the term ends, with its store closed, when
the lease is gone, the key is deleted or replaced, refreshes fail for ``step_down_after``, opening the
store fails, or ``keep`` is cancelled; ``close`` ends the thread. (Real etcd:
tests/integration/scheduler/test_keepalive_etcd.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from scheduler.election import ElectionSettings, Term
from scheduler.keepalive import SWITCH_INTERVAL_S, ThreadedKeepalive
from scheduler.store import base
from scheduler.store.errors import LeaseExpired, StoreUnavailable
from scheduler.store.keys import KeyRange, KeyRef, KeySchema, R
from scheduler.store.records import LeaderRecord

BOUND_S = 15.0
TERM = Term(epoch=7, lease_id=0x70, instance="a", started_at=0.0)
SETTINGS = ElectionSettings("a", ttl_s=2)


class ScriptedStore:
    """The calls the keepalive makes, answered as the script says; records where and how it was used."""

    def __init__(self, *, lease: str = "alive", holder_epoch: int | None = TERM.epoch,
                 key_deleted: bool = False) -> None:
        self.lease = lease              # "alive", "gone" or "unreachable"
        self.holder_epoch = holder_epoch
        self.key_deleted = key_deleted
        self.thread = threading.current_thread().name  # opened on this thread
        self.refreshes = 0
        self.refreshed = threading.Event()
        self.closed = False
        self.revoked = False
        self.schema = KeySchema()

    async def refresh_lease(self, lease_id: int) -> int:
        await asyncio.sleep(0)  # a call over the network: the caller's deadline can interrupt it
        if self.lease == "gone":
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        if self.lease == "unreachable":
            raise StoreUnavailable("etcd unreachable (scripted)")
        self.refreshes += 1
        self.refreshed.set()
        return SETTINGS.ttl_s

    async def revoke_lease(self, lease_id: int) -> None:
        await asyncio.sleep(0)
        self.revoked = True

    async def get(self, ref: KeyRef[R]) -> Any:
        if self.holder_epoch is None:
            return None
        return LeaderRecord(instance="a", epoch=self.holder_epoch, lease=TERM.lease_id)

    async def watch(self, after_revision: int, *,
                    scope: KeyRange[Any] | None = None) -> AsyncGenerator[base.Change, None]:
        if self.key_deleted:
            yield base.Change(kind=base.ChangeKind.DELETE, key=self.schema.leader().key,
                              record_type=LeaderRecord, ids=(), value=None, revision=after_revision + 1)
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed = True


class Opener:
    """Opens one ``ScriptedStore`` per term (on the keepalive's thread), or fails to."""

    def __init__(self, error: Exception | None = None, **script: Any) -> None:
        self.error = error
        self.script = script
        self.stores: list[ScriptedStore] = []

    async def __call__(self) -> Any:
        if self.error is not None:
            raise self.error
        store = ScriptedStore(**self.script)
        self.stores.append(store)
        return store


def keepalive_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "election-keepalive"]


class Ended:
    """What ``keep`` returned or raised, and what was left running when it did and after ``close``."""

    def __init__(self) -> None:
        self.reason = ""
        self.error: Exception | None = None
        self.threads_after_keep: list[str] = []
        self.closed_after_keep: list[bool] = []
        self.threads_after_close: list[str] = []


def keep(opener: Opener, term: Term = TERM) -> Ended:
    ended = Ended()

    async def scenario() -> None:
        runner = ThreadedKeepalive(opener)
        try:
            ended.reason = await runner.keep(term, SETTINGS, clock=time.monotonic)
        except Exception as err:
            ended.error = err
        ended.threads_after_keep = [t.name for t in keepalive_threads()]
        ended.closed_after_keep = [store.closed for store in opener.stores]
        await runner.close()
        ended.threads_after_close = [t.name for t in keepalive_threads()]

    asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
    return ended


def started_now() -> Term:
    return Term(epoch=TERM.epoch, lease_id=TERM.lease_id, instance="a", started_at=time.monotonic())


@pytest.mark.parametrize(("script", "why"), [
    ({"lease": "gone"}, "the lease expired or was revoked"),
    ({"key_deleted": True}, "the leader key was deleted"),
    ({"holder_epoch": None}, "the leader key was deleted"),
    ({"holder_epoch": 9}, "the leader key now belongs to epoch 9"),
    ({"lease": "unreachable"}, "no keepalive succeeded for"),
])
def test_the_term_ends_with_its_store_closed_and_close_ends_the_thread(script: dict[str, Any],
                                                                        why: str) -> None:
    opener = Opener(**script)
    ended = keep(opener, started_now())
    assert why in ended.reason and ended.error is None
    [store] = opener.stores
    assert store.thread == "election-keepalive"  # opened on the keepalive's thread, not the caller's
    assert ended.closed_after_keep == [True]     # the term's connection ends with the term
    assert ended.threads_after_keep == ["election-keepalive"]  # the thread serves the next term too
    assert ended.threads_after_close == []


def test_a_store_that_cannot_be_opened_ends_the_term_with_its_error() -> None:
    ended = keep(Opener(StoreUnavailable("no etcd here")))
    assert isinstance(ended.error, StoreUnavailable) and "no etcd here" in str(ended.error)
    assert ended.threads_after_close == []


def test_the_lease_is_refreshed_while_the_callers_loop_is_blocked_and_cancelling_stops_the_thread() -> None:
    opener = Opener()

    async def scenario() -> tuple[int, int, bool]:
        runner = ThreadedKeepalive(opener)
        keeping = asyncio.create_task(runner.keep(started_now(), SETTINGS, clock=time.monotonic))
        while not opener.stores or not opener.stores[0].refreshed.is_set():
            await asyncio.sleep(0.01)
        store = opener.stores[0]
        before = store.refreshes
        time.sleep(3 * SETTINGS.ttl_s)  # this loop blocked for longer than the lease's TTL
        during = store.refreshes - before
        ended_meanwhile = keeping.done()
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        assert store.closed  # cancelling the term closed its connection before returning
        await runner.close()
        return during, len(keepalive_threads()), ended_meanwhile

    during, threads_left, ended_meanwhile = asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
    assert during >= 2 and not ended_meanwhile  # kept every TTL/3 all along (6 s / 0.67 s: about 9)
    assert threads_left == 0


def test_the_thread_makes_the_interpreter_hand_over_the_gil_sooner() -> None:
    # a refresh takes the GIL dozens of times; at the default 5 ms switch interval a busy main thread
    # made each take wait, and refreshes took 0.7 s and more (docs/scaling.md)
    default = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)

        async def scenario() -> None:
            runner = ThreadedKeepalive(Opener())
            keeping = asyncio.create_task(runner.keep(started_now(), SETTINGS, clock=time.monotonic))
            await asyncio.sleep(0)
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
            await runner.close()

        asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(default)


def test_a_term_whose_keepalive_starts_late_is_kept_if_its_lease_can_still_be_alive() -> None:
    # Its first refresh comes after the step-down time (the leader's loop was slow to start the term)
    # but before the lease could have expired: it is tried, succeeds, and the term goes on.
    opener = Opener()
    late = Term(epoch=TERM.epoch, lease_id=TERM.lease_id, instance="a",
                started_at=time.monotonic() - (SETTINGS.step_down_after + SETTINGS.ttl_s) / 2)

    async def scenario() -> bool:
        runner = ThreadedKeepalive(opener)
        keeping = asyncio.create_task(runner.keep(late, SETTINGS, clock=time.monotonic))
        while not opener.stores or opener.stores[0].refreshes < 2:
            await asyncio.sleep(0.01)
            assert not keeping.done(), keeping.result()
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        await runner.close()
        return keeping.cancelled()

    assert asyncio.run(asyncio.wait_for(scenario(), BOUND_S))


def test_a_term_whose_lease_may_have_expired_before_its_first_refresh_ends() -> None:
    expired = Term(epoch=TERM.epoch, lease_id=TERM.lease_id, instance="a",
                   started_at=time.monotonic() - SETTINGS.ttl_s)
    ended = keep(Opener(), expired)
    assert "no keepalive succeeded" in ended.reason
