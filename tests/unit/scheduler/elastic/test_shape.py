"""A group's members and shape: declared (with group=NAME added) or learned from the members."""

from __future__ import annotations

from scheduler import model
from scheduler.elastic import shape
from scheduler.model import GroupName, HostShape
from tests.unit.scheduler.elastic import builders as b

WORKERS = GroupName("workers")


def spec(the_shape: HostShape | None = None) -> model.HostGroupSpec:
    return b.group(the_shape=the_shape).spec


def test_members_carry_the_group_label() -> None:
    hosts = {h.id: h for h in [b.host("w2"), b.host("w1"), b.host("x1", group="other"),
                               b.host("n1", group=None)]}
    assert [r.id for r in shape.members(WORKERS, hosts)] == ["w1", "w2"]


def test_a_declared_shape_gets_the_group_label_and_wins_over_the_members() -> None:
    declared = b.shape(cpus=8, memory=16 * b.GiB, labels={"zone": "b", "group": "wrong"})
    got = shape.shape_of(spec(declared), [b.host("w1", cpus=2)])
    assert got == HostShape(cpu_millis=8000, memory_bytes=16 * b.GiB,
                            labels=(("group", "workers"), ("zone", "b")))


def test_a_learned_shape_is_the_smallest_room_and_the_shared_labels() -> None:
    members = [b.host("w1", cpus=4, memory=4 * b.GiB, labels={"zone": "a", "disk": "ssd", "rack": "r1"}),
               b.host("w2", cpus=2, memory=16 * b.GiB, labels={"zone": "a", "disk": "ssd", "rack": "r2"}),
               b.host("w3", cpus=0, memory=0, labels={"zone": "c"})]  # no capacity reported yet: left out
    assert shape.shape_of(spec(), members) == HostShape(
        cpu_millis=2000, memory_bytes=4 * b.GiB,
        labels=(("disk", "ssd"), ("group", "workers"), ("zone", "a")))


def test_without_a_declared_shape_or_a_member_that_reported_there_is_none() -> None:
    assert shape.shape_of(spec(), []) is None
    assert shape.shape_of(spec(), [b.host("w1", cpus=0, memory=0)]) is None
