"""Fixtures for bridge-networking tests: a two-host test world, a NetworkManager driver inside host A,
tiny TCP servers and clients in any namespace, and a guard that the root network namespace is unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.netns import NetWorld, TestHost, net_world, root_netns_snapshot

DRIVER = Path(__file__).with_name("manager_driver.py")
REPO = Path(__file__).resolve().parents[3]
SUBNET = "10.88.0.0/24"
BRIDGE = "shoal0"
UPLINK_MTU = 1400

# Replies "<name> <peer address>" to every TCP connection: the peer shows whether NAT happened.
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[2]} {peer[0]}\n".encode()); c.close()
"""
CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:
    print(c.makefile().readline().strip())
"""


@pytest.fixture(scope="module", autouse=True)
def root_netns_untouched() -> Iterator[None]:
    before = root_netns_snapshot()
    yield
    assert root_netns_snapshot() == before, "the root network namespace changed"


class Driver:
    """A ``manager_driver.py`` process running inside a test host."""

    def __init__(self, host: TestHost, root: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = host.popen(
            [sys.executable, str(DRIVER), str(root), SUBNET, BRIDGE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(REPO),
        )

    def call(self, op: str, **args: Any) -> Any:
        """The command's result; raises ``DriverError`` carrying the manager's exception class name."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"driver exited during {op} (exit {self.proc.wait(5)})")
        reply = json.loads(line)
        if "error" in reply:
            raise DriverError(reply["error"], reply["message"])
        return reply["ok"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class DriverError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class Lab:
    """Host A runs the network manager; host B is another machine on the switch."""

    world: NetWorld
    a: TestHost
    b: TestHost
    root: Path
    driver: Driver
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def restart_driver(self) -> None:
        self.driver.stop()
        self.driver = Driver(self.a, self.root)

    def serve(self, prefix: list[str], *, port: int, name: str) -> None:
        """Start a reply-with-peer server under ``prefix`` (e.g. nsenter into a container's netns)."""
        proc = subprocess.Popen([*prefix, sys.executable, "-c", SERVER, str(port), name],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def ask(self, prefix: list[str], address: str, port: int) -> str:
        """One request from the namespace ``prefix`` enters; "" when the connection failed."""
        out = subprocess.run([*prefix, sys.executable, "-c", CLIENT, address, str(port)],
                             capture_output=True, text=True, timeout=15)
        return out.stdout.strip()

    def table(self) -> str:
        return self.a.run(["nft", "list", "table", "ip", f"shoal_{BRIDGE}"]).stdout

    def state(self) -> dict[str, Any]:
        """What a leak would show up in: host A's links, the DNAT elements, allocations, pinned netns.

        Also checks that the manager's in-memory view (what ``attachment()`` answers) equals its journals."""
        netns_dir = self.root / "netns"
        state = {
            "links": sorted(self.a.links()),
            "elements": sorted(line.strip() for line in self.table().splitlines() if "elements" in line),
            "allocations": self.driver.call("allocations"),
            "published": self.driver.call("published"),
            "netns": sorted(p.name for p in netns_dir.iterdir()) if netns_dir.exists() else [],
        }
        view = self.driver.call("view")
        assert view == {"allocations": state["allocations"], "published": state["published"]}
        return state


def in_netns(path: str) -> list[str]:
    return ["nsenter", f"--net={path}"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with net_world(2, mtu=UPLINK_MTU) as world:
        a, b = world.hosts
        root = tmp_path / "agent"
        lab = Lab(world=world, a=a, b=b, root=root, driver=Driver(a, root))
        try:
            lab.driver.call("setup")
            yield lab
        finally:
            for proc in lab.servers:
                proc.kill()
                proc.wait(5)
                if proc.stdout is not None:
                    proc.stdout.close()
            with contextlib.suppress(Exception):
                for cid in lab.driver.call("allocations"):
                    lab.driver.call("detach", id=cid)
            lab.driver.stop()
            _unmount_under(root)


def _unmount_under(root: Path) -> None:
    """Safety net: no bind-mounted namespace file may outlive the test, whatever failed."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open("/proc/self/mounts") as f:
            left = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
        if not left:
            return
        for target in left:
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=5)
    raise AssertionError(f"mounts left under {root}")
