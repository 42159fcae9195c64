"""The pure parsers the CLI and the agent share (agent/parsing.py): the runtime's types built from
them accept and refuse exactly what the text parsers do, with the same messages."""

from __future__ import annotations

import ipaddress
import re

import pytest

from agent import parsing
from agent.errors import InvalidArgument
from agent.network.ports import ANY_ADDRESS, parse_port_spec
from agent.runtime import restart


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", ("", 8080, 80, "tcp")),
    ("10.1.2.3:53:53/udp", ("10.1.2.3", 53, 53, "udp")),
    ("0.0.0.0:1:2", ("", 1, 2, "tcp")),
    ("80", ("", 0, 80, "tcp")),           # Docker's -p 80: the host picks the host port
    ("0:80", ("", 0, 80, "tcp")),
    ("10.1.2.3::53/udp", ("10.1.2.3", 0, 53, "udp")),
])
def test_port_text(text: str, expected: tuple[str, int, int, str]) -> None:
    assert parsing.parse_port_text(text) == expected
    mapping = parse_port_spec(text)
    assert (mapping.host_port, mapping.container_port, mapping.protocol) == expected[1:]
    assert mapping.host_ip == (ipaddress.IPv4Address(expected[0]) if expected[0] else ANY_ADDRESS)


@pytest.mark.parametrize(("text", "message"), [
    ("a:80", r"expected \[HOSTIP:\]HOSTPORT:CONTAINERPORT"),
    ("1:2/sctp", "protocol must be tcp or udp"),
    ("80:0", "outside 1-65535"),
    ("300.1.1.1:1:2", "is not an IPv4 address"),
    ("127.0.0.1:8080:80", "loopback address is not supported"),
])
def test_port_text_refusals_match_the_runtime(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as text_err:
        parsing.parse_port_text(text)
    with pytest.raises(InvalidArgument) as runtime_err:
        parse_port_spec(text)
    assert str(text_err.value) == str(runtime_err.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("no", ("no", 0)), ("always", ("always", 0)), ("on-failure", ("on-failure", 0)),
    (" on-failure:5 ", ("on-failure", 5)),
])
def test_restart_text(text: str, expected: tuple[str, int]) -> None:
    assert parsing.parse_restart_text(text) == expected
    policy = restart.parse_restart(text)
    assert (policy.mode.value, policy.max_retries) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("sometimes", "use no, always, on-failure"),
    ("always:3", "only on-failure takes a maximum"),
    ("on-failure:x", "must be a whole number"),
    ("on-failure:-1", "must not be negative"),
])
def test_restart_refusals(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parsing.parse_restart_text(text)
    with pytest.raises(InvalidArgument, match=message):
        restart.parse_restart(text)


@pytest.mark.parametrize(("raw", "expected"), [("1M", 1 << 20), ("1.5G", 3 << 29), ("2g", 2 << 30)])
def test_parse_storage_size(raw: str, expected: int) -> None:
    assert parsing.parse_storage_size(raw) == expected
    assert parsing.parse_storage_opt(f"size={raw}") == expected


@pytest.mark.parametrize(("raw", "message"), [
    ("12", "storage size '12' is too small: the minimum is 1M"),
    ("2048T", "is too large: the maximum is 1P"),
    ("1Q", "invalid storage size '1Q'"),
])
def test_parse_storage_size_refuses(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parsing.parse_storage_size(raw)


@pytest.mark.parametrize("raw", ["inodes=5", "1G", "size"])
def test_parse_storage_opt_knows_only_size(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="unsupported storage option"):
        parsing.parse_storage_opt(raw)
