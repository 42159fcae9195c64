"""``scheduler.pickled``: the session workers' messages pickled as calls with their fields, equal after."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from proto.agent.v1 import agent_pb2 as pb
from scheduler import session_wire as wire
from scheduler.model import HostId, HostPort, ReplicaId, ServiceName
from scheduler.observed import ContainerState, ContainerUsage, Health, HostObservation, ObservedContainer
from scheduler.pickled import by_fields
from scheduler.usage_pace import UsagePace

CONTAINER = ObservedContainer(id="c1", service=ServiceName("web"), replica=ReplicaId("web-1"), generation=3,
                              state=ContainerState.EXITED, health=Health.UNHEALTHY, exit_code=2,
                              reason="Error", error="boom", restart_count=4,
                              ports=(HostPort(container_port=80, host_port=30001, protocol="tcp"),))
MESSAGES = [
    CONTAINER,
    wire.Init(credentials=None, pace=UsagePace(), keepalive=2.0),
    wire.Follow(host=HostId("h1"), address="10.0.0.1:7001"),
    wire.Drop(host=HostId("h1")),
    wire.WantUsage(host=HostId("h1")),
    wire.Call(id=7, host=HostId("h1"), method="CreateContainer",
              request=pb.CreateContainerRequest(name="web-1"), timeout=None),
    wire.Reply(id=7, code="UNAVAILABLE", details="gone", trailing=(("shoal-error", "x"),)),
    wire.States((wire.HostState(host=HostId("h1"), observation=HostObservation(HostId("h1"), connected=True,
                                                                                containers={"c1": CONTAINER}),
                                containers=(("c1", CONTAINER), ("c2", None)), info=pb.HostInfo(host_id="h1"),
                                error="", agent_down=False, silent=True, last_seen=12.5),), sent=99.0),
    wire.Usage(((HostId("h1"), {"c1": ContainerUsage(cpu_milli=5, memory_bytes=6, started_at=1.0,
                                                     at=2.0)}),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_round_trips_through_its_fields(message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) == message
    # pickled as a call with the fields' values (without ``by_fields``, ``object.__reduce__`` names
    # copyreg's reconstructor and dataclasses' __getstate__ gives the state)
    assert message.__reduce__()[0] is type(message)  # type: ignore[index]


def test_only_positional_fields_can_be_pickled_by_fields() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int
        b: int = dataclasses.field(default=0, kw_only=True)

    with pytest.raises(TypeError, match="positional"):
        by_fields(KeywordOnly)
    assert pickle.loads(pickle.dumps(One(5))) == One(5)  # a one-field class takes a one-value tuple


@by_fields
@dataclasses.dataclass(frozen=True, slots=True)
class One:
    a: int
