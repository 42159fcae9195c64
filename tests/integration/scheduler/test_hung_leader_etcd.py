"""A hung leader lets its term go (``--leader-hang-limit``, scheduler/liveness.py), on real etcd.

The lease is kept off the leader's event loop, so a loop that never runs again used to keep its term for
as long as its keeper lived: nothing was placed or replaced meanwhile. Here: an election whose loop is
blocked past the hang limit loses its term, with the hang as the reason, and its lease is revoked (the
TTL is a minute, so a next term within seconds proves the revoke); with two real ``shoal-scheduler
serve`` instances, the leader's process stopped (SIGSTOP; its keeper process runs on) is replaced by the
other within the limit, and once it runs again it follows, saying why it lost its term — while with the
limit off, the stopped leader keeps its term; and ``/healthz`` answers 503 while the loop is hung, and
``shoal_scheduler_event_loop_silent_seconds`` says for how long."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import httpd
from scheduler.election import Election, ElectionSettings
from scheduler.keepalive import KeepaliveRunner, ThreadedKeepalive
from scheduler.keeper import ProcessKeepalive
from scheduler.liveness import LoopAlive
from scheduler.metrics import SchedulerMetrics
from scheduler.store.etcd import EtcdSettings, EtcdStore
from tests.fixtures.etcd import EtcdCluster
from tests.fixtures.sigstop import freeze
from tests.integration.scheduler.test_keepalive_etcd import Leader, cancel, run
from tests.integration.scheduler.test_schedulers_etcd import list_schedulers, poll, started

pytestmark = pytest.mark.integration

HANG_LIMIT_S = 2.0
LONG_TTL_S = 60   # a lease that goes within seconds was revoked, not expired
NEXT_TERM_S = 15.0  # bound on the next term after the loop runs again (the TTL would take a minute)


@pytest.mark.parametrize("keeper", ["process", "thread"])
def test_a_leader_whose_loop_hangs_past_the_limit_loses_its_term_and_its_lease(
        etcd: EtcdCluster, etcd_prefix: str, keeper: str) -> None:
    async def scenario() -> None:
        settings = EtcdSettings(etcd.endpoints, prefix=etcd_prefix)
        store = await EtcdStore.open(settings)
        runner: KeepaliveRunner = (ProcessKeepalive(etcd.endpoints, etcd_prefix) if keeper == "process"
                                   else ThreadedKeepalive(lambda: EtcdStore.open(settings)))
        if isinstance(runner, ProcessKeepalive):
            await runner.start()  # as the scheduler does: not timed within the hang below
        leader = Leader()
        election = Election(store, ElectionSettings("a", ttl_s=LONG_TTL_S, hang_limit_s=HANG_LIMIT_S),
                            keepalive=runner)
        task = asyncio.create_task(election.run(leader.lead))
        try:
            term = await leader.started.get()
            time.sleep(HANG_LIMIT_S + 3.0)  # the loop hung: past the limit and the keeper's second look
            assert await leader.stopped.get() == term
            assert "no sign of life" in election.last_loss, election.last_loss
            second = await asyncio.wait_for(leader.started.get(), NEXT_TERM_S)  # the lease was revoked
            assert second.epoch > term.epoch
        finally:
            await cancel(task)
            await runner.close()
            await store.close()

    run(scenario)


def leads(address: str) -> str:
    reply: pb.ListSchedulersResponse = list_schedulers(address)
    return reply.leader


def health(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_stopped_leader_is_replaced_within_the_limit_and_follows_when_it_runs_again(
        etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> None:
    with started(etcd, etcd_prefix, tmp_path, "--leader-hang-limit", str(HANG_LIMIT_S)) as both:
        logs = [i.log for i in both]
        first = poll("a leader", lambda: leads(both[0].address) or None, logs)
        hung = next(i for i in both if i.id == first)
        other = next(i for i in both if i is not hung)
        freeze(hung.proc.pid)  # its process only: its keeper (a child process) runs on
        try:
            poll("the other instance leads", lambda: leads(other.address) == other.id or None, logs)
            assert "no sign of life" in hung.log.read_text()  # the keeper said why, for the hung one
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)

        def followed() -> bool | None:
            text = hung.log.read_text()
            return ("lost leadership" in text and "no sign of life" in text.split("lost leadership", 1)[1]
                    and leads(hung.address) == other.id) or None

        poll("the hung one, running again, follows and says why", followed, logs)
        assert health(f"http://{hung.http}/healthz") == (200, "ok\n")
        assert leads(other.address) == other.id


def test_with_no_limit_a_stopped_leader_keeps_its_term(etcd: EtcdCluster, etcd_prefix: str,
                                                       tmp_path: Path) -> None:
    with started(etcd, etcd_prefix, tmp_path, "--leader-hang-limit", "0") as both:
        logs = [i.log for i in both]
        first = poll("a leader", lambda: leads(both[0].address) or None, logs)
        hung = next(i for i in both if i.id == first)
        other = next(i for i in both if i is not hung)
        freeze(hung.proc.pid)
        try:
            time.sleep(3 * HANG_LIMIT_S)  # what the test above waits at most, and more
            assert leads(other.address) == hung.id  # before this change, whatever the limit
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)


def silent_seconds(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    [value] = [float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("shoal_scheduler_event_loop_silent_seconds ")]
    return value


def test_healthz_answers_503_and_metrics_say_how_long_while_the_event_loop_is_hung() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    alive = LoopAlive()
    asyncio.run_coroutine_threadsafe(_start(alive), loop).result(timeout=5)
    metrics = SchedulerMetrics()
    metrics.follow_loop(alive)
    server = httpd.serve("127.0.0.1:0", metrics, alive=alive, hang_limit=1.0)
    url = f"http://127.0.0.1:{server.port}/healthz"
    scrape = f"http://127.0.0.1:{server.port}/metrics"
    stuck = threading.Event()  # the loop is held until this is set (bounded: 30 s at most)
    try:
        assert health(url) == (200, "ok\n")
        running = silent_seconds(scrape)
        loop.call_soon_threadsafe(stuck.wait, 30.0)
        deadline = time.monotonic() + 10
        while (answer := health(url))[0] == 200:  # bounded by the deadline
            assert time.monotonic() < deadline, "never 503"
            time.sleep(0.05)
        assert answer[0] == 503 and answer[1].startswith("hung: the event loop has not run for ")
        # Scraped from the server's thread while the loop is still held: silent past the limit, which
        # /healthz found first, and longer than while it ran.
        hung = silent_seconds(scrape)
        assert hung >= 1.0 and running < hung
        stuck.set()
        deadline = time.monotonic() + 10
        while health(url)[0] != 200:  # and healthy again once it runs
            assert time.monotonic() < deadline, "never healthy again"
            time.sleep(0.05)
    finally:
        stuck.set()
        server.close()
        asyncio.run_coroutine_threadsafe(alive.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _start(alive: LoopAlive) -> None:
    alive.start()
