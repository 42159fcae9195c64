"""Port specs, overlap rules, conflict checks and the port table."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from agent.network.ports import PortMapping, PortTable, check_conflicts, parse_port_spec, probe_host_port


def pm(spec: str) -> PortMapping:
    return parse_port_spec(spec)


def test_parse_forms() -> None:
    assert pm("8080:80") == PortMapping(host_port=8080, container_port=80)
    assert pm("53:53/udp").protocol == "udp"
    assert pm("192.168.1.5:8443:443/tcp") == PortMapping(
        host_port=8443, container_port=443, protocol="tcp", host_ip=ipaddress.IPv4Address("192.168.1.5"),
    )
    assert str(pm("1.2.3.4:1:2/udp")) == "1.2.3.4:1:2/udp"
    assert PortMapping.from_dict(pm("1.2.3.4:1:2/udp").to_dict()) == pm("1.2.3.4:1:2/udp")


@pytest.mark.parametrize("spec", ["a:80", "8080:80/sctp", "80:0", "8080:70000", "1.2.3:80:80",
                                  "127.0.0.1:80:80", ""])
def test_bad_specs_say_what_is_wrong(spec: str) -> None:
    with pytest.raises(InvalidArgument, match="bad port spec"):
        parse_port_spec(spec)


def test_the_host_picks_the_lowest_free_port_for_mappings_that_ask_for_none(tmp_path: Path) -> None:
    from agent.network.ports import AUTO_PORTS

    table = PortTable(tmp_path)
    assert pm("80") == PortMapping(host_port=0, container_port=80)
    first = table.reserve("a" * 64, (pm("80"), pm("9000:90")))
    assert first == (PortMapping(host_port=AUTO_PORTS.start, container_port=80), pm("9000:90"))
    # Taken by another container, or refused by the host probe (a listener there): skipped.
    busy = AUTO_PORTS.start + 1
    second = table.reserve("b" * 64, (pm("81"),), free=lambda m: m.host_port != busy)
    assert second == (PortMapping(host_port=AUTO_PORTS.start + 2, container_port=81),)
    # The journal holds the picked ports: a restart of the agent keeps them.
    assert PortTable(tmp_path).read()["b" * 64] == second
    assert table.reserve("c" * 64, (pm("82/udp"),))[0].host_port == AUTO_PORTS.start  # another protocol


def test_no_free_port_left_is_a_clear_refusal(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="no free host port left"):
        PortTable(tmp_path).reserve("a" * 64, (pm("80"),), free=lambda m: False)


def test_overlap() -> None:
    assert pm("8080:80").overlaps(pm("8080:81"))
    assert pm("8080:80").overlaps(pm("10.0.0.1:8080:80"))
    assert not pm("10.0.0.2:8080:80").overlaps(pm("10.0.0.1:8080:80"))
    assert not pm("8080:80").overlaps(pm("8080:80/udp"))
    assert not pm("8080:80").overlaps(pm("8081:80"))


def test_conflicts_with_other_owners_and_within_a_request() -> None:
    published = {"a" * 64: (pm("8080:80"),)}
    check_conflicts([pm("8080:80")], published, owner="a" * 64)  # its own: fine
    check_conflicts([pm("8081:80"), pm("8080:80/udp")], published, owner="b" * 64)
    with pytest.raises(AlreadyExists, match="8080/tcp is already published by container aaaaaaaaaaaa"):
        check_conflicts([pm("8080:80")], published, owner="b" * 64)
    with pytest.raises(AlreadyExists, match="published twice"):
        check_conflicts([pm("9000:80"), pm("9000:81")], {}, owner="b" * 64)


def test_port_table_reserve_and_remove(tmp_path: Path) -> None:
    table = PortTable(tmp_path)
    table.reserve("a" * 64, (pm("8080:80"),))
    with pytest.raises(AlreadyExists):
        PortTable(tmp_path).reserve("b" * 64, (pm("8080:80"),))
    assert PortTable(tmp_path).read() == {"a" * 64: (pm("8080:80"),)}
    assert table.remove("a" * 64) is True
    assert table.remove("a" * 64) is False
    table.reserve("b" * 64, (pm("8080:80"),))


def test_probe_finds_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(FailedPrecondition, match=f"host port {port}/tcp is already in use"):
            probe_host_port(PortMapping(host_port=port, container_port=80))
    probe_host_port(PortMapping(host_port=port, container_port=80))  # closed: free again
