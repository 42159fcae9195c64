"""Encoding of the start path's rtnetlink messages, checked by decoding them with pyroute2's parser
(an independent implementation of the same kernel structures)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # type: ignore[import-untyped]

from agent.network import rtnetlink


def decoded(parser: Any, request: rtnetlink.Request, *, seq: int = 1) -> Any:
    message = parser(rtnetlink.encode([request], first_seq=seq))
    message.decode()
    return message


def test_veth_pair_is_one_request_with_the_peer_in_another_namespace() -> None:
    request = rtnetlink.new_veth(name="vethc1111111", master=7, mtu=1400, peer_name="eth0", peer_ns_fd=9,
                                 peer_mac="02:42:0a:58:00:02")
    m = decoded(ifinfmsg, request)
    assert m["header"]["type"] == rtnetlink.RTM_NEWLINK
    flags = rtnetlink.NLM_F_REQUEST | rtnetlink.NLM_F_ACK | rtnetlink.NLM_F_CREATE | rtnetlink.NLM_F_EXCL
    assert m["header"]["flags"] == flags
    assert (m["flags"], m["change"]) == (rtnetlink.IFF_UP, rtnetlink.IFF_UP)
    assert (m.get("IFLA_IFNAME"), m.get("IFLA_MTU"), m.get("IFLA_MASTER")) == ("vethc1111111", 1400, 7)
    assert m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth"
    peer = m.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA").get("VETH_INFO_PEER")
    assert dict(peer["attrs"]) == {"IFLA_IFNAME": "eth0", "IFLA_NET_NS_FD": 9, "IFLA_MTU": 1400,
                                   "IFLA_ADDRESS": "02:42:0a:58:00:02"}
    assert peer["flags"] == 0  # a veth end cannot be opened before both ends exist (ENOTCONN)


def test_address_route_and_link_requests() -> None:
    addr = decoded(ifaddrmsg, rtnetlink.new_address(3, ipaddress.IPv4Interface("10.88.0.2/24")))
    assert (addr["header"]["type"], addr["index"], addr["prefixlen"]) == (rtnetlink.RTM_NEWADDR, 3, 24)
    assert (addr.get("IFA_LOCAL"), addr.get("IFA_ADDRESS"), addr.get("IFA_BROADCAST")) == (
        "10.88.0.2", "10.88.0.2", "10.88.0.255")

    route = decoded(rtmsg, rtnetlink.new_default_route(ipaddress.IPv4Address("10.88.0.1")))
    assert route["header"]["type"] == rtnetlink.RTM_NEWROUTE
    assert (route["dst_len"], route["table"], route["type"]) == (0, 254, rtnetlink.RTN_UNICAST)
    assert route.get("RTA_GATEWAY") == "10.88.0.1" and route.get("RTA_OIF") is None

    up = decoded(ifinfmsg, rtnetlink.set_up(5))
    assert (up["index"], up["flags"], up["change"]) == (5, rtnetlink.IFF_UP, rtnetlink.IFF_UP)
    gone = decoded(ifinfmsg, rtnetlink.delete_link("veth12345678"))
    assert (gone["header"]["type"], gone["index"], gone.get("IFLA_IFNAME")) == (
        rtnetlink.RTM_DELLINK, 0, "veth12345678")


def test_a_batch_is_numbered_in_order_and_splits_back() -> None:
    requests = [rtnetlink.set_up(1), rtnetlink.delete_link("x"), rtnetlink.set_up(2)]
    datagram = rtnetlink.encode(requests, first_seq=41)
    split = list(rtnetlink.split_messages(datagram))
    assert [(kind, seq) for kind, seq, _ in split] == [
        (rtnetlink.RTM_NEWLINK, 41), (rtnetlink.RTM_DELLINK, 42), (rtnetlink.RTM_NEWLINK, 43)]
    assert [body for _, _, body in split] == [r.body for r in requests]
    # a truncated trailing header is ignored rather than misread
    assert len(list(rtnetlink.split_messages(datagram + struct.pack("=I", 99)))) == 3


def test_attributes_are_padded_to_four_bytes() -> None:
    assert rtnetlink.attr(3, b"eth0\0") == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0\0\0"
    assert len(rtnetlink.attr(1, b"veth")) == 8
