"""The sampler against real cgroups and real network namespaces."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.usage.sampler import UsageSampler

from .conftest import BUSY, Containers, NetnsPair, SamplerThread, identity

pytestmark = [pytest.mark.root, pytest.mark.integration]
MiB = 1 << 20


def test_busy_container_under_half_a_core(containers: Containers, tmp_path: Path) -> None:
    busy = containers.start("busy", ["sh", "-c", BUSY], cpu_millis=500, memory_bytes=64 * MiB,
                            labels={"app": "spin"})
    idle = containers.start("idle", ["sleep", "600"])
    (busy.upper_dir / "written").write_bytes(b"x" * 100_000)
    sampler = UsageSampler(targets=lambda: [busy, idle], identity=identity(tmp_path), interval=1.0)
    with SamplerThread(sampler) as st:
        st.wait_for(4)  # the last rate is over a whole second
    snap = sampler.latest()
    assert snap is not None
    by_name = {c.name: c for c in snap.containers}
    b = by_name["busy"]
    # A correctness check with a wide band (the quota says 0.5), not a timing threshold.
    assert 0.3 <= b.cpu_cores <= 0.7, b
    assert 0.6 <= b.cpu_fraction_of_limit <= 1.4
    assert b.cpu_seconds > 0 and b.cpu_throttled_seconds > 0 and b.cpu_throttled_periods > 0
    assert b.memory_usage_bytes > 0 and b.memory_limit_bytes == 64 * MiB
    assert b.pids >= 1
    assert b.writable_layer_bytes >= 100_000
    assert b.labels == {"app": "spin"}
    i = by_name["idle"]
    assert i.cpu_cores < 0.1 and i.cpu_fraction_of_limit == 0 and i.memory_limit_bytes == 0
    h = snap.host
    assert h.containers_running == 2 and h.memory_committed_bytes == 64 * MiB
    assert h.cpu_committed_millis == 500 and h.cpu_used_cores >= 0.3
    assert 0 < h.memory_used_bytes < h.memory_total_bytes


ECHO_SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7007))
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
"""

CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
got = 0
for attempt in range(100):  # the server may still be starting: resend until 5 echoes came back
    s.sendto(b"x" * 1000, (sys.argv[1], 7007))
    try:
        s.recvfrom(65536)
        got += 1
    except TimeoutError:
        continue
    if got == 5:
        sys.exit(0)
sys.exit(1)
"""


def test_network_counters_come_from_the_containers_own_namespace(
        containers: Containers, netns_pair: NetnsPair, tmp_path: Path) -> None:
    # The "container" is a UDP echo server in namespace a; `ip netns exec` execs it, so its pid is ours.
    inside = containers.start("net", netns_pair.exec_argv(netns_pair.a, [sys.executable, "-c", ECHO_SERVER]))
    host_mode = containers.start("hostnet", ["sleep", "600"], own_network=False)
    ns_a = Path(f"/var/run/netns/{netns_pair.a}").stat().st_ino
    deadline = time.monotonic() + 10
    while Path(f"/proc/{inside.pid}/ns/net").stat().st_ino != ns_a:  # until `ip netns exec` has run
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sampler = UsageSampler(targets=lambda: [inside, host_mode], identity=identity(tmp_path))
    before = asyncio.run(sampler.sample_once()).containers[0]
    subprocess.run(netns_pair.exec_argv(netns_pair.b, [sys.executable, "-c", CLIENT, netns_pair.addr_a]),
                   check=True, capture_output=True, timeout=60)
    snap = asyncio.run(sampler.sample_once())
    sampler.close()
    after = {c.name: c for c in snap.containers}
    c = after["net"]
    assert [i.name for i in c.interfaces] == [netns_pair.dev_a]  # loopback left out
    # At least 5 datagrams of 1000 bytes in and 5 echoes out (more if the client had to resend).
    assert c.network_rx_packets - before.network_rx_packets >= 5
    assert c.network_tx_packets - before.network_tx_packets >= 5
    assert c.network_rx_bytes - before.network_rx_bytes >= 5 * 1000
    assert c.network_tx_bytes - before.network_tx_bytes >= 5 * 1000
    h = after["hostnet"]
    assert (h.network_rx_bytes, h.network_tx_bytes, h.interfaces) == (0, 0, ())
