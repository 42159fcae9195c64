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


# -- paginated listing -------------------------------------------------------------------------------


def _all_pages(stub: pb_grpc.ContainersStub, **filters: object) -> list[pb.ListContainersResponse]:
    pages = [stub.ListContainers(pb.ListContainersRequest(**filters))]  # type: ignore[arg-type]
    while pages[-1].next_page_token:
        pages.append(stub.ListContainers(pb.ListContainersRequest(
            **filters, page_token=pages[-1].next_page_token)))  # type: ignore[arg-type]
    return pages


def test_listing_pages_by_count_without_skipping_or_repeating(stub: pb_grpc.ContainersStub) -> None:
    ids = [f"page-{i}" for i in range(7)]
    for cid in ids:
        stub.CreateContainer(pb.CreateContainerRequest(id=cid, spec=_spec(labels={"t": "paging"})))
    try:
        pages = _all_pages(stub, all=True, labels={"t": "paging"}, page_size=3)
        assert [len(p.containers) for p in pages] == [3, 3, 1]
        assert [c.id for p in pages for c in p.containers] == ids  # oldest first, each once
        assert len({(p.event_sequence, p.event_epoch) for p in pages}) == 1  # the first page's, repeated
        # A container removed while paging is neither skipped over nor does it break the next page.
        first = stub.ListContainers(pb.ListContainersRequest(all=True, labels={"t": "paging"}, page_size=2))
        stub.RemoveContainer(pb.RemoveContainerRequest(id="page-2"))
        rest = stub.ListContainers(pb.ListContainersRequest(all=True, labels={"t": "paging"}, page_size=10,
                                                            page_token=first.next_page_token))
        assert [c.id for c in rest.containers] == ["page-3", "page-4", "page-5", "page-6"]
        assert not rest.next_page_token
    finally:
        for cid in ids:
            stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True, missing_ok=True))


def test_big_containers_are_listed_in_pages_that_fit_a_clients_limit(
        stub: pb_grpc.ContainersStub, agent: AgentProcess) -> None:
    """Finding 7: containers whose descriptions add up past 4 MiB broke `ps -a` for everyone."""
    big_env = [f"V{i}=" + "x" * (100 << 10) for i in range(2)]  # ~200 kB in the spec, again resolved
    ids = [f"big-{i}" for i in range(12)]
    for cid in ids:
        stub.CreateContainer(pb.CreateContainerRequest(id=cid, spec=_spec(env=big_env)))
    try:
        pages = _all_pages(stub, all=True)
        assert len(pages) > 1 and all(p.ByteSize() < (4 << 20) for p in pages)
        assert set(ids) <= {c.id for p in pages for c in p.containers}
        listed = agent.run("ps", "-aq", "--no-trunc").stdout.split()
        assert set(ids) <= set(listed)
    finally:
        for cid in ids:
            stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))


def test_a_forged_page_token_or_size_is_invalid(stub: pb_grpc.ContainersStub) -> None:
    for request in (pb.ListContainersRequest(page_token="not-a-token"),
                    pb.ListContainersRequest(page_size=-1)):
        with pytest.raises(grpc.RpcError) as info:
            stub.ListContainers(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_exec_refuses_what_execve_would_with_the_creates_messages(stub: pb_grpc.ContainersStub) -> None:
    sleeper = pb.ContainerSpec(image=LOCAL_IMAGE, command=["sleep", "300"])
    stub.CreateContainer(pb.CreateContainerRequest(id="exec-target", start=True, spec=sleeper))
    try:
        for request, words in (
            (pb.ExecRequest(id="exec-target", command=["echo", "a\0b"]), "NUL"),
            (pb.ExecRequest(id="exec-target", command=["true"], env=["K=\0"]), "NUL"),
            (pb.ExecRequest(id="exec-target", command=["true"], user="4294967295"), "out of range"),
            (pb.ExecRequest(id="exec-target", command=["true"], working_dir="tmp"), "absolute path"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Exec(request))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in (info.value.details() or "")
        assert [m.exit_code for m in stub.Exec(pb.ExecRequest(id="exec-target", command=["true"]))
                if m.WhichOneof("payload") == "exit_code"] == [0]
    finally:
        stub.RemoveContainer(pb.RemoveContainerRequest(id="exec-target", force=True))
