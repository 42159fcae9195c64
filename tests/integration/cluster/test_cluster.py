"""The scheduler end to end: three hosts in zones a, b, c (network namespaces), real agents, real etcd.

What the issue asks, as an operator would see it through the CLI: a service of 6 replicas spread 2/2/2,
scaled to 9 and to 2, a constraint honoured, a replica whose container is killed or removed replaced, an
agent restarted with nothing duplicated, a rolling update gated on health, a drain, pending replicas with a
reason placed once room frees, an image that cannot be pulled, endpoints answering HTTP from another host,
and a deleted service leaving nothing on any host.
"""

from __future__ import annotations

import collections
import json
import os
import signal
from typing import Any

import pytest

from tests.integration.cluster.conftest import IDLE, IMAGE, Cluster, exits_on_sigterm, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

WEB = exits_on_sigterm("mkdir -p /www && echo gen-$GEN-from-$(hostname) > /www/index.html"
                       " && httpd -f -p 8080 -h /www")


def service(name: str, replicas: int, *, command: str = IDLE, extra: str = "", template: str = "",
            cpus: str = "0.05", memory: str = "16M") -> str:
    return f"""
name: {name}
replicas: {replicas}
template:
  image: {IMAGE}
  command: ["sh", "-c", {json.dumps(command)}]
  resources: {{cpus: {cpus}, memory: {memory}}}
{template}
{extra}
"""


def zones(cluster: Cluster, replicas: list[dict[str, Any]]) -> dict[str, int]:
    return dict(collections.Counter(cluster.zone_of[r["host"]] for r in replicas))


def test_spread_over_zones_and_scaling_up_and_down(cluster: Cluster) -> None:
    spread = "placement: {strategy: spread, topology_spread: {label: zone, max_skew: 1}}"
    spec = service("spread", 6, extra=spread)
    assert "created" in cluster.apply(spec)
    assert zones(cluster, cluster.wait_running("spread", 6)) == {"a": 2, "b": 2, "c": 2}
    assert "unchanged" in cluster.apply(spec)  # the same file again: nothing to do

    cluster.cli("scale", "spread", "--replicas", "9")
    assert zones(cluster, cluster.wait_running("spread", 9)) == {"a": 3, "b": 3, "c": 3}
    cluster.cli("scale", "spread", "--replicas", "2")
    kept = cluster.wait_running("spread", 2)
    assert len(set(zones(cluster, kept))) == 2  # still spread over two zones
    wait_for(lambda: len([c for c in cluster.all_containers() if c.startswith("spread-")]) == 2)
    cluster.cli("delete", "service", "spread")


def test_a_constraint_is_honoured(cluster: Cluster) -> None:
    cluster.apply(service("not-c", 4, extra='placement: {constraints: ["zone!=c"]}'))
    placed = cluster.wait_running("not-c", 4)
    assert set(zones(cluster, placed)) == {"a", "b"}
    cluster.cli("delete", "service", "not-c")


def test_a_crashed_stopped_or_removed_container_is_replaced(cluster: Cluster) -> None:
    cluster.apply(service("phoenix", 2, template="  restart: always"))
    first = {r["id"]: r for r in cluster.wait_running("phoenix", 2)}
    victim = sorted(first)[0]
    index = cluster.agent_index(first[victim]["host"])
    agent = cluster.agents[index]

    def inspect() -> dict[str, Any]:
        info: dict[str, Any] = json.loads(agent.run("inspect", victim).stdout)[0]
        return info

    # Crashed (its process killed from outside): the agent's restart policy brings it back in place.
    os.kill(int(inspect()["pid"]), signal.SIGKILL)
    wait_for(lambda: inspect()["restart_count"] >= 1 and inspect()["state"] == "running")
    # Stopped by someone on the host (a kill is an operator's stop to the agent): the scheduler relaunches.
    agent.run("kill", victim)
    wait_for(lambda: [r for r in cluster.replicas("phoenix") if r["id"] == victim and r["restarts"] >= 1
                      and r["state"] == "running"], timeout=60)
    # Removed behind the scheduler's back: the scheduler recreates it, same replica, same host.
    agent.run("rm", "-f", victim)
    wait_for(lambda: victim in cluster.containers(index))
    again = {r["id"]: r for r in cluster.wait_running("phoenix", 2)}
    assert set(again) == set(first) and again[victim]["host"] == first[victim]["host"]
    assert again[victim]["restarts"] >= 2
    cluster.cli("delete", "service", "phoenix")


def test_an_agent_restart_duplicates_and_moves_nothing(cluster: Cluster) -> None:
    cluster.apply(service("steady", 3))
    before = {r["id"]: r["host"] for r in cluster.wait_running("steady", 3)}
    containers = cluster.all_containers()
    cluster.kill_agent(0)
    wait_for(lambda: any(h["state"] == "not_ready" for h in cluster.json("get", "hosts")))
    cluster.start_agent(0)
    wait_for(lambda: [h["state"] for h in cluster.json("get", "hosts")] == ["ready"] * 3, timeout=60)
    after = {r["id"]: r["host"] for r in cluster.wait_running("steady", 3)}
    assert after == before
    assert cluster.all_containers() == containers
    cluster.cli("delete", "service", "steady")


def test_endpoints_answer_from_another_host(cluster: Cluster) -> None:
    cluster.apply(service("web", 3, command="GEN=1; " + WEB, template="  ports: [{container: 8080}]"))
    cluster.wait_running("web", 3)
    endpoints = wait_for(lambda: len(e := cluster.json("get", "endpoints", "web")) == 3 and e)
    for endpoint in endpoints:
        answer = cluster.hosts[0].run(["timeout", "5", "busybox", "wget", "-q", "-O-",
                                       f"http://{endpoint['address']}/"], timeout=10)
        assert answer.stdout.startswith("gen-1-from-"), answer
    cluster.cli("delete", "service", "web")


def test_a_rolling_update_keeps_replicas_ready_and_can_be_undone(cluster: Cluster) -> None:
    health = "  health: {http: {port: 8080, path: /}, interval: 500ms}\n  ports: [{container: 8080}]"
    update = "update: {max_surge: 1, max_unavailable: 0}"
    cluster.apply(service("roll", 3, command="GEN=1; " + WEB, template=health, extra=update))
    cluster.wait_running("roll", 3)
    generation = cluster.json("get", "services", "roll")[0]["generation"]
    cluster.apply(service("roll", 3, command="GEN=2; " + WEB, template=health, extra=update))
    ready_seen = []

    def rolled() -> bool:
        reps = cluster.replicas("roll")
        ready_seen.append(sum(r["ready"] for r in reps))
        return len(reps) == 3 and all(r["generation"] > generation and r["ready"] for r in reps)

    wait_for(rolled, timeout=90)
    assert min(ready_seen) >= 3  # max_unavailable 0: never fewer than 3 ready during the rollout
    status = cluster.cli("rollout", "status", "roll").stdout
    assert "rolled out" in status or "complete" in status.lower()
    cluster.cli("rollout", "undo", "roll")
    wait_for(lambda: all(r["ready"] for r in cluster.replicas("roll")) and len(cluster.replicas("roll")) == 3
             and len({r["generation"] for r in cluster.replicas("roll")}) == 1
             and cluster.replicas("roll")[0]["generation"] > generation + 1, timeout=90)
    cluster.cli("delete", "service", "roll")


def test_drain_moves_replicas_away_first(cluster: Cluster) -> None:
    cluster.apply(service("mobile", 3, extra="placement: {topology_spread: {label: zone, max_skew: 1}}"))
    placed = cluster.wait_running("mobile", 3)
    host = next(r["host"] for r in placed if cluster.zone_of[r["host"]] == "a")
    cluster.cli("drain", host)
    wait_for(lambda: next(h for h in cluster.json("get", "hosts") if h["id"] == host)["state"] == "drained",
             timeout=60)
    after = cluster.wait_running("mobile", 3)
    assert all(r["host"] != host for r in after)
    cluster.cli("uncordon", host)
    wait_for(lambda: next(h for h in cluster.json("get", "hosts") if h["id"] == host)["state"] == "ready")
    cluster.cli("delete", "service", "mobile")


def test_replicas_that_fit_nowhere_are_pending_with_a_reason_until_room_frees(cluster: Cluster) -> None:
    cluster.apply(service("hog", 3, cpus="1.5"))  # one per host: each host offers 2 cpus
    cluster.wait_running("hog", 3)
    cluster.apply(service("late", 1, cpus="1"))
    try:
        pending = wait_for(lambda: [r for r in cluster.replicas("late") if r["state"] == "pending"
                                    and "insufficient cpu" in r["reason"]])
    except AssertionError:
        raise AssertionError("late is not pending for cpu:\n" + cluster.cli("get", "replicas", "-o", "wide",
                                                                           check=False).stdout
                             + cluster.cli("get", "hosts", check=False).stdout) from None
    assert pending[0]["reason"].startswith("0/3 hosts: 3 insufficient cpu"), pending
    explained = cluster.cli("explain", "replica", pending[0]["id"]).stdout
    assert "insufficient cpu" in explained
    cluster.cli("scale", "hog", "--replicas", "2")  # frees a host
    cluster.wait_running("late", 1)
    for name in ("hog", "late"):
        cluster.cli("delete", "service", name)


def test_an_image_that_cannot_be_pulled_fails_with_the_registry_reason(cluster: Cluster) -> None:
    cluster.apply(f"name: ghost\nreplicas: 1\ntemplate: {{image: '{cluster.ctl.address}:5999/no/such:v1'}}\n")
    failed = wait_for(lambda: [r for r in cluster.replicas("ghost") if r["state"] == "failed"], timeout=60)
    assert "could not create its container" in failed[0]["reason"]
    described = cluster.cli("describe", "replica", failed[0]["id"]).stdout
    assert "5999" in described
    cluster.cli("delete", "service", "ghost")


def test_a_deleted_service_leaves_nothing_on_any_host(cluster: Cluster) -> None:
    cluster.apply(service("gone", 4))
    cluster.wait_running("gone", 4)
    cluster.cli("delete", "service", "gone")
    wait_for(lambda: not [c for c in cluster.all_containers() if c.startswith("gone-")], timeout=60)
    wait_for(lambda: not [s for s in cluster.json("get", "services") if s["name"] == "gone"])
    assert not cluster.replicas("gone")
