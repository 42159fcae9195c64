"""The host side of bridge networking: the bridge, its gateway address, forwarding, veth pairs.

Everything here talks rtnetlink through pyroute2's ``IPRoute`` on a socket the caller opened, so the
socket's namespace decides which namespace is changed (see ``agent.network.netns``). pyroute2's own
``NetNS`` class is deliberately not used: it forks a helper process, and the agent must never fork.
Host setup is idempotent: an existing bridge, address or sysctl is left as it is.

A container's pair is created from the host side in one request: ``veth<8 hex of id>`` on the host,
enslaved to the bridge and up, with its peer ``eth0`` born directly inside the container's namespace
with the bridge's MTU and a MAC derived from its address (like Docker's ``02:42:<ip>``), so an address
reused by a later container never meets a stale ARP entry for a different MAC.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import random
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from agent.errors import FailedPrecondition

DEFAULT_MTU = 1500
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@contextlib.contextmanager
def rtnl() -> Iterator[Any]:
    """An rtnetlink socket in the calling thread's namespace, subscribed to no multicast groups."""
    with IPRoute(groups=0) as ipr:
        yield ipr


def veth_name(container_id: str) -> str:
    return "veth" + container_id[:8]  # 12 chars: under IFNAMSIZ (15)


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


def add_veth(ipr: Any, *, host_name: str, bridge_index: int, mtu: int, peer_ns_fd: int,
             peer_mac: str) -> None:
    """Create the pair: ``host_name`` on ``ipr``'s side, on the bridge and up; ``eth0`` in ``peer_ns_fd``."""
    try:
        ipr.link(
            "add", ifname=host_name, kind="veth", mtu=mtu, master=bridge_index, state="up",
            peer={"ifname": "eth0", "net_ns_fd": peer_ns_fd, "mtu": mtu, "address": peer_mac},
        )
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise FailedPrecondition(f"network interface {host_name} already exists on this host") from None
        raise FailedPrecondition(f"cannot create veth pair {host_name}: {exc}") from None


def configure_inside(ipr: Any, *, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address) -> None:
    """Inside the container's namespace: lo and eth0 up, the address, the default route via the bridge."""
    ipr.link("set", index=1, state="up")  # lo is ifindex 1 in every network namespace
    eth0 = int(ipr.link("get", ifname="eth0")[0]["index"])
    ipr.addr("add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen)
    ipr.link("set", index=eth0, state="up")
    ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=eth0)


def delete_link(ipr: Any, name: str) -> bool:
    """Delete link ``name`` (a veth takes its peer with it); ``False`` if it did not exist."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise
    return True
