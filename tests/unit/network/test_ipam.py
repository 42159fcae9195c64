"""IPAM: lowest free address, idempotent allocation, release, reconcile, persistence, torn journals."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from agent.network.ipam import Ipam, interface_key, lowest_free

NET = ipaddress.IPv4Network("10.88.0.0/24")


def addr(s: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(s)


def cid(n: int) -> str:
    return f"{n:08x}" * 8


def test_lowest_free_skips_network_gateway_broadcast_and_taken() -> None:
    assert lowest_free(NET, set()) == addr("10.88.0.2")
    assert lowest_free(NET, {addr("10.88.0.2"), addr("10.88.0.4")}) == addr("10.88.0.3")
    small = ipaddress.IPv4Network("10.0.0.0/29")  # .1 gateway, .2-.6 usable, .7 broadcast
    taken = {addr(f"10.0.0.{i}") for i in range(2, 7)}
    with pytest.raises(ResourceExhausted, match="no free address"):
        lowest_free(small, taken)


def test_allocate_is_idempotent_and_release_frees(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, NET)
    assert ipam.allocate(cid(1)) == addr("10.88.0.2")
    assert ipam.allocate(cid(2)) == addr("10.88.0.3")
    assert ipam.allocate(cid(1)) == addr("10.88.0.2")
    assert ipam.release(cid(1)) is True
    assert ipam.release(cid(1)) is False
    assert ipam.allocate(cid(3)) == addr("10.88.0.2")


def test_allocations_survive_a_new_instance(tmp_path: Path) -> None:
    Ipam(tmp_path, NET).allocate(cid(1))
    again = Ipam(tmp_path, NET)
    assert again.allocations() == {cid(1): addr("10.88.0.2")}
    assert again.allocate(cid(2)) == addr("10.88.0.3")


def test_reconcile_frees_only_dead_owners(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, NET)
    for n in (1, 2, 3):
        ipam.allocate(cid(n))
    assert ipam.reconcile({cid(2)}) == sorted([cid(1), cid(3)])
    assert ipam.allocations() == {cid(2): addr("10.88.0.3")}


def test_ids_sharing_a_prefix_get_distinct_interfaces(tmp_path: Path) -> None:
    """Callers choose ids like web-1a2b3c and web-4d5e6f: interface names come from the whole id."""
    ipam = Ipam(tmp_path, NET)
    ipam.allocate("spread-24650b93")
    ipam.allocate("spread-26eca0ed")
    assert interface_key("spread-24650b93") != interface_key("spread-26eca0ed")
    assert len("veth" + interface_key("x")) <= 15  # IFNAMSIZ


def test_owners_whose_interface_names_collide_are_refused(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.network import ipam as ipam_module

    monkeypatch.setattr(ipam_module, "interface_key", lambda owner: "same")
    ipam = Ipam(tmp_path, NET)
    ipam.allocate(cid(1))
    with pytest.raises(AlreadyExists, match="names the same host interface"):
        ipam.allocate(cid(2))


def test_switching_subnet_with_live_allocations_is_refused(tmp_path: Path) -> None:
    Ipam(tmp_path, NET).allocate(cid(1))
    other = Ipam(tmp_path, ipaddress.IPv4Network("10.99.0.0/24"))
    with pytest.raises(FailedPrecondition, match="still allocated"):
        other.allocate(cid(2))


def test_too_small_subnet_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        Ipam(tmp_path, ipaddress.IPv4Network("10.0.0.0/30"))


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, NET)
    ipam.allocate(cid(1))
    with open(ipam.journal.path, "a") as f:
        f.write('{"allocate": "xx", "addr')  # a write cut short by a power loss
    assert ipam.allocations() == {cid(1): addr("10.88.0.2")}


def test_journal_is_compacted_when_long(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, NET)
    ipam.allocate(cid(0))
    for n in range(1, 400):
        ipam.allocate(cid(n))
        ipam.release(cid(n))
    lines = ipam.journal.path.read_text().splitlines()
    assert len(lines) < 300
    assert ipam.allocations() == {cid(0): addr("10.88.0.2")}
