"""Bridge networking costs: attach/detach latency against a bare network namespace, and request
round trips through a published port against direct to the container's address.

Everything runs in a two-host test world (``tests.fixtures.netns``): the NetworkManager runs inside
host A; host B is another machine on the test switch, given a route to A's container subnet (inside B's
namespace) so "direct" is measurable from there too. Nothing touches the root network namespace.

* ``none``: what ``--network none`` costs for networking: a fresh thread that unshares a network
  namespace and comes back (the launcher pays the unshare itself; we time it here for comparison).
* ``attach``: ``NetworkManager.attach`` (fresh thread, namespace pinned, veth, address, route), no ports;
  ``attach -p``: with one published port; ``detach``.
* RTT: a TCP echo server in a container; p50 of 1-byte request/response on one connection (``echo``) and
  of connect + request + close (``connect``), from host B and host A, direct vs through the published port.

Run as root: ``/opt/shoal-venv/bin/python bench/network.py [--n 200]``; prints a JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SUBNET = "10.88.0.0/24"

# Single-threaded (selectors): a thread per connection would add GIL hand-offs of up to 5 ms.
ECHO_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            c, _ = s.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(c, selectors.EVENT_READ)
            continue
        c = key.fileobj
        data = c.recv(64)
        if data:
            c.sendall(data)
        else:
            sel.unregister(c); c.close()
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def rtt(address: str, port: int, n: int) -> dict[str, float]:
    """Runs inside the client's namespace: p50/p90 of echo and connect round trips, in ms."""
    echo: list[float] = []
    with socket.create_connection((address, port), timeout=5) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t = time.perf_counter()
            c.sendall(b"x")
            c.recv(64)
            echo.append(time.perf_counter() - t)
    connect: list[float] = []
    for _ in range(max(20, n // 10)):
        t = time.perf_counter()
        with socket.create_connection((address, port), timeout=5) as c:
            c.sendall(b"x")
            c.recv(64)
        connect.append(time.perf_counter() - t)
    return {"echo_p50_ms": pct(echo, 0.5), "echo_p90_ms": pct(echo, 0.9),
            "connect_p50_ms": pct(connect, 0.5), "connect_p90_ms": pct(connect, 0.9)}


def inside_host_a(root: str, n: int) -> dict[str, Any]:
    """Runs in host A: latency of none vs attach vs detach; then leaves one container with a port up."""
    from agent.linux import syscalls
    from agent.network import manager, netns, ports

    def bare() -> None:
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        syscalls.unshare(syscalls.CLONE_NEWNET)
        syscalls.setns(host, syscalls.CLONE_NEWNET, what="back")
        os.close(host)

    async def run() -> dict[str, Any]:
        m = manager.NetworkManager(Path(root), subnet=ipaddress.IPv4Network(SUBNET))
        await m.setup_host()
        times: dict[str, list[float]] = {"none": [], "attach": [], "attach -p": [], "detach": []}
        for i in range(n):
            # Interleaved so machine noise hits all variants alike.
            t = time.perf_counter()
            await asyncio.wrap_future(netns.in_fresh_thread(bare, name="bare"))
            times["none"].append(time.perf_counter() - t)
            cid = f"{i:08x}" * 8
            t = time.perf_counter()
            await m.attach(cid)
            times["attach"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await m.detach(cid)
            times["detach"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await m.attach(cid, publish=[ports.parse_port_spec(f"{20000 + i}:80")])
            times["attach -p"].append(time.perf_counter() - t)
            await m.detach(cid)
        result: dict[str, Any] = {k: {"p50_ms": pct(v, 0.5), "p90_ms": pct(v, 0.9)} for k, v in times.items()}
        result["bridge_adds_p50_ms"] = result["attach"]["p50_ms"] - result["none"]["p50_ms"]
        a = await m.attach("e" * 64, publish=[ports.parse_port_spec("8080:7")])
        result["server"] = {"netns_path": a.netns_path, "address": str(a.address.ip)}
        return result

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--inner", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        mode, *rest = args.inner
        out = inside_host_a(rest[0], args.n) if mode == "a" else rtt(rest[0], int(rest[1]), args.n)
        print(json.dumps(out))
        return

    from tests.fixtures.netns import net_world

    here = [sys.executable, str(Path(__file__).resolve()), "--n", str(args.n), "--inner"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-net-") as tmp, net_world(2) as world:
        a, b = world.hosts
        server = None
        try:
            measured = subprocess.run([*a.nsenter_net, *here, "a", tmp], check=True, capture_output=True,
                                      text=True, env=env, timeout=600)
            lat = json.loads(measured.stdout)
            srv = lat.pop("server")
            server = subprocess.Popen(["nsenter", f"--net={srv['netns_path']}", sys.executable, "-c",
                                       ECHO_SERVER, "7"], stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            # Inside B's namespace only: a route to A's container subnet, so B can go direct.
            b.run(["ip", "route", "add", SUBNET, "via", str(a.address)], check=True)

            def client(host_prefix: list[str], address: str, port: int) -> dict[str, float]:
                out = subprocess.run([*host_prefix, *here, "c", address, str(port)], check=True,
                                     capture_output=True, text=True, env=env, timeout=600).stdout
                return dict(json.loads(out))

            rtts = {
                "B → container address (direct)": client(b.nsenter_net, srv["address"], 7),
                "B → host A:8080 (published)": client(b.nsenter_net, str(a.address), 8080),
                "A → container address (direct)": client(a.nsenter_net, srv["address"], 7),
                "A → host A:8080 (published)": client(a.nsenter_net, str(a.address), 8080),
            }
        finally:
            if server is not None:
                server.kill()
                server.wait(5)
                if server.stdout is not None:
                    server.stdout.close()
            # The manager process has exited; its pinned namespace file must not outlive the bench.
            for p in (Path(tmp) / "netns").glob("*"):
                subprocess.run(["umount", "-l", str(p)], capture_output=True, timeout=5)
    print(json.dumps({"n": args.n, "latency": lat, "rtt": rtts}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
