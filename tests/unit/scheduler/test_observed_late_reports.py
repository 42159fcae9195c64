"""A host's view never takes a container back to "created" once it is known to have started: an agent
shows a container as created only until its first start, so such a report is late (an event read after the
create-and-start call's answer). Taken for news, it had the next reconcile pass launch the replica again."""

from __future__ import annotations

import pytest

from scheduler.model import HostId
from scheduler.observed import ContainerState, HostObservation
from tests.unit.scheduler.test_reconcile import container

CREATED = container("r1", state=ContainerState.CREATED)


@pytest.mark.parametrize("state", [ContainerState.RUNNING, ContainerState.EXITED, ContainerState.RESTARTING])
def test_a_report_from_before_the_first_start_is_late(state: ContainerState) -> None:
    seen = HostObservation(host=HostId("h1")).with_container("r1", container("r1", state=state))
    assert seen.with_container("r1", CREATED) is seen


def test_a_container_removed_in_between_may_be_created_again() -> None:
    seen = HostObservation(host=HostId("h1")).with_container("r1", container("r1"))
    again = seen.with_container("r1", None).with_container("r1", CREATED)
    assert again.containers["r1"] == CREATED


def test_every_other_change_is_taken() -> None:
    seen = HostObservation(host=HostId("h1")).with_container("r1", CREATED)
    assert seen.containers["r1"] == CREATED  # a new container
    failed = container("r1", state=ContainerState.CREATED, error="no such image")
    assert seen.with_container("r1", failed).containers["r1"] == failed  # created, still not started
    running = seen.with_container("r1", container("r1"))
    assert running.containers["r1"].state is ContainerState.RUNNING
    exited = container("r1", state=ContainerState.EXITED, exit_code=1, reason="Error")
    assert running.with_container("r1", exited).containers["r1"] == exited
