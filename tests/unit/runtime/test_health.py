from __future__ import annotations

import asyncio

import pytest

from agent.errors import InvalidArgument
from agent.runtime import health
from agent.runtime.health import HealthCheck, HealthMonitor, HealthState, HealthStatus, ProbeKind

STARTING, HEALTHY, UNHEALTHY = HealthStatus.STARTING, HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


def check(**kw: object) -> HealthCheck:
    base: dict[str, object] = {"kind": ProbeKind.EXEC, "command": ("true",), "interval": 1.0, "timeout": 1.0,
                               "retries": 3}
    base.update(kw)
    return HealthCheck(**base)  # type: ignore[arg-type]


class FakeTime:
    """A clock that moves only when the monitor sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # still a suspension point, like a real sleep


def drive(chk: HealthCheck, outcomes: list[bool], *, state: HealthState | None = None
          ) -> tuple[list[HealthStatus], list[tuple[HealthStatus, HealthStatus]]]:
    """Run a monitor over scripted probe results; return the status after each and the changes seen."""
    fake = FakeTime()
    script = iter(outcomes)
    changes: list[tuple[HealthStatus, HealthStatus]] = []

    async def probe() -> tuple[bool, str]:
        ok = next(script)
        return ok, "ok" if ok else "boom"

    def on_result(old: HealthState, new: HealthState) -> None:
        if old.status is not new.status:
            changes.append((old.status, new.status))

    monitor = HealthMonitor(chk, started_at=fake.now, state=state or HealthState(), probe=probe,
                            on_result=on_result, clock=fake.clock, sleep=fake.sleep)

    async def scenario() -> list[HealthStatus]:
        seen = []
        for _ in outcomes:
            await fake.sleep(chk.interval)
            seen.append((await monitor.probe_once()).status)
        return seen

    return asyncio.run(scenario()), changes


def test_one_success_makes_it_healthy() -> None:
    seen, changes = drive(check(), [True])
    assert seen == [HEALTHY] and changes == [(STARTING, HEALTHY)]


def test_unhealthy_after_retries_consecutive_failures_then_healthy_again() -> None:
    seen, changes = drive(check(retries=3), [True, False, False, True, False, False, False, True])
    assert seen == [HEALTHY, HEALTHY, HEALTHY, HEALTHY, HEALTHY, HEALTHY, UNHEALTHY, HEALTHY]
    assert changes == [(STARTING, HEALTHY), (HEALTHY, UNHEALTHY), (UNHEALTHY, HEALTHY)]


def test_failures_in_the_start_period_do_not_count() -> None:
    # interval 1 s, start period 2.5 s: probes at t=1 and t=2 are inside it, t=3 onwards count.
    seen, _ = drive(check(retries=2, start_period=2.5), [False, False, False, False])
    assert seen == [STARTING, STARTING, STARTING, UNHEALTHY]


def test_without_a_start_period_failures_count_from_the_first_probe() -> None:
    seen, _ = drive(check(retries=2), [False, False])
    assert seen == [STARTING, UNHEALTHY]


def test_a_success_in_the_start_period_ends_it() -> None:
    # Once healthy, failures count even inside the start period (Docker does the same).
    seen, _ = drive(check(retries=2, start_period=100), [True, False, False])
    assert seen == [HEALTHY, HEALTHY, UNHEALTHY]


def test_log_keeps_the_last_five_results_oldest_first() -> None:
    state = HealthState()
    chk = check()
    for i in range(8):
        result = health.HealthResult(start=float(i), end=float(i) + 0.5, ok=True, output=str(i))
        state = health.apply_result(state, result, check=chk, in_start_period=False)
    assert [r.output for r in state.log] == ["3", "4", "5", "6", "7"]


def test_outputs_are_truncated() -> None:
    text = "é" * 5000
    out = health.truncate_output(text)
    assert len(out.encode()) <= health.OUTPUT_MAX + len("…".encode())
    assert out.endswith("…") and health.truncate_output("short") == "short"


def test_monitor_run_probes_every_interval_and_records_a_hung_probe_as_a_failure() -> None:
    fake = FakeTime()
    results: list[HealthState] = []
    calls = 0

    async def probe() -> tuple[bool, str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.Event().wait()  # never answers: the monitor's own deadline ends it
        return True, "ok"

    async def scenario() -> None:
        chk = check(interval=5.0, timeout=0.01)
        done = asyncio.Event()

        def on_result(old: HealthState, new: HealthState) -> None:
            results.append(new)
            if len(results) == 3:
                done.set()

        monitor = HealthMonitor(chk, started_at=fake.now, state=HealthState(), probe=probe,
                                on_result=on_result, clock=fake.clock, sleep=fake.sleep, grace=0.0)
        task = asyncio.create_task(monitor.run())
        await asyncio.wait_for(done.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    first = results[:3]
    assert [r.log[-1].ok for r in first] == [True, False, True]
    assert "timed out" in first[1].log[-1].output
    assert [r.log[-1].start for r in first] == [1005.0, 1010.0, 1015.0]


@pytest.mark.parametrize(("kw", "message"), [
    ({"command": ()}, "needs a command"),
    ({"kind": ProbeKind.TCP, "port": 0}, "port"),
    ({"kind": ProbeKind.HTTP, "port": 80, "path": "health"}, "path"),
    ({"interval": 0}, "positive"),
    ({"retries": 0}, "retries"),
    ({"start_period": -1}, "start period"),
])
def test_invalid_checks_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check(**kw)


