"""What the leader's placement view takes of each host's agent session (``Controller._view_inputs``)."""

from __future__ import annotations

import asyncio
import dataclasses

from scheduler.controller import Controller
from scheduler.model import HostId, ServiceName
from scheduler.observed import HostObservation
from scheduler.placement.view import HostView
from tests.unit.scheduler.test_scoped_passes import settled_controller

H2 = HostId("h2")


def requesting_cpu(ctl: Controller, millis: int) -> None:
    """Every web replica requests ``millis`` of cpu (the settled cluster's request nothing)."""
    assert ctl.mirror is not None
    web = ctl.mirror.services[ServiceName("web")]
    facts = dataclasses.replace(web.spec.facts, cpu_millis=millis)
    ctl.mirror.put(dataclasses.replace(web, spec=dataclasses.replace(web.spec, facts=facts)))


def h2_in_view(ctl: Controller) -> HostView:
    view = ctl._view(ctl._world())
    return view.hosts[view.index[H2]]


def test_a_host_not_listed_since_it_connected_counts_its_replicas_by_phase_and_is_kept_once_listed(
        ) -> None:
    """A new term's sessions have listed nothing yet: taken for "the agent counts none", every running
    replica was counted on top of the agent's own figures, and every host counted again once its
    session had listed them (docs/scaling.md, part 38)."""
    async def go() -> tuple[int, int, tuple[int, int]]:
        ctl, sessions = await settled_controller([])
        requesting_cpu(ctl, 250)
        h2 = sessions[H2]
        listed = h2.observation  # web-2 and db-1 running there
        h2.observation = HostObservation(host=H2, connected=True, complete=False)
        await ctl.step()
        not_listed = h2_in_view(ctl).cpu_placed
        h2.observation = listed
        ctl._host_changed(H2)
        await ctl.step()
        now_listed = h2_in_view(ctl)
        return not_listed, now_listed.cpu_placed, (ctl.views.rebuilt, ctl.views.updated)

    not_listed, listed, (rebuilt, updated) = asyncio.run(go())
    # web-2 runs on h2: in the agent's figures by the phase rule, and by its listing after.
    assert not_listed == 0 and listed == 0
    assert (rebuilt, updated) == (0, 1)
