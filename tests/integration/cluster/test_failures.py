"""Hosts fail: a network blip moves nothing, a partition and a host death move replicas elsewhere within
seconds, and a host that comes back keeps no copy of what moved; a host whose containers keep failing to
start (its agent cannot create their directories) is marked, shown, avoided, and tried again later; one
under memory pressure is shown and avoided.

The scheduler runs with its defaults (``--heartbeat-timeout 2``, ``--host-grace 3``). Each scenario is
bounded; the interruptions themselves (``time.sleep`` while a link is down) are the scenario, not
synchronization.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from tests.integration.cluster.conftest import Cluster, wait_for
from tests.integration.cluster.test_cluster import service

pytestmark = [pytest.mark.root, pytest.mark.integration]

SPREAD = "placement: {topology_spread: {label: zone, max_skew: 1}}"
QUIET_WINDOW = 6.0  # heartbeat timeout + host grace + 1 s: long enough for a wrong move to show


def placement(cluster: Cluster, name: str) -> dict[str, str]:
    return {r["id"]: r["host"] for r in cluster.replicas(name)}


def running_elsewhere(cluster: Cluster, name: str, n: int, away_from: str) -> list[dict[str, Any]] | None:
    reps = cluster.running(name)
    return reps if len(reps) == n and all(r["host"] != away_from for r in reps) else None


def table_row(cluster: Cluster, host_id: str) -> str:
    """The host's line of ``get hosts -o wide`` (the wide table has the id: test hosts share a name)."""
    return next(line for line in cluster.cli("get", "hosts", "-o", "wide").stdout.splitlines()
                if host_id in line.split())


def host_of_zone(cluster: Cluster, placed: list[dict[str, Any]], zone: str) -> str:
    return next(r["host"] for r in placed if cluster.zone_of[r["host"]] == zone)


def test_a_network_blip_of_half_a_second_moves_nothing(cluster: Cluster) -> None:
    cluster.apply(service("calm", 3, extra=SPREAD))
    cluster.wait_running("calm", 3)
    before, containers = placement(cluster, "calm"), cluster.all_containers()
    cluster.set_network(0, up=False)
    time.sleep(0.5)  # the blip
    cluster.set_network(0, up=True)
    deadline = time.monotonic() + QUIET_WINDOW
    while time.monotonic() < deadline:  # bounded watch: no replica may move or be replaced
        assert placement(cluster, "calm") == before
        time.sleep(0.2)
    assert cluster.all_containers() == containers
    assert [h["state"] for h in cluster.json("get", "hosts")] == ["ready"] * 3


def test_a_partition_moves_replicas_and_the_healed_host_keeps_no_copy(cluster: Cluster) -> None:
    cluster.apply(service("part", 3, extra=SPREAD))
    placed = cluster.wait_running("part", 3)
    cut = host_of_zone(cluster, placed, "a")
    victims = [r["id"] for r in placed if r["host"] == cut]
    cluster.set_network(0, up=False)
    try:
        wait_for(lambda: running_elsewhere(cluster, "part", 3, cut), timeout=30)
        abandoned = [r for r in cluster.replicas("part") if r["id"] in victims]
        assert abandoned and all(r["state"] == "stopping" and "unreachable" in r["reason"] for r in abandoned)
        host = next(h for h in cluster.json("get", "hosts") if h["id"] == cut)
        assert host["state"] == "not_ready"
    finally:
        cluster.set_network(0, up=True)
    # Healed: the old copies are retired on the host that comes back, and the count is right again.
    wait_for(lambda: not [c for c in cluster.containers(0) if c in victims], timeout=30)
    after = cluster.wait_running("part", 3)
    assert not {r["id"] for r in after} & set(victims)
    assert len([c for c in cluster.all_containers() if c.startswith("part-")]) == 3


def test_host_death_moves_its_replicas_and_the_restarted_host_is_cleaned(cluster: Cluster) -> None:
    cluster.apply(service("sturdy", 3, extra=SPREAD))
    placed = cluster.wait_running("sturdy", 3)
    dead = host_of_zone(cluster, placed, "a")
    victims = [r["id"] for r in placed if r["host"] == dead]
    cluster.kill_host(0)  # agent, supervisor and every container
    cluster.set_network(0, up=False)  # and a dead machine answers nothing (not even "refused")
    moved = wait_for(lambda: running_elsewhere(cluster, "sturdy", 3, dead), timeout=30)
    assert not {r["id"] for r in moved} & set(victims)
    cluster.set_network(0, up=True)
    cluster.start_agent(0)  # the host comes back (same root): what moved away is removed there
    wait_for(lambda: not [c for c in cluster.containers(0) if c in victims], timeout=30)
    cluster.wait_running("sturdy", 3)
    assert len([c for c in cluster.all_containers() if c.startswith("sturdy-")]) == 3


def test_a_host_whose_containers_keep_failing_to_start_is_marked_avoided_and_tried_again(
        cluster: Cluster) -> None:
    broken = cluster.agents[2].root / "containers"  # zone c's agent can no longer create a container
    c_host = next(h for h, zone in cluster.zone_of.items() if zone == "c")

    def host_c() -> dict[str, Any]:
        return next(h for h in cluster.json("get", "hosts") if h["id"] == c_host)

    subprocess.run(["chattr", "+i", str(broken)], check=True)
    try:
        cluster.apply(service("picky", 6))
        settled = cluster.wait_running("picky", 6, timeout=90)
        assert all(r["host"] != c_host for r in settled)  # the two placed on c went elsewhere
        marked = host_c()
        assert marked["state"] == "ready" and "StartFailing" in marked["conditions"], marked
        assert marked["start_failures"] >= 3 and "failing to start containers" in marked["reason"], marked
        assert "Operation not permitted" in marked["reason"], marked
        assert "StartFailing" in table_row(cluster, c_host).split()
        described = cluster.cli("describe", "host", c_host).stdout
        assert "StartFailing" in described and "in a row" in described
    finally:
        subprocess.run(["chattr", "-i", str(broken)], check=True)
    # Repaired: after the cooldown the mark lifts, placement tries the host again, and a start clears it.
    wait_for(lambda: "StartFailing" not in host_c()["conditions"], timeout=60)
    cluster.cli("scale", "picky", "--replicas", "9")
    grown = cluster.wait_running("picky", 9, timeout=90)
    assert any(r["host"] == c_host for r in grown)
    assert host_c()["start_failures"] == 0


def test_a_host_under_memory_pressure_is_shown_and_avoided(cluster: Cluster) -> None:
    agent = cluster.agents[2]
    c_host = next(h for h, zone in cluster.zone_of.items() if zone == "c")
    normal = list(agent.extra_args)

    def conditions_of_c() -> list[str]:
        return next(h["conditions"] for h in cluster.json("get", "hosts") if h["id"] == c_host)

    cluster.kill_agent(2)  # restarted with a threshold above this machine's memory: MemoryPressure
    agent.extra_args = [*normal, "--memory-pressure-below", "1T"]
    try:
        cluster.start_agent(2)
        wait_for(lambda: "MemoryPressure" in conditions_of_c(), timeout=60)
        assert "MemoryPressure" in table_row(cluster, c_host).split()
        cluster.apply(service("roomy", 4))
        placed = cluster.wait_running("roomy", 4)
        assert all(r["host"] != c_host for r in placed)
    finally:
        cluster.kill_agent(2)
        agent.extra_args = normal
        cluster.start_agent(2)
    wait_for(lambda: conditions_of_c() == [], timeout=60)
