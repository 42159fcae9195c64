"""``evolve`` makes the copy ``dataclasses.replace`` makes, without going through ``__init__``."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from scheduler.evolve import evolve
from scheduler.model import Decision, HostId, Replica, ReplicaId, ReplicaPhase, ServiceName


def replica() -> Replica:
    return Replica(id=ReplicaId("web-1"), service=ServiceName("web"), generation=2, host=HostId("h1"),
                   phase=ReplicaPhase.RUNNING, ready=True, reason="running",
                   decisions=(Decision(time=1.0, action="placed", reason="on h1"),), revision=7)


def test_a_copy_equals_what_replace_makes_and_leaves_the_original_alone() -> None:
    original = replica()
    for changes in ({}, {"phase": ReplicaPhase.STOPPING, "ready": False, "reason": "host lost"},
                    {"host": None, "revision": 0}, {"decisions": ()}):
        copy = evolve(original, **changes)
        assert copy == dataclasses.replace(original, **changes)
        assert hash(copy) == hash(dataclasses.replace(original, **changes))
        assert copy is not original and type(copy) is Replica
    assert original == replica()
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(original).phase = ReplicaPhase.PENDING  # type: ignore[misc]


def test_a_field_the_class_lacks_is_refused_as_replace_refuses_it() -> None:
    with pytest.raises(TypeError, match="'hots'"):
        evolve(replica(), hots=HostId("h2"))


@dataclasses.dataclass(frozen=True, slots=True)
class Slotted:
    a: int
    b: int = 0


@dataclasses.dataclass(frozen=True)
class Checked:
    a: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")


@dataclasses.dataclass(frozen=True)
class Cached:
    a: int

    @functools.cached_property
    def double(self) -> int:
        return 2 * self.a


def test_classes_a_dict_copy_would_get_wrong_go_through_replace() -> None:
    assert evolve(Slotted(1), b=2) == Slotted(1, 2)
    with pytest.raises(ValueError, match="negative"):  # __post_init__ ran
        evolve(Checked(1), a=-1)
    cached = Cached(1)
    assert cached.double == 2
    assert evolve(cached, a=5).double == 10  # not the copied cache
