"""The placement view refreshed between safety nets by passes that place nothing, once due (``ViewPace``),
so the next placing pass — a mass failure's — counts again only the hosts that changed since."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import pytest

from scheduler import controller as controller_module
from scheduler.controller import Controller
from scheduler.model import HostId, ServiceName
from scheduler.observed import ContainerState
from scheduler.placement.view_pace import ViewPace
from tests.unit.scheduler.test_reconcile import NOW
from tests.unit.scheduler.test_scoped_passes import Sessions, running_loop, settled_controller

# -- the pace -------------------------------------------------------------------------------------------


def test_no_refresh_is_due_until_a_pass_has_run_since_the_last() -> None:
    pace = ViewPace(interval=10.0, share=0.1)
    pace.brought_up(at=100.0, cost=0.02)
    assert pace.due() == math.inf
    pace.passed()
    assert pace.due() == 110.0
    pace.brought_up(at=120.0, cost=0.02)
    assert pace.due() == math.inf


def test_a_costly_refresh_spaces_the_next_to_keep_within_its_share() -> None:
    pace = ViewPace(interval=10.0, share=0.1)
    pace.brought_up(at=100.0, cost=3.0)  # every host counted again: 3 s of the loop
    pace.passed()
    assert pace.due() == 130.0


# -- in the controller ----------------------------------------------------------------------------------


def restart_on(ctl: Controller, sessions: Sessions, host: str, container: str) -> None:
    """``host``'s agent reports ``container`` exited: the view's input for that host (what its agent
    counts) is no longer the same object."""
    session = sessions[HostId(host)]
    containers = dict(session.observation.containers)
    containers[container] = dataclasses.replace(containers[container], state=ContainerState.EXITED)
    session.observation = dataclasses.replace(session.observation, containers=containers)
    ctl._host_changed(HostId(host))


def counting_refreshes(ctl: Controller) -> list[int]:
    """Each refresh's hosts counted again, as it happens (a placing pass's build refreshes too)."""
    counts: list[int] = []
    refresh = ctl.views.refresh

    def counted(inputs: Any) -> None:
        refresh(inputs)
        counts.append(ctl.views.rebuilt)

    ctl.views.refresh = counted  # type: ignore[method-assign]
    return counts


def test_a_pass_that_places_nothing_refreshes_the_view_once_due_and_the_next_placing_pass_finds_it_warm(
        ) -> None:
    async def go() -> tuple[list[int], list[int], int]:
        ctl, sessions = await settled_controller([])
        assert ctl.mirror is not None
        await ctl.step()  # the term's first pass, full: the safety net's refresh (both hosts counted)
        refreshes = counting_refreshes(ctl)
        restart_on(ctl, sessions, "h1", "web-1")
        await ctl.step()  # scoped, places nothing, a refresh not yet due: the view is left stale
        before_due = list(refreshes)
        ctl.view_pace.at -= ctl.view_pace.interval  # as if the interval had passed
        ctl._wake.clear()
        await ctl.step()  # scoped again (nothing changed), the refresh due: h1 counted again
        when_due = list(refreshes)
        ctl.mirror.put(ctl.mirror.services[ServiceName("web")].scaled(3, now=NOW))
        await ctl.step()  # places the third web replica
        return before_due, when_due, ctl.views.rebuilt

    before_due, when_due, placing_rebuilt = asyncio.run(go())
    assert before_due == []
    assert when_due == [1]
    # Without the refresh between, the placing pass would have counted h1 again itself.
    assert placing_rebuilt == 0


def test_a_placing_pass_leaves_the_view_stale_for_what_it_wrote() -> None:
    async def go() -> tuple[bool, bool]:
        ctl, _ = await settled_controller([])
        assert ctl.mirror is not None
        await ctl.step()
        fresh_after_net = not ctl.view_pace.stale
        ctl.mirror.put(ctl.mirror.services[ServiceName("web")].scaled(3, now=NOW))
        await ctl.step()  # builds its view, then writes the replica it placed
        return fresh_after_net, ctl.view_pace.stale

    assert asyncio.run(go()) == (True, True)


def test_the_loop_wakes_for_a_refresh_due_with_nothing_else_changing(monkeypatch: pytest.MonkeyPatch) -> None:
    """No change and no safety net to come (its period an hour): the loop still runs the pass that
    refreshes the view once the refresh is due."""
    monkeypatch.setattr(controller_module, "FULL_PASS_INTERVAL", 3600.0)

    async def go() -> list[int]:
        ctl, sessions = await settled_controller([])
        ctl.view_pace.interval = 0.05
        refreshes: list[int] = []
        async with running_loop(ctl), asyncio.timeout(20):
            while ctl.passes["full"] < 1:  # the term's first pass (it refreshes, as every net)
                await asyncio.sleep(0.01)
            refreshes = counting_refreshes(ctl)
            restart_on(ctl, sessions, "h1", "web-1")
            while not refreshes:
                await asyncio.sleep(0.01)
        assert ctl.passes["full"] == 1
        return refreshes

    assert asyncio.run(go())[0] == 1


def test_no_refresh_while_hosts_are_being_lost_nor_for_a_nets_period_after() -> None:
    """As the safety net, the refresh is held off while a mass failure's replacements start."""
    async def go() -> tuple[float, float, float]:
        ctl, _ = await settled_controller([])
        await ctl.step()
        ctl.view_pace.passed()
        unheld = ctl._view_due()
        ctl._lost_due = {HostId("h1"): ctl.view_pace.at + 1.0}  # a host in its grace
        losing = ctl._view_due()
        ctl._lost_due, ctl._last_losing = {}, ctl.view_pace.at + 30.0  # the pass that marked it
        return unheld, losing, ctl._view_due() - ctl._last_losing

    unheld, losing, after = asyncio.run(go())
    assert unheld < math.inf and losing == math.inf
    assert after == controller_module.FULL_PASS_INTERVAL  # (a net's period: the settled net is quick)
