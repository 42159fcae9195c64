"""A mass failure's lost hosts marked in one pass, and the safety net kept off the passes that mark them.

Hosts killed at once are found unreachable over a usage interval, so their graces end over seconds at
5,000 hosts; a pass that marked the first of them ran for seconds, and hosts lost just after it began
waited for all of it (docs/scaling.md, part 18)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import replace

import pytest

from scheduler import controller as controller_module
from scheduler import reconcile
from scheduler.controller import Controller
from scheduler.model import HostId, ReplicaPhase
from scheduler.reconcile import Plan, WriteReplica
from tests.unit.scheduler.test_reconcile import NOW, run, written
from tests.unit.scheduler.test_reconcile import lost_world as one_lost
from tests.unit.scheduler.test_scoped_passes import Sessions, ShiftedClock, settled_controller

# -- the pure step ------------------------------------------------------------------------------------


def test_no_host_counts_as_lost_before_lost_from() -> None:
    lost = one_lost(since=NOW - 3.5)  # past its grace by half a second
    assert written(run(lost))["a"].phase is ReplicaPhase.STOPPING
    assert run(replace(lost, lost_from=NOW + 0.5)).empty  # gathered: not yet
    assert written(run(replace(lost, lost_from=NOW)))["a"].phase is ReplicaPhase.STOPPING


# -- the controller -----------------------------------------------------------------------------------

def stopped(plan: Plan) -> set[str]:
    return {w.replica.id for w in plan.writes
            if isinstance(w, WriteReplica) and w.replica.phase is ReplicaPhase.STOPPING}


def fall_silent(ctl: Controller, sessions: Sessions, host: str) -> None:
    session = sessions[HostId(host)]
    session.observation = dataclasses.replace(session.observation, connected=False)
    session.error = "no report from the agent for 6.0 s (unreachable?)"
    ctl._host_changed(HostId(host))


def shifted_clock(monkeypatch: pytest.MonkeyPatch) -> ShiftedClock:
    clock = ShiftedClock()
    monkeypatch.setattr(controller_module, "time", clock)
    monkeypatch.setattr(controller_module, "FULL_PASS_INTERVAL", 3600.0)  # no safety net in between
    return clock


async def lost_apart(monkeypatch: pytest.MonkeyPatch, clock: ShiftedClock, *, apart: float, placing_s: float,
                     grace: float = 3.0, plans: list[Plan] | None = None) -> tuple[Controller, float, float]:
    """A settled controller (and two empty hosts) whose last placing pass took ``placing_s``; h1 (web-1)
    falls silent, and h2 (web-2, db-1) ``apart`` seconds later. The controller, when h1 fell silent, and
    when the pass after h2's fell silent said the next was due."""
    ctl, sessions = await settled_controller([], plans=plans, empty_hosts=2)
    ctl.settings = dataclasses.replace(ctl.settings, host_grace=grace)
    monkeypatch.setattr(ctl.actuator, "submit", lambda actions: None)  # no agents to launch on
    await ctl.step()
    ctl._placing_s = placing_s
    start = clock.time()
    fall_silent(ctl, sessions, "h1")
    await ctl.step()
    clock.ahead += apart
    fall_silent(ctl, sessions, "h2")
    due = await ctl.step()
    assert due is not None
    return ctl, start, due


def two_hosts_lost(monkeypatch: pytest.MonkeyPatch, *, placing_s: float) -> tuple[list[Plan], list[float]]:
    """Two hosts lost half a second apart (``lost_apart``). A pass runs as h1's grace ends, then one when
    the controller says the next is due. Those two passes' plans, and when a pass was due after the pass
    before each."""
    clock = shifted_clock(monkeypatch)

    async def go() -> tuple[list[Plan], list[float]]:
        plans: list[Plan] = []
        ctl, start, due = await lost_apart(monkeypatch, clock, apart=0.5, placing_s=placing_s, plans=plans)
        dues = [due - start]
        plans.clear()
        clock.ahead += 3.0 - 0.5 + 0.01  # h1's grace is over
        next_due = await ctl.step()
        assert next_due is not None
        dues.append(next_due - start)
        clock.ahead += next_due - clock.time() + 0.01
        await ctl.step()
        return plans, dues

    return asyncio.run(go())


def test_hosts_whose_graces_end_within_a_pass_of_each_other_are_marked_in_one_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plans, dues = two_hosts_lost(monkeypatch, placing_s=1.0)
    assert dues == pytest.approx([3.5, 3.5], abs=0.05)  # h2's grace: the pass waits for it
    assert stopped(plans[0]) == set()  # h1 lost, but gathered
    assert stopped(plans[1]) == {"web-1", "web-2", "db-1"}  # both hosts in one pass
    assert len([w for w in plans[1].writes if isinstance(w, WriteReplica) and w.replica.revision == 0]) == 3


def test_where_passes_are_short_each_host_is_marked_when_its_grace_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The window is the last placing pass's length: milliseconds in a small cluster, and no wait."""
    plans, dues = two_hosts_lost(monkeypatch, placing_s=0.0)
    assert dues == pytest.approx([3.0, 3.5], abs=0.05)  # each host's own grace
    assert stopped(plans[0]) == {"web-1"}
    assert stopped(plans[1]) == {"web-2", "db-1"}


@pytest.mark.parametrize(("placing_s", "expected"), [(1.0, 10.0), (2.0, 11.5)])
def test_a_host_lost_later_than_the_window_is_not_waited_for(
        monkeypatch: pytest.MonkeyPatch, placing_s: float, expected: float) -> None:
    """With a 10 s grace, h2 lost 1.5 s after h1: waited for after a placing pass of 2 s, not of 1 s."""
    clock = shifted_clock(monkeypatch)

    async def go() -> float:
        _, start, due = await lost_apart(monkeypatch, clock, apart=1.5, placing_s=placing_s, grace=10.0)
        return due - start

    assert asyncio.run(go()) == pytest.approx(expected, abs=0.05)


def test_the_safety_net_waits_while_hosts_are_being_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its period is longer while a host is in its grace: a full pass then would make the pass that
    marks it look at every service. Once the period is up twice over, it runs anyway."""
    async def go() -> list[reconcile.Scope | None]:
        scopes: list[reconcile.Scope | None] = []
        ctl, sessions = await settled_controller(scopes, empty_hosts=1)
        await ctl.step()  # the term's first pass: full
        fall_silent(ctl, sessions, "h1")
        await ctl.step()  # h1 in its grace
        ctl._last_full -= ctl.full_interval  # the period is up
        await ctl.step()
        ctl._last_full -= ctl.full_interval  # twice over
        await ctl.step()
        return scopes

    scopes = asyncio.run(go())
    assert [s is None for s in scopes] == [True, False, False, True]


def test_the_safety_net_waits_a_period_more_after_the_lost_hosts_are_marked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after the pass that marks them, their replacements start: a full pass then held the leader's
    loop for 1-2.5 s at 5,000 hosts (docs/scaling.md, part 21). Within a period of that pass the net
    waits until its period is up twice over; a period later it keeps its own again."""
    clock = ShiftedClock()
    monkeypatch.setattr(controller_module, "time", clock)

    async def go() -> tuple[list[reconcile.Scope | None], list[Plan]]:
        scopes: list[reconcile.Scope | None] = []
        plans: list[Plan] = []
        ctl, sessions = await settled_controller(scopes, plans=plans, empty_hosts=1)
        monkeypatch.setattr(ctl.actuator, "submit", lambda actions: None)  # no agents to launch on
        await ctl.step()  # the term's first pass: full
        fall_silent(ctl, sessions, "h1")
        await ctl.step()  # h1 in its grace
        clock.ahead += ctl.settings.host_grace + 0.01
        await ctl.step()  # h1 lost: web-1 marked
        assert stopped(plans[-1]) == {"web-1"}
        ctl._last_full -= ctl.full_interval  # the period is up, within a period of the marking
        await ctl.step()
        ctl._last_full -= ctl.full_interval  # twice over
        await ctl.step()
        clock.ahead += ctl.full_interval  # a period after the marking, and after the last net
        await ctl.step()
        return scopes, plans

    scopes, _ = asyncio.run(go())
    assert [s is None for s in scopes] == [True, False, False, False, True, True]


def test_without_hosts_being_lost_the_safety_net_keeps_its_period(monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> list[reconcile.Scope | None]:
        scopes: list[reconcile.Scope | None] = []
        ctl, _ = await settled_controller(scopes)
        await ctl.step()
        ctl._last_full -= ctl.full_interval
        await ctl.step()
        return scopes

    assert [s is None for s in asyncio.run(go())] == [True, True]


def test_a_pass_that_replaces_lost_hosts_replicas_names_the_hosts(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Each replica records why it was replaced; the log says once per pass which hosts, and for how
    long they had been unreachable, so a person (or a benchmark's log) sees what moved from where."""
    with caplog.at_level(logging.INFO, logger="scheduler.controller"):
        plans, _ = two_hosts_lost(monkeypatch, placing_s=1.0)
    said = [r.getMessage() for r in caplog.records if "unreachable past their grace" in r.getMessage()]
    assert plans[1].abandoned == {HostId("h1"): 1, HostId("h2"): 2}
    assert len(said) == 1, said  # the gathering pass replaced nothing and says nothing
    assert re.fullmatch(r"replacing 3 replicas of 2 hosts unreachable past their grace: "
                        r"\S+ \(3\.\d s\), \S+ \(3\.\d s\)", said[0]), said
