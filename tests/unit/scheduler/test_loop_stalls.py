"""scheduler/loop_stalls.py on fake clocks: a monitor wake-up later than the threshold is a stall of that
length (seen at once by whoever asks, before the monitor itself runs, and counted once), a shorter delay
is not, ``stalled_since`` counts only what lies after its time; and the controller's host grace is
extended by the leader's own stalls since the host became unreachable, as far as the leader is still
behind reading its hosts (a report's age when read, over the least age any report had); a host's silence
is excused as far as other hosts' reports are late, stalls or not, and not at all with nothing read."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator

import pytest

from scheduler import loop_stalls
from scheduler.agents import AgentSession
from scheduler.controller import Controller, ControllerSettings
from scheduler.loop_stalls import FLOOR_READS, READ_MARGIN_S, READ_WINDOW_S, LoopStalls
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


@contextlib.asynccontextmanager
async def leading(host: HostId, clocks: Clocks, *, error: str = "") -> AsyncIterator[Controller]:
    """A controller whose stall monitor runs on ``clocks``, following ``host`` since long before it
    became unreachable (``error``: its session has failed too)."""
    settings = ControllerSettings(epoch=1, guard=base.LeaderGuard(1), credentials=None,
                                  profile=default_profile())
    controller = Controller(MemoryStore(), settings)
    controller.stalls = stalls_on(clocks)
    controller.stalls.start()
    session = AgentSession(host, "127.0.0.1:1", credentials=None, on_change=lambda _h: None)
    session.started_at = 0.0
    session.error = error
    controller.sessions[host] = session
    try:
        yield controller
    finally:
        await controller.stalls.close()
        await session.close()


def test_the_host_grace_does_not_count_the_leaders_own_stalls() -> None:
    host = HostId("b" * 32)

    async def scenario() -> tuple[float, float]:
        clocks = Clocks()
        async with leading(host, clocks) as controller:
            unreachable = HostStatus(id=host, ready=False, since=clocks.wall)
            before = controller._unreachable_since({host: unreachable})[host]
            clocks.advance(1.0)
            await asyncio.sleep(0.2)
            clocks.advance(0.1 + 4.0)   # the leader's loop stalled for 4 s meanwhile
            after = controller._unreachable_since({host: unreachable})[host]
            return after - before, unreachable.since

    moved, _ = asyncio.run(scenario())
    assert moved == pytest.approx(4.0)  # the grace runs out 4 s later than it would have


def test_lateness_is_a_reports_age_over_the_least_age_any_report_had() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        clocks = Clocks()
        stalls = stalls_on(clocks)
        stalls.start()
        try:
            # Hosts whose clocks are 30 s behind the leader's: reports are 30 s old and a bit when read.
            for n in range(FLOOR_READS):
                stalls.read(30.02 + (n % 3) / 100)
            untrusted = stalls.behind()           # too few reads to know the floor
            stalls.read(30.05)
            on_time = stalls.behind()
            clocks.advance(READ_WINDOW_S + 0.1)
            stalls.read(32.02)                    # a backlog: read 2 s later than the best
            backlog = stalls.behind()
            # A host whose first reports were read late (its own floor would have been 2 s high).
            stalls.read(34.02)
            return untrusted, on_time, backlog, stalls.behind()
        finally:
            await stalls.close()

    untrusted, on_time, backlog, later_host = asyncio.run(scenario())
    assert untrusted == math.inf
    assert on_time == pytest.approx(0.03 + READ_MARGIN_S)
    assert backlog == pytest.approx(2.0 + READ_MARGIN_S, abs=0.01)
    assert later_host == pytest.approx(4.0 + READ_MARGIN_S, abs=0.01)


def test_a_stall_is_excused_only_as_far_as_the_leader_is_still_behind() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        clocks = Clocks()
        stalls = stalls_on(clocks)
        stalls.start()
        try:
            no_reads = stalls.excused(3.0)     # nothing read yet: no evidence, the stall in full
            for _ in range(FLOOR_READS):
                stalls.read(0.01)
            stalls.read(0.06)
            clocks.advance(0.01)
            caught_up = stalls.excused(3.0)    # others' reports read on time: only the margin
            stalls.read(2.51)                  # a backlog: a report read 2.5 s late
            backlog = stalls.excused(3.0)
            clocks.advance(READ_WINDOW_S + 0.1)  # nothing read since: stuck, or every host silent
            stuck = stalls.excused(3.0)
            return no_reads, caught_up, backlog, stuck
        finally:
            await stalls.close()

    no_reads, caught_up, backlog, stuck = asyncio.run(scenario())
    assert no_reads == stuck == 3.0
    assert caught_up == pytest.approx(0.05 + 0.01 + READ_MARGIN_S, abs=1e-3)
    assert backlog == pytest.approx(2.5 + READ_MARGIN_S, abs=1e-3)


def test_a_silence_is_excused_as_far_as_other_hosts_reports_are_late_stalls_or_not() -> None:
    async def scenario() -> list[float]:
        clocks = Clocks()
        stalls = stalls_on(clocks)
        stalls.start()
        try:
            seen = [stalls.excused_silence(4.0, 0.0)]  # nothing read yet: no backlog shown
            for _ in range(FLOOR_READS):
                stalls.read(0.01)
            stalls.read(0.02)
            seen.append(stalls.excused_silence(4.0, 0.0))  # on time: next to nothing
            stalls.read(3.01)                              # others' reports read 3 s late, no stall
            seen.append(stalls.excused_silence(4.0, 0.0))
            seen.append(stalls.excused_silence(2.0, 0.0))  # never more than the silence
            seen.append(stalls.excused_silence(4.0, 3.5))  # a stall as well: the larger, not the sum
            clocks.advance(READ_WINDOW_S + 0.1)            # nothing read since: every host silent
            seen.append(stalls.excused_silence(4.0, 0.0))
            seen.append(stalls.excused_silence(4.0, 2.0))  # ... or the loop stuck: its stall in full
            return seen
        finally:
            await stalls.close()

    none_read, on_time, backlog, short, with_stall, all_silent, stuck = asyncio.run(scenario())
    assert none_read == 0.0 and all_silent == 0.0
    assert on_time == pytest.approx(0.01)
    assert backlog == pytest.approx(3.0)
    assert short == 2.0
    assert with_stall == pytest.approx(3.0 + READ_MARGIN_S)  # the stall, as far as the leader is behind
    assert stuck == 2.0


def test_the_host_grace_counts_a_stall_the_leader_has_caught_up_on() -> None:
    """A host silent across a 4 s stall is lost on time once the leader reads every other host on time
    again (before, the 4 s were excused in full, and a mass failure's replacement passes held back the
    verdict on the rest of the lost hosts)."""
    host = HostId("c" * 32)

    async def scenario() -> float:
        clocks = Clocks()
        async with leading(host, clocks, error="no report from the agent for 2.0 s (unreachable?)") \
                as controller:
            unreachable = HostStatus(id=host, ready=False, since=clocks.wall)
            before = controller._unreachable_since({host: unreachable})[host]
            clocks.advance(1.0)
            await asyncio.sleep(0.2)
            clocks.advance(0.1 + 4.0)   # the leader's loop stalled for 4 s
            for _ in range(FLOOR_READS):  # ... and reads the other hosts on time again
                controller.stalls.read(0.01)
            controller.stalls.read(0.11)
            after = controller._unreachable_since({host: unreachable})[host]
            return after - before

    assert asyncio.run(scenario()) == pytest.approx(0.1 + READ_MARGIN_S)


def test_stalled_since_is_the_sum_of_the_stalls_after_the_time_also_once_old_ones_are_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bisection over running totals answers what walking every remembered stall answered: each
    stall after the time counts whole, the one the time falls in only for its part after it."""
    monkeypatch.setattr(loop_stalls, "REMEMBERED", 8)
    stalls = LoopStalls()
    rng = random.Random(15)
    remembered: list[tuple[float, float]] = []
    end = 1000.0
    for _ in range(50):
        length = rng.uniform(0.1, 3.0)
        end += rng.uniform(0.0, 2.0) + length  # stalls follow each other, never overlapping
        remembered.append((end, length))
        stalls._remember(end, length)

    def walked(t: float) -> float:
        return sum(min(length, ended - t) for ended, length in remembered if ended > t)

    # Every time from the start of the last 8 stalls on, inside stalls, between them and after all.
    times = [remembered[-8][0] - remembered[-8][1] + k * 0.37 for k in range(60)]
    assert all(stalls.stalled_since(t) == pytest.approx(walked(t)) for t in times)
    assert stalls.stalled_since(end) == 0.0

