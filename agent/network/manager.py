"""NetworkManager: bridge-mode networking for the containers of one agent.

The runtime calls ``setup_host`` once at start (bridge, forwarding, the firewall table rebuilt from the
recorded ports), ``attach`` before launching a container (returns the ``Attachment``: the pinned netns
the launcher joins via ``LaunchPlan.netns_path``, the address for /etc/hosts and ``inspect``), ``detach``
when removing it, and ``reconcile`` with the ids of the containers it still knows after a restart.

State lives under ``<root>``: ``network/ipam.jsonl`` (addresses), ``network/ports.jsonl`` (published
ports) and ``netns/<id>`` (pinned namespaces). The files are the truth; the kernel objects (veth,
namespace, map elements) are derived from them and can always be removed again by id, which is what
makes ``detach`` idempotent and usable on a half-built attachment: ``attach`` rolls back with it.

What is attached where is also kept in memory, so ``attachment()`` (called for every container of every
``ListContainers``/``GetContainer``) is a dict lookup: no journal replay, no flock, no I/O. The view is
loaded from the journals by ``setup_host`` and ``reconcile`` and updated at the end of every ``attach``
and ``detach`` from what the journals then say for that container, so it always matches the files (which
stay the truth: a restarted agent reloads them). Attach and detach run in threads of their own while
readers run on the event loop: the view is an immutable mapping replaced whole under a writers' lock, and
a reader takes one reference, so it sees a container's attachment complete or not at all, never half of
one (an attach in progress is invisible until it has its address and ports; a detach in progress shows
the attachment whole until it is gone).

Attach order: reserve ports (conflicts with this agent's other containers and with host listeners are
refused before anything is built) → allocate an address → namespace + veth → DNAT map elements. Detach
runs the reverse and releases the address last, so it is never handed out while anything still points at
it. Blocking work runs in a fresh thread per call (see ``agent.network.netns`` for why fresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from agent.errors import FailedPrecondition, ShoalError
from agent.network import bridge, firewall, ipam, netns, ports, rtnetlink


@dataclass(frozen=True)
class HostNetwork:
    """The host side, as ``setup_host`` found or made it."""

    bridge: str
    bridge_index: int
    gateway: ipaddress.IPv4Interface  # the bridge's address, with the subnet's prefix
    mtu: int


@dataclass(frozen=True)
class Attachment:
    """One container's place on the bridge."""

    container_id: str
    netns_path: str  # for LaunchPlan.netns_path
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    mac: str
    host_veth: str
    mtu: int
    ports: tuple[ports.PortMapping, ...]


class NetworkManager:
    """Bridge networking rooted at ``root`` (an agent's state root) for ``subnet`` on ``bridge``."""

    def __init__(self, root: Path, *, subnet: ipaddress.IPv4Network, bridge_name: str = "shoal0") -> None:
        if not 1 <= len(bridge_name) <= 15 or "/" in bridge_name or bridge_name in (".", ".."):
            raise FailedPrecondition(f"bad bridge name {bridge_name!r}: 1-15 characters, no '/'")
        self.subnet = subnet
        self.bridge = bridge_name
        self.netns_dir = root / "netns"
        self.ipam = ipam.Ipam(root / "network", subnet)
        self.ports = ports.PortTable(root / "network")
        self._host: HostNetwork | None = None
        # The in-memory view (see the module docstring): replaced whole, never mutated, so readers need
        # no lock; writers (threads of attach/detach/reconcile) serialise on ``_view_lock``.
        self._attachments: Mapping[str, Attachment] = MappingProxyType({})
        self._view_lock = threading.Lock()

    # --- async API for the agent's event loop ---------------------------------------------------------

    async def setup_host(self) -> HostNetwork:
        return await asyncio.to_thread(self.setup_host_blocking)

    async def attach(self, container_id: str, *, publish: Iterable[ports.PortMapping] = ()) -> Attachment:
        call = functools.partial(self.attach_blocking, container_id, publish=tuple(publish))
        return await asyncio.wrap_future(netns.in_fresh_thread(call, name=f"net-attach-{container_id[:8]}"))

    async def detach(self, container_id: str) -> bool:
        call = functools.partial(self.detach_blocking, container_id)
        return await asyncio.wrap_future(netns.in_fresh_thread(call, name=f"net-detach-{container_id[:8]}"))

    async def reconcile(self, live_ids: Collection[str]) -> list[str]:
        return await asyncio.to_thread(self.reconcile_blocking, live_ids)

    async def teardown_host(self) -> None:
        await asyncio.to_thread(self.teardown_host_blocking)

    # --- blocking implementations: call from a thread with no running asyncio loop (pyroute2's sync
    # API runs its own loop), and attach/detach from a fresh thread each (``agent.network.netns``) -----

    def setup_host_blocking(self) -> HostNetwork:
        """Idempotent: bridge up with the gateway address and the uplink's MTU, forwarding on, and this
        agent's firewall table replaced by one rebuilt from the recorded state."""
        gateway = ipaddress.IPv4Interface(f"{ipam.gateway_of(self.subnet)}/{self.subnet.prefixlen}")
        with bridge.rtnl() as ipr:
            mtu = bridge.uplink_mtu(ipr)
            index = bridge.ensure_bridge(ipr, name=self.bridge, gateway=gateway, mtu=mtu)
        bridge.enable_ip_forward()
        firewall.apply_ruleset(bridge=self.bridge, subnet=self.subnet, forwards=self._forwards())
        self._host = HostNetwork(bridge=self.bridge, bridge_index=index, gateway=gateway, mtu=mtu)
        self._load_view()
        return self._host

    def attach_blocking(
        self, container_id: str, *, publish: tuple[ports.PortMapping, ...] = (),
    ) -> Attachment:
        host = self._require_host()
        # AlreadyExists: another container publishes it; a port is picked for each that asks for none.
        publish = self.ports.reserve(container_id, publish, free=ports.port_is_free)
        try:
            for mapping in publish:
                ports.probe_host_port(mapping)  # FailedPrecondition: a host process listens there
            address = self.ipam.allocate(container_id)
            iface = ipaddress.IPv4Interface(f"{address}/{self.subnet.prefixlen}")
            mac = bridge.mac_for(address)
            path = self.netns_path(container_id)
            veth = bridge.veth_name(container_id)

            def build(host_fd: int) -> None:
                # Two sockets: one opened in the host namespace (before ``create`` moved this thread),
                # one opened inside the new namespace.
                with rtnetlink.Socket() as inside:
                    inside_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        bridge.add_veth(host_sock, host_name=veth, bridge_index=host.bridge_index,
                                        mtu=host.mtu, peer_ns_fd=inside_fd, peer_mac=mac)
                    finally:
                        os.close(inside_fd)
                    bridge.configure_inside(inside, address=iface, gateway=host.gateway.ip)

            with rtnetlink.Socket() as host_sock:
                netns.create(path, build)
            firewall.add_forwards(bridge=self.bridge, forwards=self._forwards_of(address, publish))
        except BaseException:
            self.detach_blocking(container_id)
            raise
        attached = self._sync_view(container_id)
        if attached is None:  # only if something else edited the journal behind this agent's back
            raise ShoalError(
                f"the address of container {container_id[:12]} vanished from {self.ipam.journal.path}"
            )
        return attached

    def detach_blocking(self, container_id: str) -> bool:
        """Remove everything ``attach`` may have made for ``container_id``; ``False`` if nothing was there."""
        try:
            return self._detach_records(container_id)
        finally:
            # Also after a failure part way: the view then shows what the journals still hold.
            self._sync_view(container_id)

    def _detach_records(self, container_id: str) -> bool:
        address = self.ipam.address_of(container_id)
        published = self.ports.published_by(container_id)
        found = False
        if address is not None and published:
            try:
                firewall.remove_forwards(
                    bridge=self.bridge, forwards=self._forwards_of(address, published),
                )
            except FailedPrecondition:
                # Elements that never made it in (a failed attach): delete per element, ignore missing.
                for fwd in self._forwards_of(address, published):
                    with contextlib.suppress(FailedPrecondition):
                        firewall.remove_forwards(bridge=self.bridge, forwards=(fwd,))
            found = True
        if address is not None:
            # Only an address holder owns its veth name (``Ipam.allocate`` keeps name prefixes unique).
            # Deleting our end takes eth0 with it now; waiting for the namespace's destruction would
            # leave the host end around for a while (netns cleanup is asynchronous in the kernel).
            with rtnetlink.Socket() as sock:
                found = bridge.delete_link(sock, bridge.veth_name(container_id)) or found
        found = netns.remove(self.netns_path(container_id)) or found
        found = self.ports.remove(container_id) or found
        found = self.ipam.release(container_id) or found
        return found

    def reconcile_blocking(self, live_ids: Collection[str]) -> list[str]:
        """Detach every container this agent has network state for but no longer knows."""
        known = set(self.ipam.allocations()) | set(self.ports.read())
        if self.netns_dir.is_dir():
            known |= {p.name for p in self.netns_dir.iterdir()}
        leaked = sorted(known - set(live_ids))
        for container_id in leaked:
            self.detach_blocking(container_id)
        self._load_view()
        return leaked

    def teardown_host_blocking(self) -> None:
        """Remove this agent's firewall table and bridge (only when no container is attached)."""
        if self.ipam.allocations():
            raise FailedPrecondition("containers are still attached: detach them before removing the bridge")
        with contextlib.suppress(FailedPrecondition):  # no table
            firewall.delete_table(self.bridge)
        with rtnetlink.Socket() as sock:
            bridge.delete_link(sock, self.bridge)
        self._host = None
        with self._view_lock:
            self._attachments = MappingProxyType({})

    # --- queries -------------------------------------------------------------------------------------------

    def netns_path(self, container_id: str) -> Path:
        return self.netns_dir / container_id

    def attachment(self, container_id: str) -> Attachment | None:
        """The attachment of ``container_id`` (for ``inspect``/``ps``), or ``None``. Non-blocking: a
        lookup in the in-memory view, safe to call on the event loop while attaches run in threads."""
        self._require_host()
        return self._attachments.get(container_id)

    def attachments(self) -> Mapping[str, Attachment]:
        """Every current attachment, by container id: one consistent, immutable snapshot."""
        self._require_host()
        return self._attachments

    # --- the in-memory view (blocking: journal replays under their flocks) ---------------------------------

    def _load_view(self) -> None:
        """Replace the whole view by what the journals hold (at start, after reconcile)."""
        with self._view_lock:
            if self._host is None:
                return
            published = self.ports.read()
            self._attachments = MappingProxyType({
                owner: self._describe(owner, address, published.get(owner, ()))
                for owner, address in self.ipam.allocations().items()
            })

    def _sync_view(self, container_id: str) -> Attachment | None:
        """Make the view's entry for ``container_id`` (only) match the journals; returns it.

        Only this container's entry is taken from the journals: another container's attach or detach may
        be half-way through them right now, and its own sync publishes it when it is done."""
        with self._view_lock:
            if self._host is None:
                return None
            address = self.ipam.address_of(container_id)
            current = dict(self._attachments)
            if address is None:
                current.pop(container_id, None)
            else:
                published = self.ports.published_by(container_id)
                current[container_id] = self._describe(container_id, address, published)
            self._attachments = MappingProxyType(current)  # one reference store: readers see old or new
            return current.get(container_id)

    def _describe(
        self, container_id: str, address: ipaddress.IPv4Address, published: tuple[ports.PortMapping, ...],
    ) -> Attachment:
        host = self._require_host()
        return Attachment(
            container_id=container_id, netns_path=str(self.netns_path(container_id)),
            address=ipaddress.IPv4Interface(f"{address}/{self.subnet.prefixlen}"), gateway=host.gateway.ip,
            mac=bridge.mac_for(address), host_veth=bridge.veth_name(container_id), mtu=host.mtu,
            ports=published,
        )

    def _require_host(self) -> HostNetwork:
        if self._host is None:
            raise FailedPrecondition("bridge networking is not set up: call setup_host first")
        return self._host

    def _forwards(self) -> list[firewall.Forward]:
        addresses = self.ipam.allocations()
        return [
            firewall.Forward(mapping=m, address=addresses[owner])
            for owner, mappings in self.ports.read().items() if owner in addresses
            for m in mappings
        ]

    @staticmethod
    def _forwards_of(
        address: ipaddress.IPv4Address, mappings: Iterable[ports.PortMapping],
    ) -> list[firewall.Forward]:
        return [firewall.Forward(mapping=m, address=address) for m in mappings]
