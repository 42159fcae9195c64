"""The election's lease kept from a thread of its own (``ThreadedKeepalive``) on real etcd: a leader whose
event loop is blocked (``time.sleep``) for three TTLs keeps its term — where the in-loop keepalive loses
it —, and the term ends when the leader key is deleted, when the lease is revoked, and when etcd stops
answering; every term's etcd connection is closed when the term ends, and the keepalive's thread ends
with the runner's ``close``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable

import aetcd
import pytest

from scheduler.election import Election, ElectionSettings, Term
from scheduler.keepalive import InLoopKeepalive, KeepaliveRunner, ThreadedKeepalive
from scheduler.store.base import Store
from scheduler.store.etcd import EtcdSettings, EtcdStore
from tests.fixtures.etcd import EtcdCluster

pytestmark = pytest.mark.integration

HANG_GUARD_S = 60.0
TTL_S = 2


class TrackedStore(EtcdStore):
    """An EtcdStore that notes being closed."""

    closed = 0

    async def close(self) -> None:
        await super().close()
        TrackedStore.closed += 1


class Opener:
    """The keepalive's second connection: a TrackedStore on the same settings as the main store."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.opened = 0

    async def __call__(self) -> Store:
        self.opened += 1
        return await TrackedStore.open(self.settings)


class Leader:
    """A ``lead`` callback that runs until cancelled, reporting each term's start and end."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[Term] = asyncio.Queue()
        self.stopped: asyncio.Queue[Term] = asyncio.Queue()

    async def lead(self, term: Term) -> None:
        self.started.put_nowait(term)
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.put_nowait(term)


def keepalive_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "election-keepalive"]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Candidate:
    """One election on ``endpoints`` with the threaded keepalive (or ``runner``), and its ``Leader``."""

    def __init__(self, endpoints: str, prefix: str, *, threaded: bool = True) -> None:
        self.settings = EtcdSettings(endpoints, prefix=prefix)
        self.opener = Opener(self.settings)
        self.threaded = threaded
        self.leader = Leader()

    async def __aenter__(self) -> Candidate:
        self.store = await EtcdStore.open(self.settings)
        self.runner: KeepaliveRunner = (ThreadedKeepalive(self.opener) if self.threaded
                                        else InLoopKeepalive(self.store))
        self.election = Election(self.store, ElectionSettings("a", ttl_s=TTL_S), keepalive=self.runner)
        self.task = asyncio.create_task(self.election.run(self.leader.lead))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self.task)
        await self.runner.close()  # as the scheduler does at its end
        await self.store.close()


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded keepalive", "in-loop keepalive"])
def test_a_leader_whose_loop_is_blocked_longer_than_the_ttl_keeps_its_term(etcd: EtcdCluster,
                                                                           etcd_prefix: str,
                                                                           threaded: bool) -> None:
    async def scenario() -> None:
        async with Candidate(etcd.endpoints, etcd_prefix, threaded=threaded) as c:
            term = await c.leader.started.get()
            time.sleep(3 * TTL_S)  # the leader's loop stuck in a long pass
            # A round trip to etcd: any end of term the keepalive reported meanwhile is delivered by now.
            holder = await c.store.get(c.store.schema.leader())
            if threaded:
                assert holder is not None and holder.epoch == term.epoch
                assert c.election.term == term and c.leader.stopped.empty()
            else:  # what happened before: the term is lost, and the leader's work cancelled
                assert await c.leader.stopped.get() == term
                assert c.election.term != term
        assert keepalive_threads() == []

    run(scenario)


@pytest.mark.parametrize("how", ["delete the key", "revoke the lease"])
def test_the_term_ends_when_the_key_goes_and_its_thread_and_connection_end(etcd: EtcdCluster,
                                                                          etcd_prefix: str, how: str) -> None:
    async def scenario() -> None:
        TrackedStore.closed = 0
        async with Candidate(etcd.endpoints, etcd_prefix) as c:
            term = await c.leader.started.get()
            assert len(keepalive_threads()) == 1
            other = await EtcdStore.open(c.settings)
            try:
                if how == "revoke the lease":
                    await other.revoke_lease(term.lease_id)
                else:  # a person deleting the key by hand
                    await delete_key(etcd.endpoints, other.schema.leader().key)
            finally:
                await other.close()
            assert await c.leader.stopped.get() == term
            assert "deleted" in c.election.last_loss or "expired or was revoked" in c.election.last_loss
            second = await c.leader.started.get()  # it campaigns again and wins: a new term, a new thread
            assert second.epoch > term.epoch
        assert keepalive_threads() == []
        # One connection per term (the second term may be stopped before it opened one), each closed.
        assert TrackedStore.closed == c.opener.opened >= 1

    run(scenario)


def test_the_term_ends_when_etcd_stops_answering(etcd_private: EtcdCluster, etcd_prefix: str) -> None:
    async def scenario() -> None:
        async with Candidate(etcd_private.endpoints, etcd_prefix) as c:
            term = await c.leader.started.get()
            etcd_private.pause(0)
            try:
                assert await c.leader.stopped.get() == term
                assert "no keepalive succeeded" in c.election.last_loss or "failed" in c.election.last_loss
            finally:
                etcd_private.resume(0)
        assert keepalive_threads() == []

    run(scenario)


async def delete_key(endpoints: str, key: str) -> None:
    host, _, port = endpoints.split(",")[0].removeprefix("http://").rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        await client.delete(key.encode())
