"""Rendering of the agent's nftables table (pure; applying it is covered by integration tests)."""

from __future__ import annotations

import ipaddress

from agent.network.firewall import Forward, render_delete, render_elements, render_ruleset, table_name
from agent.network.ports import parse_port_spec

NET = ipaddress.IPv4Network("10.88.0.0/24")


def fwd(spec: str, address: str) -> Forward:
    return Forward(mapping=parse_port_spec(spec), address=ipaddress.IPv4Address(address))


def test_ruleset_replaces_only_its_own_table_atomically() -> None:
    text = render_ruleset(bridge="shoal-0", subnet=NET, forwards=[])
    assert table_name("shoal-0") == "shoal_shoal_0"
    # declare (so delete cannot fail), delete, re-create: one transaction
    assert text.startswith("table ip shoal_shoal_0\ndelete table ip shoal_shoal_0\ntable ip shoal_shoal_0 {")
    assert 'ip saddr 10.88.0.0/24 oifname != "shoal-0" masquerade' in text
    assert "ip daddr != 127.0.0.0/8 fib daddr type local jump ports" in text
    assert "elements" not in text


def test_published_ports_become_map_elements() -> None:
    text = render_ruleset(bridge="shoal0", subnet=NET, forwards=[
        fwd("8080:80", "10.88.0.2"), fwd("192.168.1.1:53:53/udp", "10.88.0.3"), fwd("80:8000", "10.88.0.4"),
    ])
    assert "elements = { 80 : 10.88.0.4 . 8000, 8080 : 10.88.0.2 . 80 }" in text
    assert "elements = { 192.168.1.1 . 53 : 10.88.0.3 . 53 }" in text


def test_element_add_and_delete_scripts() -> None:
    forwards = [fwd("8080:80", "10.88.0.2"), fwd("10.0.0.1:8081:80/udp", "10.88.0.2")]
    assert render_elements("add", bridge="shoal0", forwards=forwards) == (
        "add element ip shoal_shoal0 tcp_any { 8080 : 10.88.0.2 . 80 }\n"
        "add element ip shoal_shoal0 udp_ip { 10.0.0.1 . 8081 : 10.88.0.2 . 80 }\n"
    )
    assert render_elements("delete", bridge="shoal0", forwards=forwards) == (
        "delete element ip shoal_shoal0 tcp_any { 8080 }\n"
        "delete element ip shoal_shoal0 udp_ip { 10.0.0.1 . 8081 }\n"
    )
    assert render_elements("add", bridge="shoal0", forwards=[]) == ""
    assert render_delete("shoal0") == "table ip shoal_shoal0\ndelete table ip shoal_shoal0\n"
