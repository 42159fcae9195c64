from __future__ import annotations

import pytest

from agent.errors import FailedPrecondition
from agent.runtime.state import TRANSITIONS, ContainerRecord, Prepared, State, check_transition


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


@pytest.mark.parametrize(("current", "target"), [
    (State.CREATED, State.RUNNING), (State.RUNNING, State.EXITED), (State.EXITED, State.RUNNING),
    (State.EXITED, State.REMOVING), (State.CREATED, State.REMOVING), (State.CREATED, State.EXITED),
])
def test_legal_transitions(current: State, target: State) -> None:
    check_transition("abc", current, target)


@pytest.mark.parametrize(("current", "target"), [
    (State.RUNNING, State.REMOVING), (State.RUNNING, State.CREATED), (State.REMOVING, State.RUNNING),
    (State.EXITED, State.CREATED),
])
def test_illegal_transitions_raise(current: State, target: State) -> None:
    with pytest.raises(FailedPrecondition, match=current.value):
        check_transition("abc", current, target)


def test_record_round_trip() -> None:
    prepared = Prepared(
        image_id="sha256:" + "a" * 64, image_ref="busybox:v1", argv=("sh", "-c", "true"),
        env=("PATH=/bin",), working_dir="/", uid=0, gid=0, additional_gids=(10,), hostname="h",
        lower_dirs=("/i", "/l1"), upper_dir="/u", work_dir="/w", rootfs_dir="/r",
        cgroup_name="shoal/x", stop_signal=15,
    )
    record = ContainerRecord(id="x", name="n", spec={"image": "busybox:v1"}, prepared=prepared)
    assert ContainerRecord.from_json(record.to_json()) == record
