"""scheduler/liveness.py and the term it ends: ``LoopAlive`` notes when its loop last ran; ``hung_for``
returns once a loop has been silent past the limit on two looks, never for a silence that ended between
them or for a loop that runs; ``ThreadedKeepalive`` ends the term of a leader whose loop is blocked past
the hang limit, revoking its lease first, and keeps it below; the settings refuse a limit that a running
loop could exceed. (A keeper process and two real schedulers on etcd:
tests/integration/scheduler/test_hung_leader_etcd.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from scheduler.election import ElectionSettings
from scheduler.keepalive import ThreadedKeepalive
from scheduler.liveness import CONFIRM_S, LoopAlive, hung_for
from tests.unit.scheduler.test_keepalive import SETTINGS, Opener, keepalive_threads, started_now

T = TypeVar("T")
BOUND_S = 15.0
LIMIT_S = 1.0


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, BOUND_S))


def test_loop_alive_notes_its_loop_running_and_not_while_it_is_blocked() -> None:
    async def scenario() -> tuple[float, float, list[float]]:
        ticks: list[float] = []
        alive = LoopAlive(every=0.05, on_tick=ticks.append)
        alive.start()
        await asyncio.sleep(0.3)
        running = alive.silent_for()
        time.sleep(0.5)  # the loop blocked: no tick can run
        blocked = alive.silent_for()
        await alive.close()
        return running, blocked, ticks

    running, blocked, ticks = run(scenario())
    assert blocked >= 0.5 and running < blocked  # no tick ran while it was blocked
    assert len(ticks) >= 2 and ticks == sorted(ticks)  # the first at once, more while it slept


def test_a_silent_loop_is_found_hung_past_the_limit() -> None:
    async def scenario() -> tuple[float, float]:
        stuck = time.monotonic()
        start = time.monotonic()
        silent = await hung_for(lambda: stuck, LIMIT_S)
        return silent, time.monotonic() - start

    silent, took = run(scenario())
    assert silent > LIMIT_S and took >= LIMIT_S + CONFIRM_S - 0.05  # the second look came after the first


def test_a_silence_that_ends_before_the_second_look_is_no_hang() -> None:
    now = 100.0
    looks = iter([0.0, 99.9, 0.0, 0.0])  # over the limit, then alive again, then over twice

    async def scenario() -> int:
        seen = 0

        def alive() -> float:
            nonlocal seen
            seen += 1
            return next(looks)

        await hung_for(alive, LIMIT_S, clock=lambda: now)
        return seen

    assert run(scenario()) == 4  # returned only on the fourth look, not the second


def test_a_running_loop_is_never_found_hung() -> None:
    async def scenario() -> bool:
        alive = LoopAlive()
        alive.start()
        try:
            await asyncio.wait_for(hung_for(lambda: alive.at, LIMIT_S), 3 * LIMIT_S)
        except TimeoutError:
            return False
        finally:
            await alive.close()
        return True

    assert run(scenario()) is False


def test_a_hang_limit_a_running_loop_could_exceed_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("hang limit must be 0 (none) or at least 1 s")):
        ElectionSettings("a", hang_limit_s=0.5)
    assert ElectionSettings("a", hang_limit_s=0).hang_limit_s == 0
    assert ElectionSettings("a").hang_limit_s == 60.0


@pytest.mark.parametrize(("blocked_s", "hung"), [(LIMIT_S + 2.0, True), (LIMIT_S / 2, False)],
                         ids=["blocked past the limit", "blocked below it"])
def test_the_threaded_keepalive_lets_a_hung_leaders_term_go_and_revokes_its_lease(blocked_s: float,
                                                                                  hung: bool) -> None:
    opener = Opener()
    settings = replace(SETTINGS, hang_limit_s=LIMIT_S)

    async def scenario() -> tuple[bool, str, bool]:
        runner = ThreadedKeepalive(opener)
        keeping = asyncio.create_task(runner.keep(started_now(), settings, clock=time.monotonic))
        while not opener.stores or not opener.stores[0].refreshed.is_set():  # bounded by BOUND_S
            await asyncio.sleep(0.01)
        time.sleep(blocked_s)  # this loop stuck: nothing on it runs, the thread's loop does
        # What the thread's loop did meanwhile reaches this one through its callbacks: let them run.
        await asyncio.wait({keeping}, timeout=CONFIRM_S)
        ended = keeping.done()
        reason = keeping.result() if ended else ""
        if not ended:
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
        await runner.close()
        return ended, reason, opener.stores[0].revoked

    ended, reason, revoked = run(scenario())
    assert keepalive_threads() == []
    if hung:  # ended while this loop was still blocked, the lease revoked for the next leader
        assert ended and "no sign of life" in reason and "--leader-hang-limit 1s" in reason
        assert revoked
    else:
        assert not ended and not revoked
