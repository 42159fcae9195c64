from __future__ import annotations

import pytest

from scheduler.model import HostAdmin
from scheduler.placement.framework import PlacementError
from scheduler.placement.plugins import host_state
from tests.unit.scheduler.placement import builders as b


@pytest.mark.parametrize(("admin", "ready", "conditions", "expected"), [
    (HostAdmin.ACTIVE, True, (), None),
    (HostAdmin.CORDONED, True, (), "cordoned"),
    (HostAdmin.DRAINING, True, (), "draining"),
    (HostAdmin.ACTIVE, False, (), "not ready"),
    (HostAdmin.ACTIVE, True, ("MemoryPressure",), "memory pressure"),
    (HostAdmin.ACTIVE, True, ("DiskPressure",), "disk pressure"),
    (HostAdmin.ACTIVE, True, ("SupervisorDown",), "supervisor down"),
    (HostAdmin.ACTIVE, True, ("SomethingNew",), None),  # unknown conditions do not block
    (HostAdmin.CORDONED, False, ("DiskPressure",), "cordoned"),  # what the operator asked comes first
    (HostAdmin.ACTIVE, False, ("DiskPressure",), "not ready"),
])
def test_host_problem(admin: HostAdmin, ready: bool, conditions: tuple[str, ...],
                      expected: str | None) -> None:
    record = b.host("h1", admin=admin, conditions=conditions)
    assert host_state.host_problem(record, b.status("h1", ready=ready)) == expected


def test_a_host_that_keeps_failing_to_start_containers_is_avoided() -> None:
    from dataclasses import replace
    failing = replace(b.status("h1", ready=True), start_failing=True, start_failures=3)
    assert host_state.host_problem(b.host("h1"), failing) == "failing to start containers"
    # Configuring the agent conditions does not turn it off: it is the scheduler's own observation.
    plugin = host_state.new({"conditions": ["DiskPressure"]})
    assert plugin.blocking == {"DiskPressure": "disk pressure"}
    assert host_state.host_problem(b.host("h1"), failing, plugin.blocking) == "failing to start containers"


def test_plugin_reports_the_problem_as_its_reason() -> None:
    view = b.cluster([b.host("h1", admin=HostAdmin.CORDONED), b.host("h2")])
    plugin = host_state.new({})
    req = b.request(b.service(), "r1")
    assert plugin.filter(req, view.host(b.HostId("h1"))) == ("cordoned",)
    assert plugin.filter(req, view.host(b.HostId("h2"))) == ()


def test_a_host_without_status_is_not_ready() -> None:
    from scheduler.placement import view as view_module
    view = view_module.build_view(hosts=[b.host("h1")], statuses=[], replicas=[], services=[])
    req = b.request(b.service(), "r1")
    assert host_state.new({}).filter(req, view.host(b.HostId("h1"))) == ("not ready",)


def test_blocking_conditions_are_configurable() -> None:
    plugin = host_state.new({"conditions": ["DiskPressure"]})
    view = b.cluster([b.host("h1", conditions=("MemoryPressure",)),
                      b.host("h2", conditions=("DiskPressure",))])
    req = b.request(b.service(), "r1")
    assert plugin.filter(req, view.host(b.HostId("h1"))) == ()
    assert plugin.filter(req, view.host(b.HostId("h2"))) == ("disk pressure",)


@pytest.mark.parametrize(("args", "message"), [
    ({"conditions": ["Hungry"]}, "unknown condition 'Hungry'"),
    ({"conditions": "DiskPressure"}, "wrong type"),
    ({"threshold": 3}, "unknown argument 'threshold'"),
])
def test_bad_arguments_are_refused(args: dict[str, object], message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        host_state.new(args)
