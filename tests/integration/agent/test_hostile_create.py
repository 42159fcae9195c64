"""Hostile creates against a real agent (issue 12, findings 7 and 9).

Each value the probe found is refused at create with INVALID_ARGUMENT (nothing is left behind), listing
keeps working for everyone, and a fuzz over every field of ``CreateContainerRequest`` gets only answers a
caller can act on — never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.fixtures import images as image_fixtures
from tests.fixtures.hostile_requests import LOCAL_IMAGE, hostile_requests
from tests.integration.agent.conftest import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.integration]

# What a caller can act on. NOT_FOUND: an image that is not there; ALREADY_EXISTS: an id or name taken
# by an earlier example.
ACTIONABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS}


@pytest.fixture(scope="module")
def stub(agent: AgentProcess) -> Iterator[pb_grpc.ContainersStub]:
    with grpc.insecure_channel(agent.address) as channel:
        yield pb_grpc.ContainersStub(channel)


def _create(stub: pb_grpc.ContainersStub, request: pb.CreateContainerRequest) -> tuple[grpc.StatusCode, str]:
    try:
        ctr = stub.CreateContainer(request)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    stub.RemoveContainer(pb.RemoveContainerRequest(id=ctr.id, force=True))
    return grpc.StatusCode.OK, ""


def _listing_works(stub: pb_grpc.ContainersStub) -> list[str]:
    return [c.id for c in stub.ListContainers(pb.ListContainersRequest(all=True)).containers]


def _spec(**fields: object) -> pb.ContainerSpec:
    return pb.ContainerSpec(image=LOCAL_IMAGE, command=["true"], **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("request_", "words"), [
    (pb.CreateContainerRequest(spec=_spec(user="4294967295")), "uid 4294967295 is out of range"),
    (pb.CreateContainerRequest(spec=_spec(env=["HUGE=" + "x" * (3 << 20)])), "the container spec is"),
    (pb.CreateContainerRequest(spec=_spec(), pull=99), "unknown pull policy 99"),  # type: ignore[arg-type]
    (pb.CreateContainerRequest(spec=_spec(network=99)), "unknown network mode 99"),  # type: ignore[arg-type]
    (pb.CreateContainerRequest(spec=_spec(restart=pb.RestartPolicy(mode=99))),  # type: ignore[arg-type]
     "unknown restart mode 99"),
    (pb.CreateContainerRequest(spec=_spec(resources=pb.Resources(cpu_millis=1 << 62)), start=True),
     "cpu limit"),
    (pb.CreateContainerRequest(spec=_spec(hostname="h" * 300), start=True), "invalid hostname"),
    (pb.CreateContainerRequest(spec=_spec(env=["K=a\0b"]), start=True), "NUL"),
    (pb.CreateContainerRequest(spec=_spec(health=pb.HealthCheck(exec=pb.ExecProbe(command=["true"]),
                                                                interval_seconds=float("nan")))),
     "interval nan"),
    (pb.CreateContainerRequest(spec=_spec(health=pb.HealthCheck(exec=pb.ExecProbe(command=["true"]),
                                                                interval_seconds=1e-9))), "interval"),
    (pb.CreateContainerRequest(name="n" * 100_000, spec=_spec()), "100000 characters"),
])
def test_the_probes_values_are_invalid_at_create_and_leave_nothing(
        stub: pb_grpc.ContainersStub, agent: AgentProcess, request_: pb.CreateContainerRequest,
        words: str) -> None:
    before = _listing_works(stub)
    code, details = _create(stub, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert words in details and len(details) < 1100
    assert _listing_works(stub) == before  # no container stuck in Created, and listing still works
    assert agent.run("ps", "-a").returncode == 0


def test_an_image_whose_passwd_names_a_uid_the_api_cannot_carry_is_refused(
        stub: pb_grpc.ContainersStub, agent: AgentProcess, tmp_path: Path) -> None:
    f = image_fixtures
    layer = f.layer_tar([f.directory("etc"), f.file("etc/passwd", b"big:x:3000000000:0::/:/bin/sh\n")])
    layout = f.build_oci_layout(tmp_path / "bigid", [layer], ref_name="v1",
                                config={"Cmd": ["/bin/true"], "User": "big"})
    agent.run("image", "import", str(layout), "--name", "test/bigid:v1")
    code, details = _create(stub, pb.CreateContainerRequest(spec=pb.ContainerSpec(image="test/bigid:v1")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "uid 3000000000" in details and "test/bigid:v1" in details
    _listing_works(stub)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(request=hostile_requests())
def test_fuzzed_creates_get_actionable_answers_and_listing_survives(
        stub: pb_grpc.ContainersStub, request: pb.CreateContainerRequest) -> None:
    code, details = _create(stub, request)
    assert code in ACTIONABLE, f"{code}: {details[:500]}"
    assert len(details.encode()) < 1100
    _listing_works(stub)
