"""bench/event_stream_cost.py runs both scenarios end to end at a tiny size: every launched container
is seen running by the followers, and the figures it records are there for each scenario."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports free now, below the kernel's ephemeral range (the hosts
    listen on consecutive ports)."""
    for _ in range(100):
        base = random.randrange(20_000, 30_000)
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + n):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


def test_both_scenarios_follow_every_launched_container(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(ROOT / "bench/event_stream_cost.py"), "--hosts", "3", "--containers",
                    "4", "--rounds", "1", "--base-port", str(free_ports(2 * 3)), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    scenarios = json.loads(out.read_text())["scenarios"]
    assert sorted(scenarios) == ["batched", "one"]
    for figures in scenarios.values():
        assert figures["events"]["median"] == 2 * 3 * 4
        # (cpu is read in clock ticks, 10 ms: at this size it may round to nothing)
        assert {"seconds", "follower_cpu_us_per_event", "hosts_cpu_us_per_event"} <= set(figures)
        assert figures["seconds"]["median"] > 0
