"""The heartbeat watchdog does not blame a host for the leader's own stalls: the session's loop blocked
(``time.sleep``, as a long reconcile pass blocks it) for three heartbeat timeouts while the host kept
sending does not break the session — and does when the stall is not excused (the same block with a
threshold longer than it), which is what the watchdog did before; a host that really went silent is still
found across such a stall. A silence shorter than ``BREAK_AFTER`` timeouts makes the host not ready but
keeps the streams (no relist when it ends); a longer one breaks them. A silence no longer than other
hosts' reports are late when read (a backlog, no stall) is excused; with nothing else read, it is not.
Followed over real gRPC: a
simulated host (bench/sim) served from a thread and event loop of its own, so that it keeps sending
while the session's loop is blocked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from bench.sim.host import HostSpec, SimHost
from scheduler import session_breaks
from scheduler.agents import AgentSession
from scheduler.loop_stalls import FLOOR_READS, LoopStalls
from scheduler.model import HostId
from tests.fixtures.etcd import free_port

T = TypeVar("T")
BOUND_S = 15.0
TIMEOUT_S = 1.0        # the session's heartbeat timeout
BLOCKED_S = 3 * TIMEOUT_S


class HostThread:
    """A SimHost on a thread and event loop of its own."""

    def __init__(self, spec: HostSpec) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"sim-{spec.name}")
        self.spec = spec
        self.host: SimHost | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the host's loop and waits for it (blocking: only for short calls)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(BOUND_S)

    def __enter__(self) -> HostThread:
        self.thread.start()

        async def start() -> SimHost:
            host = SimHost(self.spec)
            await host.start()
            return host

        self.host = self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.host is not None:
            self.call(self.host.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(BOUND_S)
        self.loop.close()


class Watch:
    """Follows a session: whether it ever disconnected after it was first ready."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.session: AgentSession | None = None
        self.was_ready = False
        self.broke = 0

    def on_change(self, _host: HostId) -> None:
        assert self.session is not None
        obs = self.session.observation
        if obs.connected and obs.complete:
            self.was_ready = True
        elif self.was_ready and not obs.connected:
            self.broke += 1
        self.changed.set()

    async def until(self, what: Callable[[AgentSession], bool]) -> None:
        async def wait() -> None:
            assert self.session is not None
            while not what(self.session):
                self.changed.clear()
                with_poll = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait({with_poll}, timeout=0.05)  # last_seen moves without on_change
                with_poll.cancel()
        await asyncio.wait_for(wait(), BOUND_S)


def ready(session: AgentSession) -> bool:
    return session.observation.connected and session.observation.complete


class HostHere:
    """A SimHost on the session's own loop: blocked with it, it sends nothing during the block, and
    its first report after it comes back through the socket only after the overdue watchdog has run."""

    def __init__(self, spec: HostSpec) -> None:
        self.host = SimHost(spec)

    async def __aenter__(self) -> HostHere:
        await self.host.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.host.stop()


def follow(spec: HostSpec, stalls: LoopStalls,
           scenario: Callable[[Watch, SimHost, HostThread | None], Coroutine[Any, Any, T]], *,
           host_on_thread: bool = True) -> T:
    async def session_to(host: SimHost, sim: HostThread | None) -> T:
        stalls.start()
        watch = Watch()
        watch.session = AgentSession(HostId(spec.host_id), spec.address, credentials=None,
                                     on_change=watch.on_change, heartbeat_timeout=TIMEOUT_S, stalls=stalls)
        watch.session.start()
        try:
            await watch.until(ready)
            return await scenario(watch, host, sim)
        finally:
            await watch.session.close()
            await stalls.close()

    async def go() -> T:
        if host_on_thread:
            with HostThread(spec) as sim:
                assert sim.host is not None
                return await session_to(sim.host, sim)
        async with HostHere(spec) as here:
            return await session_to(here.host, None)

    return asyncio.run(asyncio.wait_for(go(), 4 * BOUND_S))


def test_a_blocked_loop_does_not_break_a_session_whose_host_kept_sending() -> None:
    spec = HostSpec(name="busy", port=free_port(), usage_interval=0.1)
    stalls = LoopStalls()

    async def scenario(watch: Watch, host: SimHost, sim: HostThread | None) -> tuple[int, int, str]:
        sent = host.calls.get("WatchUsage.snapshot", 0)
        time.sleep(BLOCKED_S)  # the leader's loop stuck in a long pass; the host keeps reporting
        assert host.calls.get("WatchUsage.snapshot", 0) > sent  # (it did send meanwhile)
        heard = time.time()
        # Reports heard after the block, then a heartbeat timeout more of them (the watchdog's next turn).
        await watch.until(lambda s: s.last_seen > heard + TIMEOUT_S or watch.broke > 0)
        assert watch.session is not None
        return watch.broke, stalls.count, watch.session.error

    broke, stalls_seen, error = follow(spec, stalls, scenario)
    assert broke == 0 and error == "" and stalls_seen >= 1


@pytest.mark.parametrize(("threshold", "breaks"), [(0.25, False), (10 * BLOCKED_S, True)],
                         ids=["stall excused", "stall not excused (as before)"])
def test_the_watchdog_excuses_the_silence_a_stall_caused(threshold: float, breaks: bool) -> None:
    # The host on the blocked loop too: the overdue watchdog runs before any report can arrive, so the
    # session breaks exactly when the stall is not excused.
    spec = HostSpec(name="here", port=free_port(), usage_interval=0.1)
    stalls = LoopStalls(threshold=threshold)

    async def scenario(watch: Watch, host: SimHost, sim: HostThread | None) -> tuple[int, int]:
        time.sleep(BLOCKED_S)
        heard = time.time()
        await watch.until(lambda s: (s.last_seen > heard + TIMEOUT_S and ready(s)) or watch.broke > 0)
        assert watch.session is not None
        return watch.broke, watch.session.stalls_excused

    broke, excused = follow(spec, stalls, scenario, host_on_thread=False)
    assert (broke, excused) == ((1, 0) if breaks else (0, 1))


def test_a_silent_host_is_still_found_across_a_stall() -> None:
    spec = HostSpec(name="gone", port=free_port(), usage_interval=0.1)
    stalls = LoopStalls()

    async def scenario(watch: Watch, host: SimHost, sim: HostThread | None) -> tuple[int, str, int]:
        assert sim is not None
        sim.call(host.fail("silent"))
        time.sleep(BLOCKED_S)  # the leader stalls too: that part of the silence is excused, the rest not
        await watch.until(lambda s: watch.broke > 0)
        assert watch.session is not None
        return watch.broke, watch.session.error, stalls.count

    broke, error, stalls_seen = follow(spec, stalls, scenario)
    assert broke == 1 and "no report from the agent" in error and stalls_seen >= 1


def test_a_short_silence_makes_the_host_not_ready_without_breaking_its_streams() -> None:
    spec = HostSpec(name="quiet", port=free_port(), usage_interval=0.1)
    stalls = LoopStalls()

    async def scenario(watch: Watch, host: SimHost, sim: HostThread | None) -> tuple[int, int, int, str]:
        assert sim is not None and watch.session is not None
        breaks_before = session_breaks.breaks.total["heartbeat missed"]
        sim.call(host.fail("silent"))  # reports stop, the streams stay open (a host too busy, a slow link)
        await watch.until(lambda s: s.silent)
        silent_error = watch.session.error
        assert not watch.session.observation.connected
        sim.call(host.recover())  # the same streams carry on
        await watch.until(ready)
        return (watch.broke, host.calls["ListContainers"],
                session_breaks.breaks.total["heartbeat missed"] - breaks_before, silent_error)

    broke, lists, breaks, error = follow(spec, stalls, scenario)
    assert "no report from the agent" in error
    assert (broke, lists, breaks) == (1, 1, 0)  # not ready once, never relisted


def test_a_silence_of_break_after_timeouts_breaks_the_streams_and_relists() -> None:
    spec = HostSpec(name="cut", port=free_port(), usage_interval=0.1)
    stalls = LoopStalls()

    async def scenario(watch: Watch, host: SimHost, sim: HostThread | None) -> tuple[int, int]:
        assert sim is not None
        breaks_before = session_breaks.breaks.total["heartbeat missed"]
        sim.call(host.fail("silent"))
        await watch.until(lambda s: session_breaks.breaks.total["heartbeat missed"] > breaks_before)
        sim.call(host.recover())
        await watch.until(ready)
        return host.calls["ListContainers"], session_breaks.breaks.total["heartbeat missed"] - breaks_before

    lists, breaks = follow(spec, stalls, scenario)
    assert (lists, breaks) == (2, 1)


def test_a_silence_no_longer_than_the_backlog_is_excused_and_found_once_nothing_else_is_read() -> None:
    spec = HostSpec(name="queued", port=free_port(), usage_interval=0.1)
    stalls = LoopStalls()
    backlog = 2.5 * TIMEOUT_S   # other hosts' reports are read this late: the loop is behind, not stalled
    silence = 2.2 * TIMEOUT_S   # ours is silent for less than that

    async def scenario(watch: Watch, host: SimHost, sim: HostThread | None) -> tuple[int, int, bool]:
        assert sim is not None and watch.session is not None
        for _ in range(FLOOR_READS):
            stalls.read(0.0)
        sim.call(host.fail("silent"))
        started = time.monotonic()
        while time.monotonic() - started < silence:  # the others' late reports, as a busy loop reads them
            stalls.read(backlog)
            await asyncio.sleep(0.05)
        went_silent = watch.session.silent or watch.broke > 0
        sim.call(host.recover())
        heard = time.time()
        await watch.until(lambda s: s.last_seen > heard)
        excused = watch.session.stalls_excused
        sim.call(host.fail("silent"))  # again, with nothing else read: no backlog to excuse it by
        await watch.until(lambda s: s.silent)
        return watch.broke, excused, went_silent

    broke, excused, went_silent = follow(spec, stalls, scenario)
    assert not went_silent and excused == 1
    assert broke == 1  # the second silence, found
