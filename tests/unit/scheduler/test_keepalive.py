"""scheduler/keepalive.py's ``ThreadedKeepalive`` with a scripted store opened on its thread: the term's
lease is kept from a thread and loop of its own (the store is opened there, not on the caller's loop),
keeps being refreshed while the caller's loop is blocked, and the term ends — with the thread stopped and
its store closed — when the lease is gone, the key is deleted or replaced, refreshes fail for
``step_down_after``, opening the store fails, or ``keep`` is cancelled. (Real etcd:
tests/integration/scheduler/test_keepalive_etcd.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from scheduler.election import ElectionSettings, Term
from scheduler.keepalive import ThreadedKeepalive
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
        self.schema = KeySchema()

    async def refresh_lease(self, lease_id: int) -> int:
        if self.lease == "gone":
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        if self.lease == "unreachable":
            raise StoreUnavailable("etcd unreachable (scripted)")
        self.refreshes += 1
        self.refreshed.set()
        return SETTINGS.ttl_s

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
    return [t for t in threading.enumerate() if t.name.startswith("election-keepalive-")]


def keep(opener: Opener, term: Term = TERM) -> str:
    async def scenario() -> str:
        return await ThreadedKeepalive(opener).keep(term, SETTINGS, clock=time.monotonic)

    return asyncio.run(asyncio.wait_for(scenario(), BOUND_S))


def started_now() -> Term:
    return Term(epoch=TERM.epoch, lease_id=TERM.lease_id, instance="a", started_at=time.monotonic())


@pytest.mark.parametrize(("script", "why"), [
    ({"lease": "gone"}, "the lease expired or was revoked"),
    ({"key_deleted": True}, "the leader key was deleted"),
    ({"holder_epoch": None}, "the leader key was deleted"),
    ({"holder_epoch": 9}, "the leader key now belongs to epoch 9"),
    ({"lease": "unreachable"}, "no keepalive succeeded for"),
])
def test_the_term_ends_and_the_thread_stops_with_its_store_closed(script: dict[str, Any], why: str) -> None:
    opener = Opener(**script)
    reason = keep(opener, started_now())
    assert why in reason
    [store] = opener.stores
    assert store.thread.startswith("election-keepalive-7") and store.thread != threading.current_thread().name
    assert store.closed
    assert keepalive_threads() == []


def test_a_store_that_cannot_be_opened_ends_the_term_with_its_error() -> None:
    with pytest.raises(StoreUnavailable, match="no etcd here"):
        keep(Opener(StoreUnavailable("no etcd here")))
    assert keepalive_threads() == []


def test_the_lease_is_refreshed_while_the_callers_loop_is_blocked_and_cancelling_stops_the_thread() -> None:
    opener = Opener()

    async def scenario() -> tuple[int, int, bool]:
        keeping = asyncio.create_task(ThreadedKeepalive(opener).keep(started_now(), SETTINGS,
                                                                     clock=time.monotonic))
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
        return during, len(keepalive_threads()), ended_meanwhile

    during, threads_left, ended_meanwhile = asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
    assert during >= 2 and not ended_meanwhile  # kept every TTL/3 all along (6 s / 0.67 s: about 9)
    assert threads_left == 0
    assert opener.stores[0].closed
