"""The lifecycle table: every state has a row, edges are the documented ones, verbs are guarded."""

from __future__ import annotations

import pytest

from agent.errors import FailedPrecondition
from agent.runtime.records import ContainerRecord, Prepared
from agent.runtime.state import (
    HOLDS_RESERVATION,
    TRANSITIONS,
    VERBS,
    IllegalTransition,
    State,
    Verb,
    check_verb,
    transition,
)


def test_every_state_has_a_row_and_every_edge_a_reason() -> None:
    assert set(TRANSITIONS) == set(State)
    assert all(reason for row in TRANSITIONS.values() for reason in row.values())
    assert TRANSITIONS[State.REMOVED] == {}


@pytest.mark.parametrize(("current", "target"), [
    (State.CREATED, State.STARTING), (State.STARTING, State.RUNNING), (State.RUNNING, State.EXITED),
    (State.RUNNING, State.RESTARTING), (State.RESTARTING, State.STARTING), (State.RESTARTING, State.EXITED),
    (State.EXITED, State.STARTING), (State.EXITED, State.REMOVING), (State.REMOVING, State.REMOVED),
    (State.STARTING, State.CREATED), (State.REMOVING, State.EXITED),
])
def test_legal_transitions(current: State, target: State) -> None:
    assert transition("abc", current, target) is target


@pytest.mark.parametrize(("current", "target"), [
    (State.RUNNING, State.REMOVING), (State.RUNNING, State.CREATED), (State.REMOVING, State.RUNNING),
    (State.EXITED, State.CREATED), (State.CREATED, State.RUNNING), (State.REMOVED, State.CREATED),
    (State.EXITED, State.RUNNING),
])
def test_illegal_transitions_are_bugs(current: State, target: State) -> None:
    with pytest.raises(IllegalTransition, match=f"{current.value} → {target.value}"):
        transition("abc", current, target)


def test_only_exited_and_removed_containers_hold_no_reservation() -> None:
    assert set(State) - HOLDS_RESERVATION == {State.EXITED, State.REMOVED}


@pytest.mark.parametrize(("verb", "state", "message"), [
    (Verb.EXEC, State.EXITED, "web is not running"),
    (Verb.KILL, State.CREATED, "web is not running"),
    (Verb.WAIT, State.CREATED, "web has not been started"),
    (Verb.START, State.REMOVING, "web is being removed"),
    (Verb.REMOVE, State.REMOVED, "web is being removed"),
])
def test_verbs_are_refused_with_a_reason(verb: Verb, state: State, message: str) -> None:
    assert state not in VERBS[verb]
    with pytest.raises(FailedPrecondition, match=message):
        check_verb(verb, name="web", state=state)


def test_no_op_verbs_are_allowed_where_docker_allows_them() -> None:
    check_verb(Verb.START, name="web", state=State.RUNNING)  # start of a running container: a no-op
    check_verb(Verb.STOP, name="web", state=State.EXITED)  # stop of a stopped one: a no-op


def test_record_round_trip_with_fence() -> None:
    prepared = Prepared(
        image_id="sha256:" + "a" * 64, image_ref="busybox:v1", argv=("sh", "-c", "true"),
        env=("PATH=/bin",), working_dir="/", uid=0, gid=0, additional_gids=(10,), hostname="h",
        lower_dirs=("/i", "/l1"), upper_dir="/u", work_dir="/w", rootfs_dir="/r",
        cgroup_name="shoal/x", stop_signal=15,
    )
    record = ContainerRecord(id="x", name="n", spec={"image": "busybox:v1"}, prepared=prepared,
                             owner="scheduler", epoch=7)
    assert ContainerRecord.from_json(record.to_json()) == record
    older = record.to_json().replace('"owner": "scheduler",', "").replace('"epoch": 7', '"x": 0')
    assert ContainerRecord.from_json(older).owner == "" and ContainerRecord.from_json(older).epoch == 0
