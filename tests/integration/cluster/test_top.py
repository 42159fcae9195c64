"""``shoal top`` against the netns cluster (two schedulers, three hosts in zones a, b and c).

* ``top -n 2 -d 0.2`` prints two plain frames (no escape codes: its output is a pipe), each with the
  leader, every host with its zone and state, the service's desired/running/ready/pending/updated counts,
  and under each host exactly the replicas the scheduler placed there.
* With the leading scheduler SIGKILLed, ``top -n 1`` (given both addresses, the dead one first) still
  answers through the other instance and shows the same hosts and service.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest

from tests.integration.cluster.conftest import Cluster, wait_for
from tests.integration.cluster.test_cluster import service

pytestmark = [pytest.mark.root, pytest.mark.integration]

SPREAD = "placement: {strategy: spread, topology_spread: {label: zone, max_skew: 1}}"


def frames(text: str) -> list[str]:
    """The frames of batch output: each starts with its clock line ("12:00:01  leader ...")."""
    starts = [i for i, line in enumerate(text.splitlines()) if line[:2].isdigit() and "  leader " in line]
    lines = text.splitlines()
    return ["\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]


def section(frame: str, title: str) -> list[list[str]]:
    """The rows (cells split on spaces) of one table of a frame: after its title and header line, up to
    the blank line that ends it."""
    lines = frame.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def host_key(hosts: list[dict[str, Any]], host: dict[str, Any]) -> str:
    """How top names a host: its name, or, when hosts share it (they do here: one machine's hostname),
    its name and the start of its id."""
    shared = sum(h["name"] == host["name"] for h in hosts) > 1
    return f"({host['id'][:8]})" if shared else host["name"]


def check_frame(frame: str, cluster: Cluster, *, placed: dict[str, int]) -> None:
    assert "\x1b" not in frame
    hosts = cluster.json("get", "hosts")
    assert frame.splitlines()[1].startswith("hosts 3/3 ready")
    host_rows = section(frame, "HOSTS (3)")
    for h in hosts:
        key = host_key(hosts, h)
        row = next(r for r in host_rows if key in r)
        state_at = row.index(key) + 1
        assert row[state_at:state_at + 2] == ["ready", cluster.zone_of[h["id"]]], row
    service_rows = section(frame, "SERVICES (1)")
    assert service_rows == [["topweb", "3", "3", "3", "0", "3", "-", "-", "-"]], service_rows
    grid = section(frame, "REPLICAS BY HOST")
    for h in hosts:
        row = next(r for r in grid if host_key(hosts, h) in r)
        glyphs = row[row.index("topweb") + 1] if "topweb" in row else ""
        assert glyphs == "●" * placed.get(h["id"], 0), (row, placed)


def test_top_shows_hosts_zones_counts_and_placement_and_outlives_the_leader(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batch frames are as wide as $COLUMNS says; the CLI inherits this process's environment, where a
    # test runner may have left a terminal's 80.
    monkeypatch.setenv("COLUMNS", "100")
    cluster.apply(service("topweb", 3, extra=SPREAD))
    replicas = cluster.wait_running("topweb", 3)
    placed = collections.Counter(r["host"] for r in replicas)
    assert sorted(cluster.zone_of[h] for h in placed) == ["a", "b", "c"]

    result = cluster.cli("top", "-n", "2", "-d", "0.2")
    shown = frames(result.stdout)
    assert len(shown) == 2, result.stdout
    for frame in shown:
        assert f"leader sched-{cluster.leader()} " in frame.splitlines()[0]
        check_frame(frame, cluster, placed=placed)

    leader = cluster.leader()
    dead, alive = cluster.schedulers[leader], cluster.schedulers[1 - leader]
    dead.kill9()
    order = f"{dead.address},{alive.address}"  # the dead one first: top fails over to the other
    result = cluster.cli("top", "-n", "1", scheduler=order)
    shown = frames(result.stdout)
    assert len(shown) == 1, result.stdout
    assert f"via {alive.address}" in shown[0].splitlines()[0]
    check_frame(shown[0], cluster, placed=placed)
    # The survivor takes the lead (its lease on the dead one's key expires); top says so.
    wait_for(lambda: f"leader {alive.id} " in cluster.cli("top", "-n", "1", scheduler=order).stdout,
             timeout=60)
