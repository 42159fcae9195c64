"""Real containers-to-be for the usage tests: processes in real v1 cgroups (a parent of the test's own),
network namespaces joined by a veth pair, and a sampler running in a thread of its own.

Everything is torn down by the fixtures: processes killed, cgroups and the parent removed, namespaces
deleted."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cgroups.detect import detect as detect_cgroups
from agent.cgroups.manager import Cgroup, CgroupManager, Limits
from agent.usage.host import HostIdentity
from agent.usage.sampler import UsageSampler
from agent.usage.targets import SampleTarget

BUSY = "while :; do :; done"


@dataclass
class Containers:
    """Processes in cgroups under a private parent, looking to the sampler like running containers."""

    manager: CgroupManager
    parent: str
    scratch: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    groups: list[Cgroup] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, cpu_millis: int | None = None,
              memory_bytes: int | None = None, labels: dict[str, str] | None = None,
              own_network: bool = True) -> SampleTarget:
        cid = secrets.token_hex(8)
        limits = Limits(memory_bytes=memory_bytes,
                        cpu_quota_us=None if cpu_millis is None else cpu_millis * 100)
        group = self.manager.create(f"{self.parent}/{cid}", limits=limits, devices=())
        self.groups.append(group)
        if cpu_millis is not None and "cpu" in group.paths():
            # Other work on a shared 2-core test machine would otherwise take part of the quota: a
            # large weight lets the group actually get its limit, so "about its limit" is checkable.
            # The weight counts at every level, so the test's own parent gets it too.
            cpu_dir = Path(group.paths()["cpu"])
            for d in (cpu_dir.parent, cpu_dir):
                (d / "cpu.shares").write_text("10240")
        # Held at `read` until it is in the group, then exec'd: the new image's memory is charged to
        # the group (v1 does not move charges of pages touched before joining).
        proc = subprocess.Popen(["sh", "-c", 'read _ && exec "$@"', "sh", *argv], stdin=subprocess.PIPE)
        self.procs.append(proc)
        for path in group.procs_files():
            Path(path).write_text(str(proc.pid))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        upper = self.scratch / cid / "upper"
        upper.mkdir(parents=True)
        return SampleTarget(id=cid, name=name, image="busybox:test", labels=labels or {}, pid=proc.pid,
                            cgroup=group, upper_dir=upper, started_at=time.time(),
                            memory_limit_bytes=memory_bytes, cpu_limit_millis=cpu_millis,
                            own_network=own_network)

    def close(self) -> None:
        for group in self.groups:
            with contextlib.suppress(Exception):
                group.kill_all()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        for group in self.groups:
            group.remove()
        assert self.manager.remove_parent_if_empty(self.parent)


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Containers]:
    ctrs = Containers(manager=detect_cgroups(), parent=f"shoal-test-usage-{secrets.token_hex(4)}",
                      scratch=tmp_path / "containers")
    try:
        yield ctrs
    finally:
        ctrs.close()


@dataclass
class NetnsPair:
    """Two network namespaces joined by a veth pair: ``a`` at ``addr_a``, ``b`` at ``addr_b``."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    addr_a: str = "10.213.7.1"
    addr_b: str = "10.213.7.2"

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    tag = secrets.token_hex(3)
    pair = NetnsPair(a=f"shoal-t-{tag}-a", b=f"shoal-t-{tag}-b", dev_a=f"sva{tag}", dev_b=f"svb{tag}")
    created: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", pair.dev_a, "netns", pair.a, "type", "veth", "peer", "name", pair.dev_b,
            "netns", pair.b)
        for ns, dev, addr in ((pair.a, pair.dev_a, pair.addr_a), (pair.b, pair.dev_b, pair.addr_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in created:  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


class SamplerThread:
    """A sampler's ``run()`` on an event loop in a thread of its own, as in the daemon."""

    def __init__(self, sampler: UsageSampler) -> None:
        self.sampler = sampler
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="test-sampler", daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.sampler.run())
        self._started.set()
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()

    def __enter__(self) -> SamplerThread:
        self._thread.start()
        self._started.wait(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def wait_for(self, sequence: int, *, timeout: float = 30.0) -> None:
        """Poll (bounded) until the sampler has taken ``sequence`` snapshots."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.sampler.latest()
            if snap is not None and snap.sequence >= sequence:
                return
            assert time.monotonic() < deadline, f"sampler did not reach snapshot {sequence}"
            time.sleep(0.05)


def identity(tmp: Path) -> HostIdentity:
    return HostIdentity.for_this_agent(root=tmp / "agent-root", labels={"zone": "test"})
