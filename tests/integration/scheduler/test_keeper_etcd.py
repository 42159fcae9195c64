"""The leader lease kept by a keeper process (``scheduler.keeper.ProcessKeepalive``) on real etcd: a leader
whose process is blocked (``time.sleep``, as a long garbage collection holds it) for three TTLs keeps its
term; the term ends, with its reason, when the lease is revoked, and the same keeper keeps the next one;
a keeper that dies ends the term it kept; and a scheduler SIGKILLed while leading takes its keeper along,
which revokes the lease (the key goes at once, not after the TTL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scheduler.election import Election, ElectionSettings
from scheduler.keeper import KEEPER_EXITED, ProcessKeepalive
from scheduler.store.etcd import EtcdSettings, EtcdStore
from tests.fixtures.etcd import EtcdCluster
from tests.integration.scheduler.test_keepalive_etcd import Leader, cancel, run

pytestmark = pytest.mark.integration

TTL_S = 2
LONG_TTL_S = 60  # a key that goes within the test's bounded wait was revoked, not expired
REPO = Path(__file__).resolve().parents[3]


def keepers(prefix: str) -> list[int]:
    """Pids of keeper processes for this test's prefix."""
    found = subprocess.run(["pgrep", "-f", f"scheduler.keeper .*--prefix {prefix}"], capture_output=True,
                           text=True, check=False).stdout.split()
    return [int(pid) for pid in found]


class Candidate:
    def __init__(self, endpoints: str, prefix: str) -> None:
        self.endpoints, self.prefix = endpoints, prefix
        self.leader = Leader()

    async def __aenter__(self) -> Candidate:
        self.store = await EtcdStore.open(EtcdSettings(self.endpoints, prefix=self.prefix))
        self.runner = ProcessKeepalive(self.endpoints, self.prefix)
        await self.runner.start()
        self.election = Election(self.store, ElectionSettings("a", ttl_s=TTL_S), keepalive=self.runner)
        self.task = asyncio.create_task(self.election.run(self.leader.lead))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self.task)
        await self.runner.close()
        await self.store.close()


def test_a_leader_blocked_longer_than_the_ttl_keeps_its_term(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async def scenario() -> None:
        async with Candidate(etcd.endpoints, etcd_prefix) as c:
            term = await c.leader.started.get()
            time.sleep(3 * TTL_S)  # the whole process stuck, as in a long collection
            holder = await c.store.get(c.store.schema.leader())
            assert holder is not None and holder.epoch == term.epoch
            assert c.election.term == term and c.leader.stopped.empty()
        assert keepers(etcd_prefix) == []  # closed with the runner

    run(scenario)


def test_terms_end_with_their_reason_and_the_keeper_serves_the_next(etcd: EtcdCluster,
                                                                    etcd_prefix: str) -> None:
    async def scenario() -> None:
        async with Candidate(etcd.endpoints, etcd_prefix) as c:
            term = await c.leader.started.get()
            [keeper] = keepers(etcd_prefix)
            await c.store.revoke_lease(term.lease_id)
            assert await c.leader.stopped.get() == term
            assert "deleted" in c.election.last_loss or "expired or was revoked" in c.election.last_loss
            second = await c.leader.started.get()
            assert second.epoch > term.epoch
            assert keepers(etcd_prefix) == [keeper]  # the same process keeps the new term

            os.kill(keeper, signal.SIGKILL)  # the keeper dies: the term it kept ends
            assert await c.leader.stopped.get() == second
            assert c.election.last_loss == KEEPER_EXITED
            third = await c.leader.started.get()  # a new keeper for the next term
            assert third.epoch > second.epoch
            assert len(keepers(etcd_prefix)) == 1 and keepers(etcd_prefix) != [keeper]
        assert keepers(etcd_prefix) == []

    run(scenario)


LEADER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from scheduler.election import Election, ElectionSettings
    from scheduler.keeper import ProcessKeepalive
    from scheduler.store.etcd import EtcdSettings, EtcdStore

    async def main(endpoints, prefix, ttl):
        store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix))
        keeper = ProcessKeepalive(endpoints, prefix)
        await keeper.start()
        election = Election(store, ElectionSettings("doomed", ttl_s=int(ttl)), keepalive=keeper)
        async def lead(term):
            print("leading", term.epoch, flush=True)
            await asyncio.Event().wait()
        await election.run(lead)

    asyncio.run(main(*sys.argv[1:]))
""")


def test_a_killed_leaders_keeper_revokes_its_lease(etcd: EtcdCluster, etcd_prefix: str) -> None:
    argv = [sys.executable, "-c", LEADER_SCRIPT, etcd.endpoints, etcd_prefix, str(LONG_TTL_S)]
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("leading")
        assert len(keepers(etcd_prefix)) == 1
        proc.kill()
        proc.wait()

        async def key_gone() -> None:
            store = await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix))
            try:
                deadline = time.monotonic() + LONG_TTL_S / 4
                while await store.get(store.schema.leader()) is not None:  # bounded by the deadline
                    assert time.monotonic() < deadline, "the lease was not revoked"
                    await asyncio.sleep(0.05)
            finally:
                await store.close()

        run(key_gone)
        deadline = time.monotonic() + 10
        while keepers(etcd_prefix):  # bounded: the keeper exits once it has revoked
            assert time.monotonic() < deadline, "the keeper outlived its scheduler"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in keepers(etcd_prefix):
            os.kill(pid, signal.SIGKILL)
