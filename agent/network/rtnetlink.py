"""The rtnetlink requests on a container's start path, as raw messages on a plain synchronous socket.

Attaching a container is a handful of link/address/route changes. pyroute2 0.9 spends 0.2-0.4 ms of
Python per request (each call drives an asyncio loop, and opening an ``IPRoute`` costs 0.3 ms), which is
more than the kernel work itself; a plain ``AF_NETLINK`` socket and ``struct``-packed messages cost a few
microseconds. So the start path builds its messages here: each builder is a pure function returning a
``Request`` (the message type, flags and body after the netlink header), and ``Socket.transact`` sends
several in one datagram (the kernel handles them one after another, in order, and acks each) and waits
for every ack. Rarely used, read-heavy work (``setup_host``'s dumps) stays on pyroute2 in
``agent.network.bridge``.

A socket acts in the network namespace of the thread that created it, whatever thread uses it later
(see ``agent.network.netns``). Opening one costs about 5 µs, so callers open one per operation rather
than sharing one across threads (which would need a lock and reply routing by sequence number).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# Constants from <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>, <linux/if.h>.
NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what ``ip route add`` records
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NLATTR = struct.Struct("=HH")  # length, type


class RtnetlinkError(OSError):
    """The kernel refused request ``what`` (``errno`` is the kernel's)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


@dataclass(frozen=True)
class Request:
    """One rtnetlink request: the message type, its flags (``NLM_F_REQUEST | NLM_F_ACK`` are added on
    sending) and the body after the netlink header; ``what`` names it in errors."""

    kind: int
    flags: int
    body: bytes
    what: str


# --- encoding (pure) ------------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _mac(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def new_veth(*, name: str, master: int, mtu: int, peer_name: str, peer_ns_fd: int,
             peer_mac: str) -> Request:
    """Create a veth pair in one request: ``name`` here, enslaved to ``master`` and up; its peer
    ``peer_name`` directly inside the namespace ``peer_ns_fd``, with ``peer_mac``, still down.

    The peer cannot be brought up in this request: the kernel configures it before the two ends know
    each other, and opening a veth without its peer fails the whole request with ``ENOTCONN``.
    """
    peer = (
        _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        + attr(IFLA_IFNAME, _name(peer_name))
        + attr(IFLA_NET_NS_FD, _u32(peer_ns_fd))
        + attr(IFLA_MTU, _u32(mtu))
        + attr(IFLA_ADDRESS, _mac(peer_mac))
    )
    linkinfo = attr(IFLA_INFO_KIND, b"veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
    body = (
        _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP)
        + attr(IFLA_IFNAME, _name(name))
        + attr(IFLA_MTU, _u32(mtu))
        + attr(IFLA_MASTER, _u32(master))
        + attr(IFLA_LINKINFO, linkinfo)
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth pair {name}")


def set_up(index: int) -> Request:
    return Request(RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP),
                   f"set link {index} up")


def delete_link(name: str) -> Request:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
    return Request(RTM_DELLINK, 0, body, f"delete link {name}")


def new_address(index: int, address: ipaddress.IPv4Interface) -> Request:
    """``address`` on link ``index``, with the subnet's broadcast address (as Docker sets it)."""
    body = (
        _IFADDRMSG.pack(socket.AF_INET, address.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        + attr(IFA_LOCAL, address.ip.packed)
        + attr(IFA_ADDRESS, address.ip.packed)
        + attr(IFA_BROADCAST, address.network.broadcast_address.packed)
    )
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {address} to link {index}")


def new_default_route(gateway: ipaddress.IPv4Address) -> Request:
    """The IPv4 default route via ``gateway``; the kernel finds the device from the connected route."""
    body = (
        _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        + attr(RTA_GATEWAY, gateway.packed)
    )
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add default route via {gateway}")


def encode(requests: Sequence[Request], *, first_seq: int) -> bytes:
    """One datagram holding ``requests``, numbered from ``first_seq``, each asking for an ack."""
    return b"".join(
        _NLMSGHDR.pack(_NLMSGHDR.size + len(r.body), r.kind, r.flags | NLM_F_REQUEST | NLM_F_ACK,
                       first_seq + i, 0) + r.body
        for i, r in enumerate(requests)
    )


# --- decoding (pure) ------------------------------------------------------------------------------------


def split_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, body) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        yield kind, seq, data[offset + _NLMSGHDR.size: offset + length]
        offset += (length + 3) & ~3


# --- the socket (the only I/O) ----------------------------------------------------------------------------


class Socket:
    """A ``NETLINK_ROUTE`` socket in the creating thread's network namespace; a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def transact(self, *requests: Request) -> None:
        """Send ``requests`` in one datagram and wait for all their acks.

        The kernel processes every request even after one fails, so a failure here may leave later
        requests applied; raises ``RtnetlinkError`` for the first request (in order) that failed.
        """
        first = self._seq + 1
        self._seq += len(requests)
        self._sock.send(encode(requests, first_seq=first))
        errors: dict[int, int] = {}
        pending = len(requests)
        while pending:
            for kind, seq, body in split_messages(self._sock.recv(65536)):
                i = seq - first
                if not 0 <= i < len(requests):
                    continue  # not ours (e.g. from an earlier, abandoned transaction)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        errors[i] = code
                    pending -= 1
        if errors:
            i = min(errors)
            raise RtnetlinkError(errors[i], requests[i].what)
