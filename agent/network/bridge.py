"""The host side of bridge networking: the bridge, its gateway address, forwarding, veth pairs.

Everything here talks rtnetlink on a socket the caller opened, so the socket's namespace decides which
namespace is changed (see ``agent.network.netns``). Per-container work (veth pair, inside configuration,
deletion) is on a container's start path and uses ``agent.network.rtnetlink``'s raw messages; host setup,
done once at agent start and needing dumps and attribute parsing, uses pyroute2's ``IPRoute``. pyroute2's
own ``NetNS`` class is deliberately not used: it forks a helper process, and the agent must never fork.
Host setup is idempotent: an existing bridge, address or sysctl is left as it is.

A container's pair is created from the host side in one request: ``veth<8 hex of id>`` on the host,
enslaved to the bridge and up, with its peer ``eth0`` born directly inside the container's namespace
with the bridge's MTU, a MAC derived from its address (like Docker's ``02:42:<ip>``, so an address
reused by a later container never meets a stale ARP entry for a different MAC). Configuring the inside is
then one more datagram: lo and eth0 up, the address, the default route.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import random
import socket
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from agent.errors import FailedPrecondition
from agent.network import ipam, rtnetlink

DEFAULT_MTU = 1500
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@contextlib.contextmanager
def rtnl() -> Iterator[Any]:
    """An rtnetlink socket in the calling thread's namespace, subscribed to no multicast groups."""
    with IPRoute(groups=0) as ipr:
        yield ipr


def veth_name(container_id: str) -> str:
    return "veth" + ipam.interface_key(container_id)  # 14 chars: under IFNAMSIZ (15)


def mac_for(address: ipaddress.IPv4Address) -> str:
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def uplink_mtu(ipr: Any) -> int:
    """MTU of the device holding the default route, or 1500 when there is none."""
    for route in ipr.route("dump", table=254, family=2):
        index = route.get("RTA_OIF")
        if route["dst_len"] == 0 and index:
            return int(ipr.link("get", index=index)[0].get("IFLA_MTU") or DEFAULT_MTU)
    return DEFAULT_MTU


def ensure_bridge(ipr: Any, *, name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> int:
    """Make sure bridge ``name`` exists, is up, has ``gateway`` and ``mtu``; returns its index."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        # A fixed MAC: otherwise the bridge takes its lowest port's MAC, changing as containers come and go.
        mac = "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))
        try:
            ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # another agent won a race to create it
                raise FailedPrecondition(f"cannot create bridge {name}: {exc}") from None
        found = ipr.link_lookup(ifname=name)
    index = int(found[0])
    link = ipr.link("get", index=index)[0]
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "bridge":
        raise FailedPrecondition(f"{name} exists and is not a bridge: choose another --bridge")
    if link.get("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.addr("dump", index=index, family=2)}
    if (str(gateway.ip), gateway.network.prefixlen) not in have:
        try:
            ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    ipr.link("set", index=index, state="up")
    return index


def enable_ip_forward() -> None:
    """Routing between the bridge and the uplink (the calling thread's namespace, via its /proc/sys)."""
    with open(IP_FORWARD, "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1\n")


def add_veth(sock: rtnetlink.Socket, *, host_name: str, bridge_index: int, mtu: int, peer_ns_fd: int,
             peer_mac: str) -> None:
    """Create the pair: ``host_name`` on ``sock``'s side, on the bridge and up; ``eth0`` in ``peer_ns_fd``."""
    request = rtnetlink.new_veth(name=host_name, master=bridge_index, mtu=mtu, peer_name="eth0",
                                 peer_ns_fd=peer_ns_fd, peer_mac=peer_mac)
    try:
        sock.transact(request)
    except rtnetlink.RtnetlinkError as exc:
        if exc.errno == errno.EEXIST:
            raise FailedPrecondition(f"network interface {host_name} already exists on this host") from None
        raise FailedPrecondition(f"cannot create veth pair {host_name}: {exc.strerror}") from None


def configure_inside(sock: rtnetlink.Socket, *, address: ipaddress.IPv4Interface,
                     gateway: ipaddress.IPv4Address) -> None:
    """Inside the container's namespace (``sock`` and the calling thread both there): lo and eth0 up, the
    address, the default route via the bridge; one datagram."""
    # An ioctl in the calling thread's namespace: a few µs, where a netlink lookup through pyroute2 cost
    # 0.4 ms. (A fixed index is not safe: tunnel modules add fallback devices to every new namespace.)
    eth0 = socket.if_nametoindex("eth0")
    sock.transact(
        rtnetlink.set_up(1),  # lo is ifindex 1 in every network namespace
        rtnetlink.set_up(eth0),
        rtnetlink.new_address(eth0, address),
        rtnetlink.new_default_route(gateway),
    )


def delete_link(sock: rtnetlink.Socket, name: str) -> bool:
    """Delete link ``name`` (a veth takes its peer with it); ``False`` if it did not exist."""
    try:
        sock.transact(rtnetlink.delete_link(name))
    except rtnetlink.RtnetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise
    return True
