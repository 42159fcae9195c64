"""Agent sessions in worker processes (``scheduler.session_workers``, ``scheduler.session_worker``): real
worker processes following simulated hosts over real gRPC. The leader's remote sessions become complete
as the workers' sessions do, calls are relayed with their outcome (a container, or the agent's error and
trailers), a silent host reads as silent, the autoscaler's usage arrives once asked for, a killed worker
is replaced and its hosts followed again, a worker whose leader's loop hangs past the hang limit ends
(and a term's hosts are followed again, parked ones not) while one whose leader runs stays, closing leaves
no process — and a whole term of the controller
places and runs a service through workers; the instance's workers outlive a term, whose sessions the next
term adopts without relisting any host."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from bench.sim.host import HostSpec, SimHost
from proto.agent.v1 import agent_pb2 as pb
from scheduler import gc_pauses
from scheduler import session_wire as wire
from scheduler.controller import Controller, ControllerSettings, _followed
from scheduler.model import LABEL_GENERATION, LABEL_REPLICA, LABEL_SERVICE, HostId, ReplicaPhase
from scheduler.observed import ContainerState, HostObservation, ObservedContainer
from scheduler.placement.registry import default_profile
from scheduler.session_workers import RemoteSession, SessionWorkers
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord
from scheduler.timings import NO_TIMINGS, Timings
from tests.fixtures import scheduler_records as build
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import BOUND_S, until
from tests.fixtures.timings import KeptTimings

HEARTBEAT = 0.5


class Fleet:
    def __init__(self, hosts: list[SimHost], pool: SessionWorkers) -> None:
        self.hosts = hosts
        self.pool = pool
        self.changes: list[HostId] = []
        self.sessions = [pool.session(HostId(h.spec.host_id), h.spec.address, on_change=self.changes.append)
                         for h in hosts]
        for session in self.sessions:
            session.start()


@contextlib.asynccontextmanager
async def fleet(count: int, *, workers: int = 2, usage_interval: float | None = 0.0,
                reports_per_second: float = 1700.0, hang_limit: float = 0.0) -> AsyncIterator[Fleet]:
    hosts = [SimHost(HostSpec(name=f"worker-test-{i}", port=free_port(), usage_interval=0.1))
             for i in range(count)]
    for host in hosts:
        await host.start()
    pool = SessionWorkers(workers, credentials=None, heartbeat_timeout=HEARTBEAT,
                          usage_interval=usage_interval, usage_reports_per_second=reports_per_second,
                          hang_limit=hang_limit)
    await pool.start()
    try:
        yield Fleet(hosts, pool)
    finally:
        await pool.close()
        for host in hosts:
            await host.stop()


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 4 * BOUND_S))


def create_request(cid: str) -> pb.CreateContainerRequest:
    spec = pb.ContainerSpec(image="busybox:1", command=["sleep", "600"],
                            labels={LABEL_SERVICE: "web", LABEL_REPLICA: cid, LABEL_GENERATION: "1"})
    return pb.CreateContainerRequest(id=cid, name=cid, start=True, spec=spec)


def test_remote_sessions_follow_their_hosts_and_relay_calls() -> None:
    async def scenario() -> None:
        async with fleet(3) as f:
            await until(lambda: all(_followed(s) and s.info is not None for s in f.sessions))
            assert {f.pool.worker_of(s.host) for s in f.sessions} <= {0, 1}
            session = f.sessions[0]
            created = await session.containers.CreateContainer(create_request("web-1"), timeout=BOUND_S)
            assert created.id == "web-1"
            session.apply(created)  # as the actuator does: known at once
            assert "web-1" in session.observation.containers
            # The worker's own session has it too: the states it sends keep it, and it comes up running.
            await until(lambda: session.observation.containers["web-1"].ready)
            assert f.hosts[0].containers.keys() == {"web-1"}
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await session.containers.GetContainer(pb.ContainerRef(id="nope"), timeout=BOUND_S)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # only the actuator's calls are relayed
                await session.containers.PruneContainers(pb.ContainerRef(id="x"), timeout=BOUND_S)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "PruneContainers is not relayed" in (refused.value.details() or "")
            await session.containers.RemoveContainer(pb.RemoveContainerRequest(id="web-1", force=True),
                                                     timeout=BOUND_S)
            session.forget("web-1")
            await until(lambda: not f.hosts[0].containers)
            assert "web-1" not in session.observation.containers
            assert session.host in f.changes

    run(scenario())


def test_workers_ask_agents_for_usage_at_the_leaders_interval() -> None:
    async def scenario() -> None:
        async with fleet(2, usage_interval=0.2) as f:
            await until(lambda: all(_followed(s) for s in f.sessions))
            assert [h.usage_intervals_asked for h in f.hosts] == [[0.2], [0.2]]

    run(scenario())


def test_the_leader_hears_from_each_worker_with_no_changes_and_knows_as_of_when() -> None:
    """Each worker sends a stamped batch at least every BEAT_S, changes or not: what the leader has not
    read of a worker is how late its view of that worker's hosts may be (a lost host's grace is counted
    only that far)."""
    async def scenario() -> None:
        async with fleet(0, workers=2) as f:  # no host: beats alone
            stamps = [w.heard_through for w in f.pool._workers]
            await until(lambda: all(w.heard_through > t
                                    for w, t in zip(f.pool._workers, stamps, strict=True)))
            hosts = [HostId(f"h{i}") for i in range(8)]
            assert {f.pool.worker_of(h) for h in hosts} == {0, 1}
            for host in hosts:
                heard = f.pool._workers[f.pool.worker_of(host)].heard_through
                assert 0 <= f.pool.unheard(host) <= time.time() - heard

    run(scenario())


def test_with_auto_a_worker_paces_its_sessions_by_how_many_hosts_it_follows() -> None:
    """--usage-interval auto: one report a second per host while a worker's hosts fit its budget; past
    it, every session of that worker asks again at the ladder's next step (here 1 report/s: 3 hosts,
    3 s), and none is relisted for it."""
    async def scenario() -> None:
        async with fleet(3, workers=1, usage_interval=None, reports_per_second=1.0) as f:
            await until(lambda: all(_followed(s) for s in f.sessions))
            await until(lambda: all(h.usage_intervals_asked[-1:] == [3.0] for h in f.hosts))
            assert all(h.calls["ListContainers"] == 1 for h in f.hosts)  # (sessions asked again, if
            # they had subscribed before the third host came: AgentSession.pace, tested on its own)
            assert all(_followed(s) for s in f.sessions)

    run(scenario())


def test_a_silent_host_reads_silent_and_its_usage_arrives_once_asked_for() -> None:
    async def scenario() -> None:
        async with fleet(2) as f:
            await until(lambda: all(_followed(s) for s in f.sessions))
            session = f.sessions[1]
            created = await session.containers.CreateContainer(create_request("web-2"), timeout=BOUND_S)
            session.apply(created)
            assert session.usage == {}  # asked for the first time: the worker starts sending it
            await until(lambda: "web-2" in session.usage)
            await f.hosts[1].fail("silent")
            await until(lambda: not session.observation.connected and "no report" in session.error)
            assert _followed(f.sessions[0])
            await f.hosts[1].recover()
            await until(lambda: _followed(session) and not session.error)

    run(scenario())


def test_the_leader_adds_up_what_its_workers_report_of_their_collections(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's batches carry its collections so far when there were more (``collect_rarely`` times
    them); the leader adds what is new to ``gc_pauses.workers``, which its ``/metrics`` export."""
    async def scenario() -> None:
        monkeypatch.setattr(gc_pauses, "workers", gc_pauses.Pauses())
        pool = SessionWorkers(1, credentials=None, heartbeat_timeout=HEARTBEAT)
        pool._closing = True  # the pipe's end below is not a worker to start again
        worker = pool._workers[0]
        ours, theirs = socket.socketpair()
        reader, our_writer = await asyncio.open_unix_connection(sock=ours)  # (kept: dropped, it closes)
        _, writer = await asyncio.open_unix_connection(sock=theirs)
        wire.send(writer, wire.States((), sent=1.0, gc=gc_pauses.Pauses(2, 0.5, 0.4, {0: 0.1, 2: 0.4})))
        wire.send(writer, wire.States((), sent=2.0))  # none since
        wire.send(writer, wire.States((), sent=3.0, gc=gc_pauses.Pauses(3, 0.7, 0.4, {0: 0.1, 2: 0.6})))
        writer.close()
        await pool._read(worker, reader)
        our_writer.close()
        assert worker.heard_through == 3.0
        assert worker.gc is not None and worker.gc.count == 3
        assert gc_pauses.workers.count == 3
        assert gc_pauses.workers.by_generation == pytest.approx({0: 0.1, 2: 0.6})

    run(scenario())


def test_a_killed_worker_is_replaced_and_its_hosts_followed_again() -> None:
    async def scenario() -> None:
        async with fleet(4, workers=2) as f:
            await until(lambda: all(_followed(s) for s in f.sessions))
            victim = f.sessions[0]
            index = f.pool.worker_of(victim.host)
            pid = f.pool.pids()[index]
            os.kill(pid, signal.SIGKILL)
            await until(lambda: f.pool.restarts == 1)
            assert f.pool.pids()[index] != pid
            await until(lambda: all(_followed(s) for s in f.sessions))
            created = await victim.containers.CreateContainer(create_request("web-3"), timeout=BOUND_S)
            assert created.id == "web-3"
            pids = f.pool.pids()
        for pid in pids:  # closed: every worker has ended and been reaped
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    run(scenario())


HANG_LIMIT_S = 1.0


@pytest.mark.parametrize("parked", [False, True], ids=["a term under way", "parked"])
def test_a_worker_whose_leader_hangs_past_the_limit_ends(parked: bool) -> None:
    async def scenario() -> None:
        async with fleet(3, workers=1, hang_limit=HANG_LIMIT_S) as f:
            await until(lambda: all(_followed(s) for s in f.sessions))
            [pid] = f.pool.pids()
            if parked:
                f.pool.park()  # the term ended: nobody needs these hosts but a next term here
            time.sleep(HANG_LIMIT_S + 2.5)  # this loop hung: no Alive, past the limit and the second look
            await until(lambda: f.pool.restarts == 1)  # it ended by itself: nobody killed it
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            if parked:
                assert f.pool.sessions == {}  # not followed again for nobody
            else:
                await until(lambda: all(_followed(s) for s in f.sessions))

    run(scenario())


def test_a_worker_whose_leader_runs_stays() -> None:
    async def scenario() -> None:
        async with fleet(2, workers=1, hang_limit=HANG_LIMIT_S) as f:
            await until(lambda: all(_followed(s) for s in f.sessions))
            await asyncio.sleep(3 * HANG_LIMIT_S)  # the loop runs: Alive every second
            assert f.pool.restarts == 0 and all(_followed(s) for s in f.sessions)

    run(scenario())


async def registered_hosts(store: MemoryStore, name: str, count: int = 3) -> list[SimHost]:
    """``count`` simulated hosts, started, with their host records in ``store``."""
    hosts = [SimHost(HostSpec(name=f"{name}-{i}", port=free_port(), usage_interval=0.1))
             for i in range(count)]
    for host in hosts:
        await host.start()
    await store.commit([base.Put(dataclasses.replace(build.host(h.spec.host_id), address=h.spec.address))
                        for h in hosts])
    return hosts


@contextlib.asynccontextmanager
async def a_term(name: str, timings: Timings = NO_TIMINGS,
                 **settings: Any) -> AsyncIterator[tuple[Controller, MemoryStore, list[SimHost]]]:
    """A leader's term over three registered simulated hosts, running until the block ends."""
    store = MemoryStore()
    hosts = await registered_hosts(store, name)
    lease = await store.grant_lease(10)
    epoch = (await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)).epoch
    controller = Controller(store, ControllerSettings(epoch=epoch, guard=base.LeaderGuard(epoch),
                                                      credentials=None, profile=default_profile(),
                                                      **settings), timings=timings)
    task = asyncio.create_task(controller.run())
    try:
        yield controller, store, hosts
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for host in hosts:
            await host.stop()


def test_with_auto_a_leader_paces_its_own_sessions_by_how_many_hosts_it_follows() -> None:
    async def scenario() -> None:
        paced = a_term("paced", usage_interval=None, usage_reports_per_second=1.0)  # 1 report a second
        async with paced as (controller, _, hosts):
            await until(lambda: len(controller.sessions) == 3
                        and all(_followed(s) for s in controller.sessions.values()))
            assert controller._pacer.interval == 3.0  # 3 hosts
            await until(lambda: all(h.usage_intervals_asked[-1:] == [3.0] for h in hosts))
            assert all(s.heartbeat_timeout == 6.0 for s in controller.sessions.values())

    run(scenario())


def test_a_term_places_and_runs_a_service_through_session_workers() -> None:
    timings = KeptTimings()

    async def scenario() -> None:
        async with a_term("term", timings, session_workers=2) as (controller, store, hosts):
            await until(lambda: len(controller.sessions) == 3)
            assert all(isinstance(s, RemoteSession) for s in controller.sessions.values())
            await store.commit([base.Put(build.service("web", replicas=6))])

            async def running() -> int:
                snap = await store.snapshot()
                return sum(r.phase is ReplicaPhase.RUNNING for r in snap.replicas.values())

            for _ in range(int(BOUND_S / 0.05)):  # bounded
                if await running() == 6:
                    break
                await asyncio.sleep(0.05)
            assert await running() == 6
            assert sum(len(h.containers) for h in hosts) == 6
            # Timed on the way (``scheduler.timings``): each launch to its answer, the workers' share of
            # the calls, how late the leader read them, and each replica from placement to running.
            assert timings.outcomes() == {"created": 6}
            assert {method for _, method in timings.worker_calls} <= {"CreateContainer", "CreateContainers"}
            assert timings.worker_calls and all(seconds > 0 for seconds, _ in timings.worker_calls)
            assert max(seconds for seconds, _ in timings.worker_calls) <= max(s for s, _ in timings.launches)
            assert timings.worker_delays
            await until(lambda: len(timings.starts) == 6)  # told once a write landed: after the store has it
            assert set(timings.starts) == set((await store.snapshot()).replicas)
            pids = controller.workers.pids() if controller.workers is not None else []
            assert len(pids) == 2
        for pid in pids:  # the term's end ended its workers
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    run(scenario())


def test_the_instances_workers_outlive_a_term_and_the_next_term_adopts_its_sessions_warm() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        hosts = await registered_hosts(store, "kept")
        pool = SessionWorkers(1, credentials=None, heartbeat_timeout=HEARTBEAT)  # the instance's

        async def term(instance: str) -> tuple[Controller, asyncio.Task[None], int]:
            lease = await store.grant_lease(10)
            epoch = (await store.campaign(LeaderRecord(instance=instance), lease_id=lease.id)).epoch
            settings = ControllerSettings(epoch=epoch, guard=base.LeaderGuard(epoch), credentials=None,
                                          profile=default_profile(), session_workers=1)
            controller = Controller(store, settings, workers=pool)
            task = asyncio.create_task(controller.run())
            await until(lambda: len(controller.sessions) == 3
                        and all(_followed(s) for s in controller.sessions.values()))
            return controller, task, lease.id

        async def end(task: asyncio.Task[None], lease: int) -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.expire_lease(lease)

        try:
            first, task, lease = await term("one")
            sessions = dict(pool.sessions)
            assert all(first.sessions[h] is s for h, s in sessions.items()) and len(sessions) == 3
            pids = pool.pids()
            await end(task, lease)
            assert pool.pids() == pids and all(s.parked for s in sessions.values())  # followed on
            listed = [h.calls["ListContainers"] for h in hosts]

            second, task, lease = await term("one")
            assert all(second.sessions[h] is s and not s.parked for h, s in sessions.items())
            assert [h.calls["ListContainers"] for h in hosts] == listed  # adopted warm: nothing relisted
            await store.commit([base.Put(build.service("web", replicas=3))])
            await until(lambda: sum(len(h.containers) for h in hosts) == 3)  # acts through them
            await end(task, lease)

            pool.drop_parked()  # as PARKED_S after a term that no other term on this instance follows
            assert pool.sessions == {}
            await until(lambda: all(h.usage_streams == 0 for h in hosts))  # the worker let them go
        finally:
            await pool.close()
            for host in hosts:
                await host.stop()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    run(scenario())


def test_a_state_wakes_a_pass_only_when_it_changes_what_a_pass_reads() -> None:
    """The worker sends a host's whole observation when its connection changed, else the containers that
    changed, and its report when new: a refreshed report alone (disk free, usage) wakes no pass."""
    pool = SessionWorkers(1, credentials=None, heartbeat_timeout=HEARTBEAT)  # no process: states by hand
    woken: list[HostId] = []
    host = HostId("h" * 32)
    session = pool.session(host, "127.0.0.1:1", on_change=woken.append)
    web = ObservedContainer(id="web-1", service=None, replica=None, generation=1,
                            state=ContainerState.RUNNING)
    info = pb.HostInfo(cpu_allocatable_millis=4000, disk_free_bytes=1)

    def state(observation: HostObservation | None = None, *containers: tuple[str, ObservedContainer | None],
              report: pb.HostInfo | None = None) -> wire.HostState:
        return wire.HostState(host=host, observation=observation, containers=containers, info=report,
                              error="", agent_down=False, silent=False, last_seen=1.0)

    connected = HostObservation(host=host, connected=True, complete=True)
    session.update(state(connected, report=info))
    assert woken == [host] and session.observation == connected and session.info == info
    session.update(state(HostObservation(host=host, connected=True, complete=True),
                         report=pb.HostInfo(cpu_allocatable_millis=4000, disk_free_bytes=2)))
    assert woken == [host] and session.observation is connected  # equal: the known object stays
    assert session.info is not None and session.info.disk_free_bytes == 2  # kept, for the next pass
    session.update(state(None, ("web-1", web)))
    assert woken == [host, host] and session.observation.containers == {"web-1": web}
    session.update(state(None, report=pb.HostInfo(cpu_allocatable_millis=2000)))
    assert len(woken) == 3  # the room changed
    session.update(state(None, ("web-1", None)))
    assert len(woken) == 4 and session.observation.containers == {}
