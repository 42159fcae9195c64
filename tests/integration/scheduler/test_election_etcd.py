"""Leader election on real etcd: a follower takes over when the leader's process is SIGKILLed (once the
dead leader's lease has run out), at once when the leader resigns, a deposed leader's writes are refused,
and a leader cut off from etcd stops before another instance is elected."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aetcd
import pytest

from scheduler.election import Election, ElectionSettings, Term
from scheduler.store.base import Put
from scheduler.store.errors import NotLeader
from scheduler.store.etcd import EtcdSettings, EtcdStore
from tests.fixtures import scheduler_records as build
from tests.fixtures.etcd import EtcdCluster
from tests.fixtures.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
HANG_GUARD_S = 60.0
LONG_TTL_S = 120  # longer than the hang guard: a takeover that waited for this TTL fails the test


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))  # type: ignore[arg-type]


class Leader:
    """A ``lead`` callback that runs until cancelled, noting when each term started and stopped."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[tuple[Term, float]] = asyncio.Queue()
        self.stopped: asyncio.Queue[tuple[Term, float]] = asyncio.Queue()

    async def lead(self, term: Term) -> None:
        self.started.put_nowait((term, time.monotonic()))
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.put_nowait((term, time.monotonic()))


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def lease_ttl(endpoints: str, lease_id: int) -> int:
    """etcd's remaining TTL of a lease (-1: expired or revoked)."""
    host, _, port = endpoints.split(",")[0].removeprefix("http://").rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        ttl: int = (await client.get_lease_info(lease_id, keys=False)).TTL
        return ttl


def test_a_follower_takes_over_from_a_killed_leader_once_its_lease_ran_out(etcd: EtcdCluster,
                                                                             etcd_prefix: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.scheduler.election_process",
                             etcd.endpoints, etcd_prefix, "a", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        _, epoch_a, lease_a = proc.stdout.readline().split()  # blocks until it leads (hang: pytest timeout)

        async def scenario() -> None:
            store = await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix))
            election = Election(store, ElectionSettings("b", ttl_s=2))
            b = Leader()
            task = asyncio.create_task(election.run(b.lead))
            while election.leader is None:
                await asyncio.sleep(0.01)
            assert election.leader.instance == "a" and election.leader.epoch == int(epoch_a)
            killed_at = time.monotonic()
            proc.kill()
            proc.wait()
            term, started_at = await b.started.get()
            assert term.epoch > int(epoch_a)
            assert await lease_ttl(etcd.endpoints, int(lease_a)) == -1  # b won because a's lease expired
            with pytest.raises(NotLeader):
                await store.commit([Put(build.replica())], guard=Term(int(epoch_a), 0, "a", 0).guard)
            print(f"takeover {started_at - killed_at:.2f}s after SIGKILL (TTL 2 s)")
            await cancel(task)
            await store.close()

        run(scenario)
    finally:
        proc.kill()
        proc.wait()


def test_a_resigning_leader_hands_over_without_waiting_for_its_lease(etcd: EtcdCluster,
                                                                    etcd_prefix: str) -> None:
    async def scenario() -> None:
        stores = [await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix)) for _ in range(2)]
        a, b = Leader(), Leader()
        task_a = asyncio.create_task(Election(stores[0], ElectionSettings("a", ttl_s=LONG_TTL_S)).run(a.lead))
        first, _ = await a.started.get()
        election_b = Election(stores[1], ElectionSettings("b", ttl_s=LONG_TTL_S))
        task_b = asyncio.create_task(election_b.run(b.lead))
        while election_b.leader is None:
            await asyncio.sleep(0.01)
        await cancel(task_a)  # a clean shutdown resigns
        second, _ = await b.started.get()
        assert second.epoch > first.epoch and second.instance == "b"
        assert await lease_ttl(etcd.endpoints, first.lease_id) == -1
        await cancel(task_b)
        assert await stores[0].get(stores[0].schema.leader()) is None
        for store in stores:
            await store.close()

    run(scenario)


def test_a_deposed_leader_is_stopped_and_its_writes_refused(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async def scenario() -> None:
        stores = [await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix)) for _ in range(2)]
        a, b = Leader(), Leader()
        election_a = Election(stores[0], ElectionSettings("a", ttl_s=LONG_TTL_S))
        task_a = asyncio.create_task(election_a.run(a.lead))
        old, _ = await a.started.get()
        await stores[0].commit([Put(build.replica("web", 0))], guard=old.guard)
        task_b = asyncio.create_task(Election(stores[1], ElectionSettings("b", ttl_s=LONG_TTL_S)).run(b.lead))
        await stores[1].revoke_lease(old.lease_id)  # as if etcd had expired it
        stopped, _ = await a.stopped.get()
        assert stopped == old
        # Whichever it notices first: its keepalive failing, or the watch seeing the key go.
        assert "lease expired or" in election_a.last_loss or "leader key was deleted" in election_a.last_loss
        new = await asyncio.wait_for(first_started(a, b), HANG_GUARD_S)
        assert new.epoch > old.epoch
        with pytest.raises(NotLeader) as caught:
            await stores[0].commit([Put(build.replica("web", 1))], guard=old.guard)
        assert caught.value.current_epoch == new.epoch
        await stores[1].commit([Put(build.replica("web", 1))], guard=new.guard)
        await cancel(task_a)
        await cancel(task_b)
        for store in stores:
            await store.close()

    run(scenario)


async def first_started(*leaders: Leader) -> Term:
    tasks = [asyncio.ensure_future(leader.started.get()) for leader in leaders]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    term, _ = next(iter(done)).result()
    return term


def test_a_leader_cut_off_from_etcd_stops_before_another_is_elected(etcd: EtcdCluster,
                                                                   etcd_prefix: str) -> None:
    async def scenario() -> None:
        member = etcd.members[0]
        async with TcpProxy("127.0.0.1", member.client_port) as proxy:
            store_a = await EtcdStore.open(EtcdSettings(proxy.url, prefix=etcd_prefix))
            store_b = await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix))
            a, b = Leader(), Leader()
            election_a = Election(store_a, ElectionSettings("a", ttl_s=2))
            task_a = asyncio.create_task(election_a.run(a.lead))
            term_a, _ = await a.started.get()
            task_b = asyncio.create_task(Election(store_b, ElectionSettings("b", ttl_s=2)).run(b.lead))
            proxy.partition()
            stopped, stopped_at = await a.stopped.get()
            term_b, started_at = await b.started.get()
            assert stopped == term_a and "no keepalive" in election_a.last_loss
            assert stopped_at < started_at and term_b.epoch > term_a.epoch
            print(f"a stopped {started_at - stopped_at:.2f}s before b was elected")
            await cancel(task_b)
            await cancel(task_a)
            await store_a.close()
            await store_b.close()

    run(scenario)
