"""Published ports: ``-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`` specs, conflict checks, and the
record of which container publishes what.

Parsing and the conflict rule are pure. Two mappings conflict when they share protocol and host port and
their host addresses overlap (an unspecified address, ``0.0.0.0``, overlaps every address). A port is
also refused when a process on the host already holds it, which ``probe_host_port`` finds out by binding
the port in the caller's network namespace, the agent's, the way the kernel itself would arbitrate.
``PortTable`` persists the published ports of every container in the journal ``<root>/network/ports.jsonl``
(see ``agent.network.journal``); the firewall ruleset is rebuilt from it, so the journal is the one truth.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from agent.network import journal
from agent.parsing import parse_port_text

ANY_ADDRESS = ipaddress.IPv4Address("0.0.0.0")
# Where a host port is picked for a mapping that asks for none (host_port 0), lowest free first: the
# range Kubernetes uses for NodePorts, clear of Linux's default ephemeral ports (32768-60999).
AUTO_PORTS = range(30000, 32768)


@dataclass(frozen=True)
class PortMapping:
    """One published port: ``host_ip:host_port`` on the host → ``container_port`` in the container.
    ``host_port`` 0 asks the host to pick a free one (``AUTO_PORTS``) when the container is attached."""

    host_port: int
    container_port: int
    protocol: str = "tcp"  # "tcp" or "udp"
    host_ip: ipaddress.IPv4Address = ANY_ADDRESS  # 0.0.0.0: every address of the host

    def __str__(self) -> str:
        ip = "" if self.host_ip == ANY_ADDRESS else f"{self.host_ip}:"
        return f"{ip}{self.host_port}:{self.container_port}/{self.protocol}"

    def overlaps(self, other: PortMapping) -> bool:
        if not self.host_port or not other.host_port:
            return False  # not picked yet: the pick avoids every port in use
        same_address = ANY_ADDRESS in (self.host_ip, other.host_ip) or self.host_ip == other.host_ip
        return self.protocol == other.protocol and self.host_port == other.host_port and same_address

    def to_dict(self) -> dict[str, object]:
        return {"host_ip": str(self.host_ip), "host_port": self.host_port,
                "container_port": self.container_port, "protocol": self.protocol}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> PortMapping:
        return cls(host_port=int(str(raw["host_port"])), container_port=int(str(raw["container_port"])),
                   protocol=str(raw["protocol"]), host_ip=ipaddress.IPv4Address(str(raw["host_ip"])))


def parse_port_spec(spec: str) -> PortMapping:
    """``"8080:80"``, ``"127.0.0.2:53:53/udp"`` → ``PortMapping``; ``InvalidArgument`` says what is wrong."""
    host_ip, host_port, container_port, protocol = parse_port_text(spec)
    return PortMapping(host_port=host_port, container_port=container_port, protocol=protocol,
                       host_ip=ipaddress.IPv4Address(host_ip) if host_ip else ANY_ADDRESS)


def check_conflicts(
    requested: Iterable[PortMapping], published: Mapping[str, tuple[PortMapping, ...]], *, owner: str,
) -> None:
    """Raise ``AlreadyExists`` if a requested mapping overlaps another requested one or one that a
    container other than ``owner`` publishes."""
    wanted = list(requested)
    for i, mapping in enumerate(wanted):
        for earlier in wanted[:i]:
            if mapping.overlaps(earlier):
                raise AlreadyExists(f"port {mapping.host_port}/{mapping.protocol} is published twice: "
                                    f"{earlier} and {mapping}")
        for other, mappings in sorted(published.items()):
            if other == owner:
                continue
            for taken in mappings:
                if mapping.overlaps(taken):
                    raise AlreadyExists(
                        f"host port {mapping.host_port}/{mapping.protocol} is already published by "
                        f"container {other[:12]} ({taken}): choose another host port"
                    )


def probe_host_port(mapping: PortMapping) -> None:
    """Raise ``FailedPrecondition`` if a process in the caller's network namespace holds the port."""
    kind = socket.SOCK_STREAM if mapping.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if mapping.protocol == "tcp":
            # Lets the bind succeed over TIME_WAIT leftovers, never over a listener.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((str(mapping.host_ip), mapping.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FailedPrecondition(
                    f"host port {mapping.host_port}/{mapping.protocol} is already in use on this host: "
                    "stop what listens there or choose another host port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"cannot publish {mapping}: {mapping.host_ip} is not an address of this host"
                ) from None
            raise


def _pick_ports(mappings: tuple[PortMapping, ...], table: Mapping[str, tuple[PortMapping, ...]], *,
                owner: str, free: Callable[[PortMapping], bool]) -> tuple[PortMapping, ...]:
    taken = [m for other, ms in table.items() if other != owner for m in ms]
    taken += [m for m in mappings if m.host_port]
    out = []
    for mapping in mappings:
        if mapping.host_port:
            out.append(mapping)
            continue
        for port in AUTO_PORTS:
            candidate = dataclasses.replace(mapping, host_port=port)
            if not any(candidate.overlaps(t) for t in taken) and free(candidate):
                out.append(candidate)
                taken.append(candidate)
                break
        else:
            raise FailedPrecondition(f"no free host port left in {AUTO_PORTS.start}-{AUTO_PORTS.stop - 1} "
                                     f"for container port {mapping.container_port}/{mapping.protocol}")
    return tuple(out)


def port_is_free(mapping: PortMapping) -> bool:
    """Whether no process on the host holds ``mapping``'s port (``probe_host_port`` as a predicate)."""
    try:
        probe_host_port(mapping)
    except FailedPrecondition:
        return False
    return True


class PortTable:
    """Published ports per container, journaled in ``state_dir/ports.jsonl``."""

    def __init__(self, state_dir: Path) -> None:
        self.journal = journal.Journal(state_dir / "ports.jsonl")

    def read(self) -> dict[str, tuple[PortMapping, ...]]:
        with self.journal.locked():
            return self._replay()[0]

    def published_by(self, owner: str) -> tuple[PortMapping, ...]:
        """``owner``'s ports (empty if none); parses only that record."""
        with self.journal.locked():
            raw, _ = self._replay_raw()
        return tuple(PortMapping.from_dict(m) for m in raw.get(owner, ()))

    def reserve(self, owner: str, mappings: tuple[PortMapping, ...], *,
                free: Callable[[PortMapping], bool] = lambda mapping: True) -> tuple[PortMapping, ...]:
        """Record ``owner``'s ports after checking them against every other container's, atomically, and
        return them with a host port picked for each that asked for none: the lowest in ``AUTO_PORTS``
        that no container publishes and ``free`` accepts (the caller probes the host)."""
        if not mappings:
            return ()
        with self.journal.locked():
            table, _ = self._replay()
            check_conflicts(mappings, table, owner=owner)
            resolved = _pick_ports(mappings, table, owner=owner, free=free)
            self.journal.append({"publish": owner, "ports": [m.to_dict() for m in resolved]})
        return resolved

    def remove(self, owner: str) -> bool:
        with self.journal.locked():
            table, logged = self._replay()
            if owner not in table:
                return False
            self.journal.append({"unpublish": owner})
            del table[owner]
            snapshot = [{"publish": o, "ports": [m.to_dict() for m in ms]} for o, ms in sorted(table.items())]
            self.journal.compact_if_long(logged + 1, snapshot)
            return True

    def _replay(self) -> tuple[dict[str, tuple[PortMapping, ...]], int]:
        raw, logged = self._replay_raw()
        table = {owner: tuple(PortMapping.from_dict(m) for m in ports) for owner, ports in raw.items()}
        return table, logged

    def _replay_raw(self) -> tuple[dict[str, Any], int]:
        """Owner → its ports as logged (dicts), parsed only for the survivors by the caller, as in
        ``Ipam._replay_texts``."""
        entries = self.journal.entries()
        raw: dict[str, Any] = {}
        for entry in entries:
            if "publish" in entry:
                raw[str(entry["publish"])] = entry["ports"]
            elif "unpublish" in entry:
                raw.pop(str(entry["unpublish"]), None)
        return raw, len(entries)
