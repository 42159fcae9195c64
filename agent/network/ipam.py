"""IP address management: which container owns which address of the bridge subnet.

The record is the journal ``<root>/network/ipam.jsonl`` (see ``agent.network.journal``), replayed and
appended to under an ``flock``, so two agents, two threads or a crash mid-write never hand out an address
twice or lose one. Allocation is idempotent per owner: asking again for a container
that already holds an address returns that address, which is what makes a retried or restarted attach
safe. ``reconcile`` frees addresses whose owners no longer exist (a crash between allocate and the
container's removal). The choice of address (``lowest_free``) is a pure function.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection
from pathlib import Path
from typing import Any

from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from agent.network import journal


def gateway_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The bridge's own address: the first host address (``.1`` of a /24)."""
    return subnet.network_address + 1


def validate_subnet(subnet: ipaddress.IPv4Network) -> None:
    """A bridge subnet needs room for the gateway and at least one container."""
    if subnet.prefixlen > 29:
        raise InvalidArgument(f"subnet {subnet} is too small: use a prefix of /29 or shorter")


def lowest_free(
    subnet: ipaddress.IPv4Network, taken: Collection[ipaddress.IPv4Address],
) -> ipaddress.IPv4Address:
    """The lowest address of ``subnet`` that is not the network, gateway, broadcast or ``taken``."""
    reserved = {subnet.network_address, gateway_of(subnet), subnet.broadcast_address}
    for candidate in subnet.hosts():  # hosts() already skips network and broadcast; a generator
        if candidate not in reserved and candidate not in taken:
            return candidate
    raise ResourceExhausted(
        f"no free address left in {subnet} ({len(taken)} in use): remove containers or use a larger --subnet"
    )


def interface_key(owner: str) -> str:
    """What names an owner's host interfaces (``veth<key>``): 10 hex digits of the sha256 of the whole
    container id. Callers choose ids (``web-1a2b3c``, ``web-4d5e6f``): a prefix of the id would collide."""
    return hashlib.sha256(owner.encode()).hexdigest()[:10]


class Ipam:
    """Address allocations of one subnet, journaled in ``state_dir/ipam.jsonl``.

    Owners are container ids; ``interface_key`` names their host interfaces, so ``allocate`` also refuses
    an owner whose key another owner already has (one in 10^12 for distinct ids; the check makes it
    impossible for one container's teardown to hit another's).
    """

    def __init__(self, state_dir: Path, subnet: ipaddress.IPv4Network) -> None:
        validate_subnet(subnet)
        self.subnet = subnet
        self.journal = journal.Journal(state_dir / "ipam.jsonl")

    def allocate(self, owner: str) -> ipaddress.IPv4Address:
        """Reserve the lowest free address for ``owner`` (or return the one it already holds)."""
        with self.journal.locked():
            allocations, logged = self._replay()
            held = allocations.get(owner)
            if held is not None:
                return held
            key = interface_key(owner)
            for other in allocations:
                if interface_key(other) == key:
                    raise AlreadyExists(
                        f"container id {owner[:12]} names the same host interface as {other[:12]} "
                        "(a hash collision): recreate the container under another id"
                    )
            address = lowest_free(self.subnet, set(allocations.values()))
            if logged == 0:
                self.journal.append({"subnet": str(self.subnet)})
            self.journal.append({"allocate": owner, "address": str(address)})
            return address

    def release(self, owner: str) -> bool:
        """Free ``owner``'s address; ``False`` if it held none (release is idempotent)."""
        with self.journal.locked():
            allocations, logged = self._replay()
            if owner not in allocations:
                return False
            self.journal.append({"release": owner})
            del allocations[owner]
            self._compact(allocations, logged + 1)
            return True

    def reconcile(self, live_owners: Collection[str]) -> list[str]:
        """Free every allocation whose owner is not in ``live_owners``; returns the owners freed."""
        with self.journal.locked():
            allocations, logged = self._replay()
            leaked = sorted(o for o in allocations if o not in live_owners)
            for owner in leaked:
                self.journal.append({"release": owner})
                del allocations[owner]
            self._compact(allocations, logged + len(leaked))
            return leaked

    def allocations(self) -> dict[str, ipaddress.IPv4Address]:
        with self.journal.locked():
            return self._replay()[0]

    def address_of(self, owner: str) -> ipaddress.IPv4Address | None:
        """``owner``'s address, or ``None``; parses only that record (see ``allocations`` for all)."""
        with self.journal.locked():
            texts, _ = self._replay_texts()
        text = texts.get(owner)
        return None if text is None else ipaddress.IPv4Address(text)

    def _replay(self) -> tuple[dict[str, ipaddress.IPv4Address], int]:
        texts, logged = self._replay_texts()
        return {owner: ipaddress.IPv4Address(text) for owner, text in texts.items()}, logged

    def _replay_texts(self) -> tuple[dict[str, str], int]:
        """Owner → address text, and the number of entries logged. Texts while replaying, parsed only
        for the survivors (by the caller): parsing every logged address was most of an allocate's cost."""
        entries = self.journal.entries()
        texts: dict[str, str] = {}
        recorded = str(self.subnet)
        for entry in entries:
            if "subnet" in entry:
                recorded = str(entry["subnet"])
            elif "allocate" in entry:
                texts[str(entry["allocate"])] = str(entry["address"])
            elif "release" in entry:
                texts.pop(str(entry["release"]), None)
        if texts and recorded != str(self.subnet) and ipaddress.IPv4Network(recorded) != self.subnet:
            raise FailedPrecondition(
                f"addresses of subnet {recorded} are still allocated ({len(texts)} containers); "
                f"remove those containers before switching to {self.subnet}"
            )
        return texts, len(entries)

    def _compact(self, allocations: dict[str, ipaddress.IPv4Address], logged: int) -> None:
        snapshot: list[dict[str, Any]] = [{"subnet": str(self.subnet)}]
        snapshot += [{"allocate": o, "address": str(a)} for o, a in sorted(allocations.items())]
        self.journal.compact_if_long(logged, snapshot)
