"""The agent's nftables table: masquerade for the bridge subnet and DNAT for published ports.

Each agent owns exactly one table, ``ip shoal_<bridge>``, and nothing else in the ruleset. The table is
rendered from state (``render_ruleset``, pure) and replaced in one nftables transaction (declare, delete,
re-create: the kernel applies all or nothing) when the agent starts. That is why a restarted
agent never duplicates a rule and why removal is one ``delete table``. Other tables (the host's own
firewall, other agents on other bridges) are never read or touched.

Rules:
- ``postrouting``: traffic from the subnet leaving by any interface but the bridge is masqueraded; traffic
  DNAT'ed back onto the bridge from the subnet (a container reaching a sibling through a published port,
  "hairpin") is masqueraded too, or the sibling would answer directly and the client would drop the reply.
- ``prerouting`` (packets from other hosts and from containers) and ``output`` (the host's own
  processes): packets to a local address of the host jump to ``ports``, whose DNAT rules look the
  destination up in four maps (tcp/udp, any address/one address). Loopback destinations are left alone:
  a DNAT'ed 127.0.0.1 source is a martian on the bridge.

Publishing or unpublishing a port adds or deletes map elements, not rules: an element add commits in
about 0.1 ms, whereas any rule or chain change waits out an RCU grace period (3-12 ms measured), which
would blow the start-latency budget. The full rebuild from state happens once, at agent start.

No forward-accept rules: in nftables an ``accept`` ends only its own base chain, so an accept here could not
override a drop in the host's firewall anyway; the default forward policy is accept.

Applying goes through libnftables (the library behind the ``nft`` command, same syntax, same kernel
transaction) via ctypes, so the agent never forks and an apply costs well under a millisecond. The
library's netlink socket lives in the calling thread's network namespace: call from an agent thread.
"""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from agent.errors import FailedPrecondition
from agent.network.ports import ANY_ADDRESS, PortMapping


@dataclass(frozen=True)
class Forward:
    """A published port resolved to its container's address."""

    mapping: PortMapping
    address: ipaddress.IPv4Address


def table_name(bridge: str) -> str:
    return "shoal_" + bridge.replace("-", "_")


def _map_name(mapping: PortMapping) -> str:
    return f"{mapping.protocol}_{'any' if mapping.host_ip == ANY_ADDRESS else 'ip'}"


def _element(fwd: Forward) -> str:
    m = fwd.mapping
    key = f"{m.host_port}" if m.host_ip == ANY_ADDRESS else f"{m.host_ip} . {m.host_port}"
    return f"{key} : {fwd.address} . {m.container_port}"


def _elements_by_map(forwards: Iterable[Forward]) -> dict[str, list[str]]:
    by_map: dict[str, list[str]] = {name: [] for name in _MAPS}
    def order(f: Forward) -> tuple[str, int, str]:
        return (f.mapping.protocol, f.mapping.host_port, str(f.mapping.host_ip))

    for fwd in sorted(forwards, key=order):
        by_map[_map_name(fwd.mapping)].append(_element(fwd))
    return by_map


# Map name → its key type. Published ports are map elements, not rules: adding an element commits in
# ~0.1 ms, while adding a rule or chain waits for an RCU grace period (3-12 ms here).
_MAPS: dict[str, str] = {
    "tcp_ip": "ipv4_addr . inet_service", "tcp_any": "inet_service",
    "udp_ip": "ipv4_addr . inet_service", "udp_any": "inet_service",
}


def render_ruleset(*, bridge: str, subnet: ipaddress.IPv4Network, forwards: Iterable[Forward]) -> str:
    """The nft script that atomically replaces this agent's table with the given state."""
    table = table_name(bridge)
    maps = []
    for name, elements in _elements_by_map(forwards).items():
        body = f"    type {_MAPS[name]} : ipv4_addr . inet_service\n"
        if elements:
            body += "    elements = { " + ", ".join(elements) + " }\n"
        maps.append(f"  map {name} {{\n{body}  }}\n")
    return (
        f"table ip {table}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        + "".join(maps)
        + "  chain ports {\n"
        # An address-specific mapping wins over a wildcard one; a map miss just falls through.
        "    dnat ip to ip daddr . tcp dport map @tcp_ip\n"
        "    dnat ip to tcp dport map @tcp_any\n"
        "    dnat ip to ip daddr . udp dport map @udp_ip\n"
        "    dnat ip to udp dport map @udp_any\n"
        "  }\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        "    fib daddr type local jump ports\n"
        "  }\n"
        "  chain output {\n"
        # -100 is dstnat's value; nft accepts the name for prerouting only.
        "    type nat hook output priority -100; policy accept;\n"
        "    ip daddr != 127.0.0.0/8 fib daddr type local jump ports\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {subnet} oifname != "{bridge}" masquerade\n'
        f'    ip saddr {subnet} oifname "{bridge}" ct status dnat masquerade\n'
        "  }\n"
        "}\n"
    )


def render_elements(verb: str, *, bridge: str, forwards: Iterable[Forward]) -> str:
    """``add`` or ``delete`` the map elements of ``forwards`` (an empty script if there are none)."""
    if verb not in ("add", "delete"):
        raise ValueError(f"verb must be add or delete, not {verb!r}")
    table = table_name(bridge)
    lines = []
    for name, elements in _elements_by_map(forwards).items():
        if elements:
            if verb == "delete":  # delete takes keys only
                elements = [e.split(" : ")[0] for e in elements]
            lines.append(f"{verb} element ip {table} {name} {{ {', '.join(elements)} }}\n")
    return "".join(lines)


def render_delete(bridge: str) -> str:
    table = table_name(bridge)
    return f"table ip {table}\ndelete table ip {table}\n"


class _Nft:
    """A lazily loaded libnftables (ctypes declarations once per process)."""

    lib: ctypes.CDLL | None = None

    @classmethod
    def load(cls) -> ctypes.CDLL:
        if cls.lib is None:
            try:
                lib = ctypes.CDLL("libnftables.so.1")
            except OSError:
                raise FailedPrecondition(
                    "libnftables.so.1 not found: install the nftables package (apt-get install nftables)"
                ) from None
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_free.restype = None
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.restype = ctypes.c_int
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.restype = ctypes.c_int
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            cls.lib = lib
        return cls.lib


def run_nft(script: str) -> str:
    """Run an nft script in one transaction in the calling thread's netns; returns nft's output.

    Raises ``FailedPrecondition`` with nft's own error text if the kernel refused it (nothing applied).
    """
    lib = _Nft.load()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise FailedPrecondition("nftables: could not create a context (out of memory?)")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            raise FailedPrecondition(f"nftables refused the ruleset: {err or f'error {rc}'}")
        return out
    finally:
        lib.nft_ctx_free(ctx)


def apply_ruleset(*, bridge: str, subnet: ipaddress.IPv4Network, forwards: Iterable[Forward]) -> None:
    run_nft(render_ruleset(bridge=bridge, subnet=subnet, forwards=forwards))


def add_forwards(*, bridge: str, forwards: Iterable[Forward]) -> None:
    script = render_elements("add", bridge=bridge, forwards=forwards)
    if script:
        run_nft(script)


def remove_forwards(*, bridge: str, forwards: Iterable[Forward]) -> None:
    script = render_elements("delete", bridge=bridge, forwards=forwards)
    if script:
        run_nft(script)


def delete_table(bridge: str) -> None:
    run_nft(render_delete(bridge))
