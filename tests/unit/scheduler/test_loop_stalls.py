"""scheduler/loop_stalls.py on fake clocks: a monitor wake-up later than the threshold is a stall of that
length (seen at once by whoever asks, before the monitor itself runs, and counted once), a shorter delay
is not, ``stalled_since`` counts only what lies after its time; and the controller's host grace is
extended by the leader's own stalls since the host became unreachable."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.agents import AgentSession
from scheduler.controller import Controller, ControllerSettings
from scheduler.loop_stalls import LoopStalls
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
