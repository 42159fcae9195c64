"""scheduler/loop_stalls.py on fake clocks: a monitor wake-up later than the threshold is a stall of that
length (seen at once by whoever asks, before the monitor itself runs, and counted once), a shorter delay
is not, ``stalled_since`` counts only what lies after its time; and the controller's host grace is
extended by the leader's own stalls since the host became unreachable, as far as the leader is still
behind reading its hosts (a session's ``LagFloor`` says how late each report is read)."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.agents import AgentSession
from scheduler.controller import Controller, ControllerSettings
from scheduler.loop_stalls import FLOOR_READS, READ_MARGIN_S, READ_WINDOW_S, LagFloor, LoopStalls
from scheduler.model import HostId, HostStatus
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.memory import MemoryStore


class Clocks:
    """A monotonic and a wall clock that move together, by hand."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 10_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def stalls_on(clocks: Clocks) -> LoopStalls:
    return LoopStalls(tick=0.1, threshold=0.25, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)


def test_a_late_wake_up_is_a_stall_of_its_length_counted_once() -> None:
    async def scenario() -> tuple[float, float, int, float, int]:
        clocks = Clocks()
        stalls = stalls_on(clocks)
        stalls.start()
        try:
            clocks.advance(0.1 + 3.0)   # due after 0.1 s, the loop ran again 3 s later
            seen = stalls.stalled()      # asked before the monitor ran: the stall is there already
            await asyncio.sleep(0.2)     # the monitor runs (its own late wake-up adds nothing)
            again, count = stalls.stalled(), stalls.count
            clocks.advance(0.1 + 0.2)   # 0.2 s late: under the threshold
            await asyncio.sleep(0.2)
            return seen, again, count, stalls.stalled(), stalls.count
        finally:
            await stalls.close()

    seen, again, count, after_short, count_after = asyncio.run(scenario())
    assert seen == pytest.approx(3.0)
    assert again == pytest.approx(3.0) and count == 1
    assert after_short == pytest.approx(3.0) and count_after == 1


def test_stalled_since_counts_only_what_lies_after_the_time() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        clocks = Clocks()
        stalls = stalls_on(clocks)
        stalls.start()
        try:
            start = clocks.wall
            clocks.advance(0.1 + 2.0)   # a stall of 2 s ending at start + 2.1
            stalls.stalled()
            clocks.advance(5.0)
            await asyncio.sleep(0.2)     # the monitor runs again: due 0.1 s from (its) now
            clocks.advance(0.1 + 1.0)   # a stall of 1 s
            stalls.stalled()
            end = clocks.wall
            return (stalls.stalled_since(start), stalls.stalled_since(start + 1.1),
                    stalls.stalled_since(start + 3.0), stalls.stalled_since(end))
        finally:
            await stalls.close()

    everything, part_of_first, second_only, none = asyncio.run(scenario())
    assert everything == pytest.approx(3.0)
    assert part_of_first == pytest.approx(1.0 + 1.0)   # the first stall's last second, and the second
    assert second_only == pytest.approx(1.0)
    assert none == 0.0


def test_a_monitor_not_started_sees_no_stall() -> None:
    clocks = Clocks()
    stalls = stalls_on(clocks)
    clocks.advance(60.0)
    assert (stalls.stalled(), stalls.stalled_since(0.0), stalls.count) == (0.0, 0.0, 0)


def test_the_host_grace_does_not_count_the_leaders_own_stalls() -> None:
    host = HostId("b" * 32)

    async def scenario() -> tuple[float, float]:
        clocks = Clocks()
        settings = ControllerSettings(epoch=1, guard=base.LeaderGuard(1), credentials=None,
                                      profile=default_profile())
        controller = Controller(MemoryStore(), settings)
        controller.stalls = stalls_on(clocks)
        controller.stalls.start()
        session = AgentSession(host, "127.0.0.1:1", credentials=None, on_change=lambda _h: None)
        session.started_at = 0.0  # followed since long before the host became unreachable
        controller.sessions[host] = session
        try:
            unreachable = HostStatus(id=host, ready=False, since=clocks.wall)
            before = controller._unreachable_since({host: unreachable})[host]
            clocks.advance(1.0)
            await asyncio.sleep(0.2)
            clocks.advance(0.1 + 4.0)   # the leader's loop stalled for 4 s meanwhile
            after = controller._unreachable_since({host: unreachable})[host]
            return after - before, unreachable.since
        finally:
            await controller.stalls.close()
            await session.close()

    moved, _ = asyncio.run(scenario())
    assert moved == pytest.approx(4.0)  # the grace runs out 4 s later than it would have


def test_a_floor_absorbs_the_clock_offset_and_says_how_late_a_report_is_read() -> None:
    floor = LagFloor()
    # A host whose clock is 30 s behind the leader's: its reports' lag is 30 s and a bit.
    lateness = [floor.late(30.02 + jitter, n / 10) for n, jitter in enumerate([0.01, 0.0, 0.03, 0.02, 0.01])]
    assert lateness == [None] * FLOOR_READS  # not trusted yet
    assert floor.late(30.04, 0.5) == pytest.approx(0.02, abs=0.01)
    assert floor.late(32.02, 0.6) == pytest.approx(2.0, abs=0.02)  # read 2 s late (a backlog)
    # Its clock set back by a second: lateness looks a second high, and the floor follows slowly.
    first = floor.late(31.02, 0.7)
    later = floor.late(31.02, 50.7)
    assert first is not None and later is not None
    assert first == pytest.approx(1.0, abs=0.02) and later == pytest.approx(0.5, abs=0.02)


def test_a_stall_is_excused_only_as_far_as_the_leader_is_still_behind() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        clocks = Clocks()
        stalls = stalls_on(clocks)
        stalls.start()
        try:
            no_reads = stalls.excused(3.0)     # nothing read yet: no evidence, the stall in full
            stalls.read(0.05)
            clocks.advance(0.01)
            caught_up = stalls.excused(3.0)    # others' reports read on time: only the margin
            stalls.read(2.5)                   # a backlog: a report read 2.5 s late
            backlog = stalls.excused(3.0)
            clocks.advance(READ_WINDOW_S + 0.1)  # nothing read since: stuck, or every host silent
            stuck = stalls.excused(3.0)
            return no_reads, caught_up, backlog, stuck
        finally:
            await stalls.close()

    no_reads, caught_up, backlog, stuck = asyncio.run(scenario())
    assert no_reads == stuck == 3.0
    assert caught_up == pytest.approx(0.05 + 0.01 + READ_MARGIN_S)
    assert backlog == pytest.approx(2.5 + READ_MARGIN_S)


def test_the_host_grace_counts_a_stall_the_leader_has_caught_up_on() -> None:
    """A host silent across a 4 s stall is lost on time once the leader reads every other host on time
    again (before, the 4 s were excused in full, and a mass failure's replacement passes held back the
    verdict on the rest of the lost hosts)."""
    host = HostId("c" * 32)

    async def scenario() -> float:
        clocks = Clocks()
        settings = ControllerSettings(epoch=1, guard=base.LeaderGuard(1), credentials=None,
                                      profile=default_profile())
        controller = Controller(MemoryStore(), settings)
        controller.stalls = stalls_on(clocks)
        controller.stalls.start()
        session = AgentSession(host, "127.0.0.1:1", credentials=None, on_change=lambda _h: None)
        session.started_at = 0.0
        session.error = "no report from the agent for 2.0 s (unreachable?)"
        controller.sessions[host] = session
        try:
            unreachable = HostStatus(id=host, ready=False, since=clocks.wall)
            before = controller._unreachable_since({host: unreachable})[host]
            clocks.advance(1.0)
            await asyncio.sleep(0.2)
            clocks.advance(0.1 + 4.0)   # the leader's loop stalled for 4 s
            controller.stalls.read(0.1)  # ... and reads the other hosts on time again
            after = controller._unreachable_since({host: unreachable})[host]
            return after - before
        finally:
            await controller.stalls.close()
            await session.close()

    assert asyncio.run(scenario()) == pytest.approx(0.1 + READ_MARGIN_S)
