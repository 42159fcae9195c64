"""NetworkManager's in-memory view: ``attachment()`` answers from memory, matches the journals after
attach/detach/reconcile/restart, and a reader concurrent with attach or detach never sees half a record.

The kernel side (bridge, veth, namespace pin, nftables) is replaced by a recording fake so these run
without root; the journals are the real ones. ``tests/integration/network`` covers the real kernel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AlreadyExists
from agent.network import bridge, firewall, journal, netns, ports, rtnetlink
from agent.network.ipam import Ipam
from agent.network.manager import Attachment, NetworkManager

NET = ipaddress.IPv4Network("10.88.0.0/24")


def cid(n: int) -> str:
    return f"{n:08x}" * 8


def publish_of(n: int) -> tuple[ports.PortMapping, ...]:
    """A container's published ports, derived from its number so a reader can check them."""
    return (ports.parse_port_spec(f"{20000 + n}:80"), ports.parse_port_spec(f"{30000 + n}:53/udp"))


@dataclass
class FakeKernel:
    """Stands in for netlink, namespaces and nftables; ``hooks`` run inside the steps of attach/detach."""

    pinned: set[str] = field(default_factory=set)
    forwards: set[tuple[str, int]] = field(default_factory=set)
    hooks: list[Callable[[str], None]] = field(default_factory=list)
    fail_create: bool = False

    def step(self, name: str) -> None:
        for hook in self.hooks:
            hook(name)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()

    @contextlib.contextmanager
    def rtnl() -> Iterator[Any]:
        yield object()

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def create(path: Path, configure: Callable[[int], Any]) -> None:
        fake.step("netns.create")
        if fake.fail_create:
            raise RuntimeError("injected failure in netns.create")
        fake.pinned.add(str(path))

    def remove(path: Path) -> bool:
        fake.step("netns.remove")
        found = str(path) in fake.pinned
        fake.pinned.discard(str(path))
        return found

    def add_forwards(*, bridge: str, forwards: Any) -> None:
        fake.step("firewall.add_forwards")
        fake.forwards |= {(str(f.address), f.mapping.host_port) for f in forwards}

    def remove_forwards(*, bridge: str, forwards: Any) -> None:
        fake.step("firewall.remove_forwards")
        fake.forwards -= {(str(f.address), f.mapping.host_port) for f in forwards}

    monkeypatch.setattr(bridge, "rtnl", rtnl)
    monkeypatch.setattr(bridge, "uplink_mtu", lambda ipr: 1450)
    monkeypatch.setattr(bridge, "ensure_bridge", lambda ipr, **kw: 7)
    monkeypatch.setattr(bridge, "enable_ip_forward", lambda: None)
    monkeypatch.setattr(bridge, "delete_link", lambda sock, name: True)
    monkeypatch.setattr(rtnetlink, "Socket", Socket)
    monkeypatch.setattr(netns, "create", create)
    monkeypatch.setattr(netns, "remove", remove)
    monkeypatch.setattr(firewall, "apply_ruleset", lambda **kw: None)
    monkeypatch.setattr(firewall, "add_forwards", add_forwards)
    monkeypatch.setattr(firewall, "remove_forwards", remove_forwards)
    monkeypatch.setattr(ports, "probe_host_port", lambda mapping: None)
    return fake


def manager(root: Path) -> NetworkManager:
    m = NetworkManager(root, subnet=NET, bridge_name="shoal-t0")
    m.setup_host_blocking()
    return m


def journal_view(m: NetworkManager) -> dict[str, tuple[str, tuple[ports.PortMapping, ...]]]:
    """What the journals on disk say, replayed by fresh readers: owner → (address, ports)."""
    published = ports.PortTable(m.ipam.journal.path.parent).read()
    return {
        owner: (str(address), published.get(owner, ()))
        for owner, address in Ipam(m.ipam.journal.path.parent, NET).allocations().items()
    }


def memory_view(m: NetworkManager) -> dict[str, tuple[str, tuple[ports.PortMapping, ...]]]:
    return {owner: (str(a.address.ip), a.ports) for owner, a in m.attachments().items()}


def test_attach_and_detach_keep_the_view_equal_to_the_journals(tmp_path: Path, kernel: FakeKernel) -> None:
    m = manager(tmp_path)
    first = m.attach_blocking(cid(1), publish=publish_of(1))
    second = m.attach_blocking(cid(2))
    assert m.attachment(cid(1)) == first and m.attachment(cid(2)) == second
    assert first.address == ipaddress.IPv4Interface("10.88.0.2/24") and first.ports == publish_of(1)
    assert (first.gateway, first.mtu) == (ipaddress.IPv4Address("10.88.0.1"), 1450)
    assert first.mac == "02:42:0a:58:00:02"
    assert memory_view(m) == journal_view(m) == {
        cid(1): ("10.88.0.2", publish_of(1)), cid(2): ("10.88.0.3", ()),
    }
    assert m.detach_blocking(cid(1)) is True
    assert m.attachment(cid(1)) is None
    assert memory_view(m) == journal_view(m) == {cid(2): ("10.88.0.3", ())}
    assert m.detach_blocking(cid(1)) is False  # idempotent, and the view stays put
    assert memory_view(m) == journal_view(m)


def test_a_restarted_manager_reloads_the_same_view(tmp_path: Path, kernel: FakeKernel) -> None:
    m = manager(tmp_path)
    for n in (1, 2, 3):
        m.attach_blocking(cid(n), publish=publish_of(n))
    m.detach_blocking(cid(2))
    before = dict(m.attachments())
    again = manager(tmp_path)  # a new agent on the same root
    assert dict(again.attachments()) == before
    assert memory_view(again) == journal_view(again)


def test_reconcile_drops_vanished_containers_from_the_view(tmp_path: Path, kernel: FakeKernel) -> None:
    m = manager(tmp_path)
    for n in (1, 2, 3):
        m.attach_blocking(cid(n), publish=publish_of(n))
    assert m.reconcile_blocking([cid(2)]) == [cid(1), cid(3)]
    assert memory_view(m) == journal_view(m) == {cid(2): ("10.88.0.3", publish_of(2))}


def test_a_failed_attach_leaves_nothing_in_view_or_journals(tmp_path: Path, kernel: FakeKernel) -> None:
    m = manager(tmp_path)
    kernel.fail_create = True
    with pytest.raises(RuntimeError, match="injected"):
        m.attach_blocking(cid(1), publish=publish_of(1))
    assert m.attachment(cid(1)) is None and journal_view(m) == {}
    kernel.fail_create = False
    m.attach_blocking(cid(2), publish=publish_of(1))  # the ports were given back
    with pytest.raises(AlreadyExists):
        m.attach_blocking(cid(3), publish=publish_of(1))
    assert memory_view(m) == journal_view(m) == {cid(2): ("10.88.0.2", publish_of(1))}


def test_attachment_reads_no_journal(
    tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = manager(tmp_path)
    attached = m.attach_blocking(cid(1), publish=publish_of(1))

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("attachment() touched a journal")

    monkeypatch.setattr(journal.Journal, "entries", no_io)
    monkeypatch.setattr(journal.Journal, "locked", no_io)
    assert m.attachment(cid(1)) == attached
    assert m.attachment(cid(2)) is None


def test_readers_during_attach_and_detach_see_all_or_nothing(tmp_path: Path, kernel: FakeKernel) -> None:
    m = manager(tmp_path)
    seen: list[tuple[str, str, Attachment | None]] = []
    kernel.hooks.append(lambda step: seen.append(("attach", step, m.attachment(cid(1)))))
    attached = m.attach_blocking(cid(1), publish=publish_of(1))
    # Inside the attach (ports reserved, address allocated, namespace being built) it is not visible yet.
    assert [s[1] for s in seen] == ["netns.create", "firewall.add_forwards"]
    assert all(s[2] is None for s in seen)
    seen.clear()
    kernel.hooks[0] = lambda step: seen.append(("detach", step, m.attachment(cid(1))))
    m.detach_blocking(cid(1))
    # During the detach (elements gone, ports released next) it is still the whole attachment.
    assert [s[1] for s in seen] == ["firewall.remove_forwards", "netns.remove"]
    assert all(s[2] == attached for s in seen)
    assert m.attachment(cid(1)) is None


def test_concurrent_readers_never_see_a_half_state(tmp_path: Path, kernel: FakeKernel) -> None:
    m = manager(tmp_path)
    ids = [cid(n) for n in range(1, 41)]
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            snapshot = m.attachments()
            for n, container in enumerate(ids, start=1):
                found = m.attachment(container)
                reads += 1
                if found is not None and (found.ports != publish_of(n) or found.container_id != container):
                    bad.append(f"{container[:8]}: {found}")
                held = snapshot.get(container)
                if held is not None and held.ports != publish_of(n):
                    bad.append(f"snapshot {container[:8]}: {held}")
            # Not a wait: hands the GIL over, or the writers crawl at one switch interval per syscall.
            time.sleep(0)

    threads = [threading.Thread(target=reader)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # more interleavings per run, and writers are not starved by the reader
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            workers = [
                threading.Thread(target=m.attach_blocking, args=(c,), kwargs={"publish": publish_of(n)})
                for n, c in enumerate(ids, start=1)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            assert memory_view(m) == journal_view(m) and len(memory_view(m)) == len(ids)
            workers = [threading.Thread(target=m.detach_blocking, args=(c,)) for c in ids]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            assert memory_view(m) == journal_view(m) == {}
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
    assert reads > 0 and bad == []
