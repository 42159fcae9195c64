"""The pure core: each fact about a container → its new lifecycle and the actions that follow."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from agent.runtime import core
from agent.runtime.events import EventType
from agent.runtime.health import HealthCheck, HealthResult, HealthState, HealthStatus, ProbeKind
from agent.runtime.restart import RestartMode, RestartPolicy
from agent.runtime.state import State

NOW = 1_000_000.0
NO = core.Policy(restart=RestartPolicy())
ALWAYS = core.Policy(restart=RestartPolicy(RestartMode.ALWAYS))
ON_FAILURE_2 = core.Policy(restart=RestartPolicy(RestartMode.ON_FAILURE, max_retries=2))


def running(**changes: object) -> core.Lifecycle:
    lc = core.Lifecycle(state=State.RUNNING, pid=42, started_at=NOW - 1)
    return replace(lc, **changes)  # type: ignore[arg-type]


def kinds(step: core.Step) -> list[EventType]:
    return [a.kind for a in step.actions if isinstance(a, core.Emit)]


def has(step: core.Step, kind: type) -> bool:
    return any(isinstance(a, kind) for a in step.actions)


def test_an_exit_with_no_restart_policy_is_final() -> None:
    step = core.exited("c", running(), code=3, sig=None, oom=False, finished_at=NOW, policy=NO, now=NOW)
    assert step.lifecycle.state is State.EXITED and step.lifecycle.pid == 0
    assert step.lifecycle.exit == core.ExitStatus(3, "Error")
    assert kinds(step) == [EventType.EXITED]
    assert has(step, core.SaveStatus) and has(step, core.StopHealth) and not has(step, core.ScheduleRestart)


def test_auto_remove_follows_the_first_exit_only() -> None:
    policy = core.Policy(restart=RestartPolicy(), auto_remove=True)
    step = core.exited("c", running(), code=0, sig=None, oom=False, finished_at=NOW, policy=policy, now=NOW)
    assert has(step, core.AutoRemove)
    again = core.exited("c", step.lifecycle, code=0, sig=None, oom=False, finished_at=NOW, policy=policy,
                        now=NOW)
    assert not has(again, core.AutoRemove)


def test_always_waits_out_a_backoff_in_restarting_and_keeps_counting() -> None:
    step = core.exited("c", running(), code=0, sig=None, oom=False, finished_at=NOW, policy=ALWAYS, now=NOW)
    lc = step.lifecycle
    assert lc.state is State.RESTARTING and lc.next_restart_at == pytest.approx(NOW + 0.1)
    assert core.ScheduleRestart(NOW + 0.1) in step.actions
    assert kinds(step) == [EventType.EXITED, EventType.RESTARTING]
    restarting = [a for a in step.actions if isinstance(a, core.Emit) and a.kind is EventType.RESTARTING]
    assert restarting[0].restart_count == 1
    due = core.restart_due("c", lc, now=NOW + 0.1)
    assert due is not None and due.lifecycle.state is State.STARTING
    assert due.lifecycle.restart_count == 1 and due.lifecycle.next_restart_at is None


def test_the_same_exit_is_acted_on_once() -> None:
    first = core.exited("c", running(), code=1, sig=None, oom=False, finished_at=NOW, policy=ALWAYS, now=NOW)
    # Reported again (at recovery, the run record says the same exit): no second event, no second count.
    again = core.exited("c", replace(first.lifecycle, state=State.RUNNING), code=1, sig=None, oom=False,
                        finished_at=NOW, policy=ALWAYS, now=NOW + 5)
    assert kinds(again) == []
    assert again.lifecycle.state is State.RESTARTING
    assert core.ScheduleRestart(first.lifecycle.next_restart_at or 0) in again.actions  # due at the same time


def test_stop_wins_over_a_pending_restart() -> None:
    restarting = core.exited("c", running(), code=1, sig=None, oom=False, finished_at=NOW, policy=ALWAYS,
                             now=NOW).lifecycle
    step = core.stop_requested("c", restarting, now=NOW)
    assert step.lifecycle.state is State.EXITED and step.lifecycle.stopped_by_user
    assert step.lifecycle.next_restart_at is None and has(step, core.CancelRestart)
    assert core.restart_due("c", step.lifecycle, now=NOW + 1) is None


def test_a_stopped_container_is_not_restarted_when_it_exits() -> None:
    lc = running(stopped_by_user=True)
    step = core.exited("c", lc, code=143, sig=15, oom=False, finished_at=NOW, policy=ALWAYS, now=NOW)
    assert step.lifecycle.state is State.EXITED and not has(step, core.ScheduleRestart)


def test_on_failure_counts_its_retries_and_ignores_clean_exits() -> None:
    assert core.exited("c", running(), code=0, sig=None, oom=False, finished_at=NOW, policy=ON_FAILURE_2,
                       now=NOW).lifecycle.state is State.EXITED
    assert core.exited("c", running(restart_count=1), code=1, sig=None, oom=False, finished_at=NOW,
                       policy=ON_FAILURE_2, now=NOW).lifecycle.state is State.RESTARTING
    assert core.exited("c", running(restart_count=2), code=1, sig=None, oom=False, finished_at=NOW,
                       policy=ON_FAILURE_2, now=NOW).lifecycle.state is State.EXITED


def test_an_oom_kill_is_two_events_and_a_failure() -> None:
    step = core.exited("c", running(), code=137, sig=9, oom=True, finished_at=NOW, policy=ON_FAILURE_2,
                       now=NOW)
    assert step.lifecycle.exit == core.ExitStatus(137, "OOMKilled")
    assert kinds(step) == [EventType.OOM_KILLED, EventType.EXITED, EventType.RESTARTING]


@pytest.mark.parametrize(("code", "sig", "kill_reason", "reason"), [
    (0, None, "", "Completed"), (2, None, "", "Error"), (137, signal.SIGKILL, "", "Killed"),
    (137, signal.SIGKILL, "Unhealthy", "Unhealthy"), (143, signal.SIGTERM, "", "Error"),
])
def test_exit_reasons(code: int, sig: int | None, kill_reason: str, reason: str) -> None:
    step = core.exited("c", running(kill_reason=kill_reason), code=code, sig=sig, oom=False, finished_at=NOW,
                       policy=NO, now=NOW)
    assert step.lifecycle.exit is not None and step.lifecycle.exit.reason == reason
    assert step.lifecycle.kill_reason == ""  # used once


def test_a_users_failed_start_is_reported_and_not_retried() -> None:
    starting = core.start("c", core.Lifecycle(), automatic=False, now=NOW).lifecycle
    step = core.launch_failed("c", starting, kind="not-found", error="no sh", finished_at=NOW,
                              automatic=False, policy=ALWAYS, now=NOW)
    assert step.lifecycle.state is State.EXITED
    assert step.lifecycle.exit == core.ExitStatus(127, "StartFailed", "no sh")
    assert kinds(step) == [EventType.START_FAILED] and not has(step, core.ScheduleRestart)


def test_an_automatic_restart_that_fails_to_launch_backs_off_again() -> None:
    lc = core.Lifecycle(state=State.RESTARTING, restart_count=0, backoff_streak=1, next_restart_at=NOW)
    due = core.restart_due("c", lc, now=NOW)
    assert due is not None
    step = core.launch_failed("c", due.lifecycle, kind="setup", error="no cgroup", finished_at=NOW,
                              automatic=True, policy=ALWAYS, now=NOW)
    assert step.lifecycle.state is State.RESTARTING and step.lifecycle.backoff_streak == 2
    assert step.lifecycle.next_restart_at == pytest.approx(NOW + 0.2)


def test_a_users_start_resets_the_restart_bookkeeping() -> None:
    lc = core.Lifecycle(state=State.EXITED, restart_count=4, backoff_streak=3, stopped_by_user=True)
    step = core.start("c", lc, automatic=False, now=NOW)
    assert step.lifecycle.state is State.STARTING
    assert (step.lifecycle.restart_count, step.lifecycle.backoff_streak, step.lifecycle.stopped_by_user) == (
        0, 0, False)
    assert has(step, core.CancelRestart)


def test_a_launch_that_could_not_begin_goes_back() -> None:
    exited = core.Lifecycle(state=State.EXITED, exit=core.ExitStatus(1, "Error"), finished_at=NOW - 5)
    step = core.start("c", exited, automatic=False, now=NOW)
    back = core.start_aborted("c", step.lifecycle, previous=exited, now=NOW)
    assert back.lifecycle.state is State.EXITED and back.lifecycle.exit == core.ExitStatus(1, "Error")
    assert kinds(back) == []
    fresh = core.start("c", core.Lifecycle(), automatic=False, now=NOW)
    assert core.start_aborted("c", fresh.lifecycle, previous=core.Lifecycle(),
                              now=NOW).lifecycle.state is State.CREATED


def test_launched_starts_health_and_emits_started() -> None:
    check = HealthCheck(kind=ProbeKind.TCP, port=80)
    starting = core.start("c", core.Lifecycle(), automatic=False, now=NOW).lifecycle
    step = core.launched("c", starting, pid=7, started_at=NOW,
                         policy=core.Policy(RestartPolicy(), health=check), now=NOW)
    assert step.lifecycle.state is State.RUNNING and step.lifecycle.pid == 7
    assert step.lifecycle.health is HealthStatus.STARTING
    assert kinds(step) == [EventType.STARTED] and has(step, core.StartHealth)


def test_unhealthy_with_restart_on_unhealthy_kills_with_a_reason() -> None:
    check = HealthCheck(kind=ProbeKind.TCP, port=80, restart_on_unhealthy=True)
    policy = core.Policy(restart=RestartPolicy(RestartMode.ALWAYS), health=check)
    result = HealthResult(start=NOW, end=NOW, ok=False, output="refused")
    old = HealthState(status=HealthStatus.HEALTHY)
    new = HealthState(status=HealthStatus.UNHEALTHY, failing_streak=3, log=(result,))
    step = core.health_result("c", running(health=HealthStatus.HEALTHY), old=old, new=new, policy=policy)
    assert step.lifecycle.kill_reason == "Unhealthy"
    assert core.Signal(signal.SIGKILL) in step.actions
    assert [a.message for a in step.actions if isinstance(a, core.Emit)] == ["refused"]
    unchanged = core.health_result("c", running(), old=new, new=new, policy=policy)
    assert kinds(unchanged) == [] and not has(unchanged, core.Signal)


MSG = "writable layer 1.2G over its 1G storage limit"


def test_an_eviction_kills_with_the_reason_and_its_exit_carries_the_message() -> None:
    step = core.evicted("c", running(), message=MSG)
    assert step.lifecycle.kill_reason == "Evicted" and core.Signal(signal.SIGKILL) in step.actions
    emitted = [(a.kind, a.message) for a in step.actions if isinstance(a, core.Emit)]
    assert emitted == [(EventType.EVICTED, MSG)]
    assert has(step, core.SaveStatus)
    # Survives an agent restart: status.json carries the reason and the message.
    lc = core.Lifecycle.from_status(step.lifecycle.status())
    assert (lc.kill_reason, lc.kill_message) == ("Evicted", MSG)
    exit_step = core.exited("c", step.lifecycle, code=137, sig=signal.SIGKILL, oom=False, finished_at=NOW,
                            policy=ON_FAILURE_2, now=NOW)
    status = exit_step.lifecycle.exit
    assert status == core.ExitStatus(137, "Evicted", MSG)
    # The restart policy applies as for any failure; the next run starts with a clean slate.
    assert exit_step.lifecycle.state is State.RESTARTING
    assert exit_step.lifecycle.kill_reason == "" and exit_step.lifecycle.kill_message == ""


def test_an_oom_kill_racing_an_eviction_is_reported_as_the_oom() -> None:
    lc = core.evicted("c", running(), message=MSG).lifecycle
    step = core.exited("c", lc, code=137, sig=signal.SIGKILL, oom=True, finished_at=NOW, policy=NO, now=NOW)
    assert step.lifecycle.exit == core.ExitStatus(137, "OOMKilled", "")


def test_only_a_running_container_not_already_being_killed_is_evicted() -> None:
    for lc in (core.Lifecycle(state=State.EXITED), running(kill_reason="Unhealthy"),
               core.Lifecycle(state=State.RESTARTING)):
        step = core.evicted("c", lc, message=MSG)
        assert step.lifecycle == lc and step.actions == ()


# -- recovery: what the records and the supervisor say → what the container is ---------------------

def facts(**kw: object) -> core.RunFacts:
    base: dict[str, object] = {"recorded": True, "alive": False, "pid": 42, "started_at": NOW - 10}
    base.update(kw)
    return core.RunFacts(**base)  # type: ignore[arg-type]


def test_recovery_of_a_container_never_started() -> None:
    step, lost = core.recovered("c", core.Lifecycle(), facts=core.RunFacts(recorded=False, alive=False),
                                policy=NO, now=NOW)
    assert step.lifecycle.state is State.CREATED and not lost and step.actions == ()


def test_recovery_of_a_running_container() -> None:
    step, lost = core.recovered("c", core.Lifecycle(), facts=facts(alive=True), policy=NO, now=NOW)
    assert step.lifecycle.state is State.RUNNING and step.lifecycle.pid == 42 and not lost
    assert has(step, core.StartHealth)


def test_recovery_of_an_exit_that_happened_while_the_agent_was_down() -> None:
    step, lost = core.recovered("c", core.Lifecycle(), facts=facts(exit_code=1, finished_at=NOW - 1),
                                policy=ALWAYS, now=NOW)
    assert step.lifecycle.state is State.RESTARTING and not lost
    assert kinds(step) == [EventType.EXITED, EventType.RESTARTING]


def test_recovery_of_an_exit_already_acted_on_reschedules_the_same_restart() -> None:
    lc = core.Lifecycle(exit_handled=NOW - 1, next_restart_at=NOW + 30, restart_count=2)
    step, _ = core.recovered("c", lc, facts=facts(exit_code=1, finished_at=NOW - 1), policy=ALWAYS, now=NOW)
    assert kinds(step) == [] and core.ScheduleRestart(NOW + 30) in step.actions
    assert step.lifecycle.state is State.RESTARTING and step.lifecycle.restart_count == 2


def test_recovery_of_a_failed_start() -> None:
    step, _ = core.recovered("c", core.Lifecycle(), facts=facts(pid=0, started_at=None, exit_code=126,
                                                                error="not executable",
                                                                error_kind="not-executable",
                                                                finished_at=NOW - 1),
                             policy=NO, now=NOW)
    assert step.lifecycle.exit == core.ExitStatus(126, "StartFailed", "not executable")
    assert kinds(step) == [EventType.START_FAILED]


@pytest.mark.parametrize("unreadable", [False, True])
def test_recovery_of_a_container_nobody_supervises_is_lost(unreadable: bool) -> None:
    found = facts(unreadable=True) if unreadable else facts(alive=False)
    step, lost = core.recovered("c", core.Lifecycle(), facts=found, policy=ALWAYS, now=NOW)
    assert lost
    assert step.lifecycle.exit is not None and step.lifecycle.exit.reason == "Lost"
    assert step.lifecycle.exit.exit_code == 137


def test_an_exit_whose_status_the_supervisor_lost_is_reported_lost_not_guessed() -> None:
    why = "its keeper had died"
    step = core.exited("c", running(), code=255, sig=None, oom=False, finished_at=NOW, policy=ON_FAILURE_2,
                       now=NOW, lost=why)
    assert step.lifecycle.exit == core.ExitStatus(255, "Lost", why)
    assert has(step, core.ScheduleRestart)  # a failure as far as the restart policy goes
    recovered, lost = core.recovered("c", core.Lifecycle(), facts=facts(exit_code=255, finished_at=NOW - 1,
                                                                         lost=why), policy=NO, now=NOW)
    assert recovered.lifecycle.exit == core.ExitStatus(255, "Lost", why) and not lost
