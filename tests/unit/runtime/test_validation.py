"""Create-time validation (issue 12, findings 7 and 9): every value the kernel, the supervisor or the API
would fail on later is INVALID_ARGUMENT at the API edge, with a message that names the field and echoes
at most a bounded part of the value."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck as Hc
from hypothesis import given, settings

from agent import server
from agent.errors import InvalidArgument, quoted
from agent.runtime import validation
from agent.runtime.spec import ContainerSpec, validate_name
from proto.agent.v1 import agent_pb2 as pb
from tests.fixtures.hostile_requests import hostile_requests


def _spec(**fields: object) -> pb.ContainerSpec:
    spec = pb.ContainerSpec(image="test/busybox:v1", command=["true"])
    for key, value in fields.items():
        target = spec
        *parents, leaf = key.split("__")
        for name in parents:
            target = getattr(target, name)
        if isinstance(value, list):
            getattr(target, leaf).extend(value)
        else:
            setattr(target, leaf, value)
    return spec


@pytest.mark.parametrize(("fields", "words"), [
    ({"network": 99}, "unknown network mode 99"),
    ({"restart__mode": 99}, "unknown restart mode 99"),
    ({"resources__cpu_millis": 1 << 62}, "cpu limit"),
    ({"resources__cpu_request_millis": 1 << 62}, "cpu request"),
    ({"resources__memory_bytes": 1 << 62}, "memory limit"),
    ({"resources__pids_max": 1 << 40}, "pids limit"),
    ({"hostname": "h" * 300}, "invalid hostname"),
    ({"hostname": "bad\nname"}, "invalid hostname"),
    ({"env": ["K=a\0b"]}, "NUL"),
    ({"command": ["echo", "a\0b"]}, "NUL"),
    ({"entrypoint": ["/bin/\0sh"]}, "NUL"),
    ({"env": ["BIG=" + "x" * (200 << 10)]}, "the kernel allows at most"),
    ({"env": ["HUGE=" + "x" * (3 << 20)]}, "the container spec is"),
    ({"user": "4294967295"}, "uid 4294967295 is out of range"),
    ({"user": "0:2147483648"}, "gid 2147483648 is out of range"),
    ({"user": "²"}, "invalid user"),
    ({"user": "a:b:c"}, "invalid user"),
    ({"working_dir": "relative/dir"}, "absolute path"),
    ({"working_dir": "/a\0b"}, "NUL"),
    ({"health__exec__command": ["true"], "health__interval_seconds": math.nan}, "interval nan"),
    ({"health__exec__command": ["true"], "health__interval_seconds": 1e-9}, "interval 1e-09s"),
    ({"health__exec__command": ["true"], "health__timeout_seconds": math.inf}, "timeout inf"),
    ({"health__exec__command": ["true"], "health__start_period_seconds": math.nan}, "start period"),
    ({"health__exec__command": ["a\0"]}, "NUL"),
    ({"health__http__port": 80, "health__http__path": "/x\r\nHost: evil"}, "health check path"),
])
def test_values_that_would_fail_later_are_refused_at_create(fields: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        server.spec_from_pb(_spec(**fields))
    assert words in str(info.value)
    assert len(str(info.value)) < 400  # the value is not echoed whole


@pytest.mark.parametrize("fields", [
    {"hostname": "web-1.example_host"}, {"user": "1000:1000"}, {"user": "nobody"}, {"user": "2147483647"},
    {"working_dir": "/srv/app"}, {"env": ["A=multi\nline", "B="]},
    {"health__exec__command": ["true"], "health__interval_seconds": 0.2},
    {"resources__cpu_millis": 64_000, "resources__memory_bytes": 1 << 40, "resources__pids_max": 4_194_304},
])
def test_ordinary_values_still_pass(fields: dict[str, object]) -> None:
    assert isinstance(server.spec_from_pb(_spec(**fields)), ContainerSpec)


def test_the_image_and_the_request_together_must_fit_execve() -> None:
    """The request alone is capped by its size; the image's Env is counted at create (prepare)."""
    image_env = [f"K{i}=" + "x" * (100 << 10) for i in range(6)]
    with pytest.raises(InvalidArgument, match="the command and environment from image"):
        validation.check_exec_size(["true"], image_env, source="image x and the request")
    validation.check_exec_size(["true"], image_env[:4], source="image x and the request")


def test_a_pull_policy_this_agent_does_not_know_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="unknown pull policy 99"):
        server._enum(server._PULL, 99, what="pull policy", known="...")


def test_echoed_values_are_cut_and_their_length_said() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_name("n" * 100_000)
    assert len(str(info.value)) < 300 and "100000 characters" in str(info.value)
    assert quoted("short") == "'short'"


def test_status_messages_fit_in_the_trailers() -> None:
    text = server.status_message("é" * 100_000)
    assert len(text.encode()) < 1100 and text.endswith("(message cut from 200000 bytes)")
    assert server.status_message("fine") == "fine"


@settings(max_examples=400, deadline=None, suppress_health_check=[Hc.too_slow, Hc.data_too_large])
@given(hostile_requests())
def test_any_hostile_spec_is_accepted_within_bounds_or_refused_as_invalid(
        request: pb.CreateContainerRequest) -> None:
    try:
        spec = server.spec_from_pb(request.spec)
    except InvalidArgument as err:
        assert len(server.status_message(str(err)).encode()) < 1100
        return
    # Accepted: it converts back within the API's bounds, and it is a spec the agent can run with.
    assert server.spec_to_pb(spec).ByteSize() <= validation.MAX_SPEC_BYTES
    assert validation.validate_spec(spec) is spec
