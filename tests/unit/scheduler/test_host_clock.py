"""A new leader keeps the previous leader's host clock once it has confirmed the loss itself.

``Controller._unreachable_since`` counts a host's grace from the recorded status change (written by
whichever leader lost the host), but never from before this leader's session to the host started while
that session may still connect: a new leader gives every host the whole grace to be reached. Once its
own session has failed (an error, or its watchdog found the host silent), the recorded time counts, so
a term change does not restart the grace of hosts that are already gone; the time a session has spent
connecting alone confirms nothing."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from bench.sim.host import HostSpec, SimHost
from scheduler.agents import AgentSession
from scheduler.controller import Controller, ControllerSettings
from scheduler.model import HostId, HostStatus
from scheduler.placement.registry import default_profile
from scheduler.session_workers import SessionWorkers
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import until

HOST = HostId("c" * 32)


def controller_with_session() -> tuple[Controller, AgentSession]:
    settings = ControllerSettings(epoch=2, guard=base.LeaderGuard(2), credentials=None,
                                  profile=default_profile())
    controller = Controller(MemoryStore(), settings)
    # Never started: its state is set by hand, as the session's loop would set it.
    session = AgentSession(HOST, "127.0.0.1:1", credentials=None, on_change=lambda _h: None)
    controller.sessions[HOST] = session
    return controller, session


def since(controller: Controller, status: HostStatus) -> float:
    return controller._unreachable_since({HOST: status})[HOST]


def test_a_session_still_connecting_gets_the_whole_grace() -> None:
    async def go() -> None:
        controller, session = controller_with_session()
        lost_long_ago = HostStatus(id=HOST, ready=False, since=session.started_at - 600.0)
        try:
            assert since(controller, lost_long_ago) == session.started_at
        finally:
            await session.close()

    asyncio.run(go())


def test_a_failed_session_confirms_the_previous_leaders_clock() -> None:
    async def go() -> None:
        controller, session = controller_with_session()
        lost_long_ago = HostStatus(id=HOST, ready=False, since=session.started_at - 600.0)
        session.error = "UNAVAILABLE: no usage for 2.0s"
        try:
            assert since(controller, lost_long_ago) == lost_long_ago.since
        finally:
            await session.close()

    asyncio.run(go())


def test_time_spent_connecting_confirms_nothing_the_sessions_own_silence_does() -> None:
    """A session may wait its turn to connect (scheduler.connect_gate) or sit behind a busy session
    worker: how long it has been connecting says nothing about the host. Its watchdog finding the host
    silent for the heartbeat timeout from the attempt's start does (the silence is its error)."""
    async def go() -> None:
        mute = SimHost(HostSpec(name="mute", port=free_port(), usage_interval=0.1))
        await mute.start()
        await mute.fail("silent")  # the port open, nothing answered: a dead machine behind a live switch
        controller = Controller(MemoryStore(), ControllerSettings(
            epoch=2, guard=base.LeaderGuard(2), credentials=None, profile=default_profile()))
        session = AgentSession(HOST, mute.spec.address, credentials=None, on_change=lambda _h: None,
                               heartbeat_timeout=0.5)
        controller.sessions[HOST] = session
        session.started_at = time.time() - 60.0  # connecting (or waiting to) for a minute
        lost_long_ago = HostStatus(id=HOST, ready=False, since=session.started_at - 600.0)
        try:
            assert since(controller, lost_long_ago) == session.started_at
            session.start()
            await until(lambda: session.silent)
            assert "no report from the agent" in session.error
            assert since(controller, lost_long_ago) == lost_long_ago.since
        finally:
            await session.close()
            await mute.stop()

    asyncio.run(go())


def test_a_loss_this_leader_recorded_counts_from_when_it_was_recorded() -> None:
    async def go() -> None:
        controller, session = controller_with_session()
        session.error = "UNAVAILABLE: connection refused"
        lost_now = HostStatus(id=HOST, ready=False, since=session.started_at + 30.0)
        try:
            assert since(controller, lost_now) == lost_now.since
        finally:
            await session.close()

    asyncio.run(go())


def test_a_ready_host_has_no_clock() -> None:
    async def go() -> None:
        controller, session = controller_with_session()
        session.error = "UNAVAILABLE: connection refused"
        try:
            assert controller._unreachable_since({HOST: HostStatus(id=HOST, ready=True, since=0.0)}) == {}
        finally:
            await session.close()

    asyncio.run(go())


def test_a_host_no_leader_has_judged_yet_counts_from_this_leaders_session() -> None:
    """No status record yet (``since`` 0): a failed session must not date the loss to 1970 (which moved
    a freshly registered host's replicas at once)."""
    async def go() -> None:
        controller, session = controller_with_session()
        session.error = "UNAVAILABLE: connection refused"
        try:
            assert since(controller, HostStatus(id=HOST)) == session.started_at
        finally:
            await session.close()

    asyncio.run(go())


def test_with_session_workers_a_lost_host_is_judged_on_what_the_leader_has_read_not_its_stalls() -> None:
    """With workers the leader knows its hosts as of the newest batch it has read from their worker: a
    host unreachable since S is lost once that batch is from S + grace or later, whatever the leader's
    own loop did meanwhile (its stalls were excused in full, and a mass failure's passes pushed the
    rest of its lost hosts back by their own length: docs/scaling.md, part 10)."""
    async def go() -> None:
        pool = SessionWorkers(1, credentials=None, heartbeat_timeout=2.0)  # never started: stamps by hand
        settings = ControllerSettings(epoch=2, guard=base.LeaderGuard(2), credentials=None,
                                      profile=default_profile(), session_workers=1)
        controller = Controller(MemoryStore(), settings, workers=pool)
        session = pool.session(HOST, "127.0.0.1:1", on_change=lambda _h: None)
        session.started_at = time.time() - 600.0
        session.error = "no report from the agent for 6.0 s (unreachable?)"
        controller.sessions[HOST] = cast(AgentSession, session)
        controller.stalls._total, controller.stalls._ends = 30.0, [time.time()]  # a long stall: no matter
        controller.stalls._totals = [0.0, 30.0]
        now = time.time()
        status = HostStatus(id=HOST, ready=False, since=now - 10.0)
        pool._workers[0].heard_through = now - 4.0  # read up to 4 s ago: the view is 4 s late
        late = since(controller, status)
        assert status.since + 4.0 <= late <= status.since + 4.0 + (time.time() - now)
        pool._workers[0].heard_through = time.time()  # caught up
        assert since(controller, status) - status.since < 1.0

    asyncio.run(go())
