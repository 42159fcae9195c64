"""The gRPC API as the scheduler will use it: idempotent create, labels, filters, streams, status codes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.integration.agent.conftest import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


@pytest.fixture
def stub(agent: AgentProcess) -> Iterator[pb_grpc.ContainersStub]:
    with grpc.insecure_channel(agent.address) as channel:
        yield pb_grpc.ContainersStub(channel)


def _spec(*command: str, **labels: str) -> pb.ContainerSpec:
    return pb.ContainerSpec(image=IMAGE, command=list(command), labels=labels)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return]


def test_create_is_idempotent_on_a_caller_chosen_id(stub: pb_grpc.ContainersStub) -> None:
    request = pb.CreateContainerRequest(id="web-replica-1", spec=_spec("sleep", "300", app="web"))
    first = stub.CreateContainer(request)
    again = stub.CreateContainer(request)
    assert first.id == again.id == "web-replica-1"
    assert first.created_at == again.created_at
    different = pb.CreateContainerRequest(id="web-replica-1", spec=_spec("sleep", "1", app="web"))
    assert _code(lambda: stub.CreateContainer(different)) == grpc.StatusCode.ALREADY_EXISTS
    stub.StartContainer(pb.StartContainerRequest(id="web-replica-1"))
    started = stub.StartContainer(pb.StartContainerRequest(id="web-replica-1"))
    assert started.state == pb.CONTAINER_STATE_RUNNING
    stub.RemoveContainer(pb.RemoveContainerRequest(id="web-replica-1", force=True))


def test_list_filters_by_labels_name_and_state(stub: pb_grpc.ContainersStub) -> None:
    for cid, app in (("f-a", "web"), ("f-b", "web"), ("f-c", "db")):
        stub.CreateContainer(pb.CreateContainerRequest(id=cid, name=cid, spec=_spec("sleep", "300", app=app)))
    stub.StartContainer(pb.StartContainerRequest(id="f-a"))

    def ids(**kw: object) -> set[str]:
        return {c.id for c in stub.ListContainers(pb.ListContainersRequest(**kw)).containers} & {
            "f-a", "f-b", "f-c"}

    assert ids() == {"f-a"}  # running only by default
    assert ids(all=True, labels={"app": "web"}) == {"f-a", "f-b"}
    assert ids(all=True, labels={"app": "db"}) == {"f-c"}
    assert ids(all=True, name="f-b") == {"f-b"}
    assert ids(states=[pb.CONTAINER_STATE_CREATED]) == {"f-b", "f-c"}
    for cid in ("f-a", "f-b", "f-c"):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))


def test_wait_and_log_streams(stub: pb_grpc.ContainersStub) -> None:
    stub.CreateContainer(pb.CreateContainerRequest(id="streamer", spec=_spec(
        "sh", "-c", "echo one; echo two >&2; exit 4")))
    stub.StartContainer(pb.StartContainerRequest(id="streamer"))
    done = stub.WaitContainer(pb.ContainerRef(id="streamer"))
    assert (done.exit_code, done.reason) == (4, "Error")
    entries = list(stub.ContainerLogs(pb.ContainerLogsRequest(id="streamer", follow=True)))
    assert [(e.stream, e.line) for e in entries] == [
        (pb.LOG_STREAM_STDOUT, b"one"), (pb.LOG_STREAM_STDERR, b"two")]
    assert all(e.time.seconds > 0 for e in entries)
    stub.RemoveContainer(pb.RemoveContainerRequest(id="streamer"))


def test_exec_stream_carries_output_then_exit_code(stub: pb_grpc.ContainersStub) -> None:
    stub.CreateContainer(pb.CreateContainerRequest(id="exec-api", spec=_spec("sleep", "300")))
    stub.StartContainer(pb.StartContainerRequest(id="exec-api"))
    out = list(stub.Exec(pb.ExecRequest(id="exec-api", command=["sh", "-c", "echo hi; exit 3"])))
    assert out[-1].WhichOneof("payload") == "exit_code" and out[-1].exit_code == 3
    assert b"".join(o.stdout for o in out) == b"hi\n"
    stub.RemoveContainer(pb.RemoveContainerRequest(id="exec-api", force=True))


def test_status_codes(stub: pb_grpc.ContainersStub) -> None:
    assert _code(lambda: stub.GetContainer(pb.ContainerRef(id="nope"))) == grpc.StatusCode.NOT_FOUND
    bad_image = pb.CreateContainerRequest(spec=pb.ContainerSpec(image="no/such:img", command=["true"]))
    assert _code(lambda: stub.CreateContainer(bad_image)) == grpc.StatusCode.NOT_FOUND
    bad_id = pb.CreateContainerRequest(id="../etc", spec=_spec("true"))
    assert _code(lambda: stub.CreateContainer(bad_id)) == grpc.StatusCode.INVALID_ARGUMENT
    negative = pb.CreateContainerRequest(spec=pb.ContainerSpec(
        image=IMAGE, command=["true"], resources=pb.Resources(memory_bytes=-1)))
    assert _code(lambda: stub.CreateContainer(negative)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_signal = pb.KillContainerRequest(id="x", signal="SIGNOPE")
    stub.CreateContainer(pb.CreateContainerRequest(id="codes", spec=_spec("sleep", "300")))
    assert _code(lambda: stub.KillContainer(bad_signal)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: stub.KillContainer(pb.KillContainerRequest(id="codes", signal="KILL"))) == \
        grpc.StatusCode.FAILED_PRECONDITION  # not running
    stub.StartContainer(pb.StartContainerRequest(id="codes"))
    assert _code(lambda: stub.KillContainer(pb.KillContainerRequest(id="codes", signal="SIGNOPE"))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.RemoveContainer(pb.RemoveContainerRequest(id="codes"))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    missing = pb.CreateContainerRequest(id="codes-missing", spec=_spec("/no/such/bin"))
    stub.CreateContainer(missing)
    with pytest.raises(grpc.RpcError) as info:
        stub.StartContainer(pb.StartContainerRequest(id="codes-missing"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata())["shoal-launch-kind"] == "not-found"
    ctr = stub.GetContainer(pb.ContainerRef(id="codes-missing"))
    assert (ctr.state, ctr.exit_code, ctr.reason) == (pb.CONTAINER_STATE_EXITED, 127, "StartFailed")
    for cid in ("codes", "codes-missing"):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))
