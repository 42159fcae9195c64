"""Control-plane failures on the netns cluster (3-member etcd, two schedulers), each bounded in time.

* The scheduler leader SIGKILLed in the middle of a scale from 10 to 50: the other instance takes over,
  and exactly 50 replicas end up running, each in exactly one container (none created twice, none
  forgotten). The CLI is given the dead instance's address first, so it fails over too.
* etcd members SIGKILLed (the raft leader, then a follower) while a client streams ``scale`` calls with
  ``--expected-generation``: each acknowledged call bumps the generation by one, so a lost acknowledged
  write would make a later call's generation repeat; the acknowledged generations must strictly increase
  and the service ends at the last acknowledged count, with its replicas running.
* No quorum (two members dead): the API answers UNAVAILABLE — neither a hang nor a wrong answer; the CLI
  exits 69 (EX_UNAVAILABLE) saying etcd cannot be reached — and everything works again once the members
  return.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.integration.cluster.conftest import Cluster, wait_for
from tests.integration.cluster.test_cluster import service

pytestmark = [pytest.mark.root, pytest.mark.integration]

SCALED = re.compile(r"scaled to (\d+) \(generation (\d+)\)")
STREAM_CALLS = 30          # bound of the scale stream
STREAM_RETRIES = 20        # bound of retries of one call while etcd elects a new leader
HANG_GUARD_S = 60          # a CLI call that takes this long has hung: the test fails


def containers_of(cluster: Cluster, prefix: str) -> dict[str, list[int]]:
    """Container id → the hosts (agent indexes) it exists on, for the service's containers."""
    found: dict[str, list[int]] = {}
    for index in range(len(cluster.agents)):
        for cid in cluster.containers(index):
            if cid.startswith(prefix):
                found.setdefault(cid, []).append(index)
    return found


def test_the_leader_killed_during_a_scale_from_10_to_50_leaves_exactly_50(cluster: Cluster) -> None:
    cluster.apply(service("many", 10))
    cluster.wait_running("many", 10)
    leader = cluster.leader()
    dead, alive = cluster.schedulers[leader], cluster.schedulers[1 - leader]
    cluster.cli("scale", "many", "--replicas", "50")

    def mid_scale() -> bool:  # the leader has begun (new replicas exist), not all are running yet
        reps = cluster.replicas("many")
        return len(reps) > 10 and sum(r["state"] == "running" for r in reps) < 50

    wait_for(mid_scale, timeout=60, interval=0.05)
    dead.kill9()
    order = f"{dead.address},{alive.address}"  # the CLI tries the dead one first, then fails over
    assert cluster.cli("get", "services", scheduler=order).returncode == 0
    final = wait_for(lambda: len(cluster.running("many")) == 50 and cluster.running("many"), timeout=240)
    assert cluster.leader() == 1 - leader
    rows = cluster.json("get", "replicas")
    assert len([r for r in rows if r["service"] == "many"]) == 50
    on_hosts = containers_of(cluster, "many-")
    assert sorted(on_hosts) == sorted(r["id"] for r in final)  # none forgotten, none extra
    assert all(len(hosts) == 1 for hosts in on_hosts.values()), on_hosts  # none created twice
    for r in final:  # and each where its record says
        assert on_hosts[r["id"]] == [cluster.agent_index(r["host"])]


@dataclass
class ScaleStream:
    """Sequential ``scale --expected-generation`` calls, retried (bounded) when a call fails."""

    cluster: Cluster
    name: str
    generation: int
    acked: list[tuple[int, int]] = field(default_factory=list)   # (replicas, generation) acknowledged
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            for call in range(STREAM_CALLS):
                self._one(1 + call % 4)
        except BaseException as err:  # surfaced by the test
            self.error = err
        finally:
            self.done.set()

    def _one(self, replicas: int) -> None:
        for _ in range(STREAM_RETRIES):
            result = self.cluster.cli("scale", self.name, "--replicas", str(replicas),
                                      "--expected-generation", str(self.generation), check=False,
                                      timeout=HANG_GUARD_S)
            match = SCALED.search(result.stdout)
            if result.returncode == 0 and match:
                got = int(match.group(2))
                self.acked.append((int(match.group(1)), got))
                self.generation = got
                return
            self.failures.append(result.stderr.strip())
            # The outcome of a failed call is unknown (etcd may have committed it): read the generation back.
            current = self.cluster.json("get", "services", self.name)[0]
            if current["generation"] != self.generation:
                assert current["replicas"] == replicas, (current, replicas)
                self.generation = current["generation"]
                return
        raise AssertionError(f"scale to {replicas} failed {STREAM_RETRIES} times: {self.failures[-3:]}")

    def wait_acked(self, n: int) -> None:
        wait_for(lambda: len(self.acked) >= n or self.done.is_set(), timeout=120, interval=0.05)
        assert self.error is None, self.error
        assert len(self.acked) >= n, f"the stream ended after {len(self.acked)} acknowledged calls"


def test_etcd_members_killed_during_a_stream_of_scale_calls_lose_no_acknowledged_write(
        cluster: Cluster) -> None:
    assert cluster.etcd is not None
    etcd = cluster.etcd
    cluster.apply(service("stream", 1))
    cluster.wait_running("stream", 1)
    first = cluster.json("get", "services", "stream")[0]["generation"]
    stream = ScaleStream(cluster, "stream", generation=first)
    thread = threading.Thread(target=stream.run, name="scale-stream", daemon=True)
    thread.start()
    try:
        stream.wait_acked(5)
        leader = etcd.leader_index()
        etcd.kill(leader)                    # the raft leader, with calls in flight
        stream.wait_acked(12)
        etcd.restart(leader)
        stream.wait_acked(16)
        follower = (etcd.leader_index() + 1) % 3
        etcd.kill(follower)                  # then a follower
        stream.wait_acked(22)
        etcd.restart(follower)
    finally:
        thread.join(timeout=HANG_GUARD_S * STREAM_RETRIES)
    assert not thread.is_alive()
    assert stream.error is None, stream.error
    generations = [g for _, g in stream.acked]
    assert generations == sorted(set(generations)), f"an acknowledged write was lost: {generations}"
    final = cluster.json("get", "services", "stream")[0]
    assert final["generation"] == stream.generation
    last_replicas = 1 + (STREAM_CALLS - 1) % 4
    assert final["replicas"] == last_replicas
    cluster.wait_running("stream", last_replicas, timeout=60)  # the scheduler follows through the others


def test_without_quorum_the_api_answers_unavailable_and_recovers_after(cluster: Cluster) -> None:
    assert cluster.etcd is not None
    etcd = cluster.etcd
    cluster.apply(service("quorum", 2))
    cluster.wait_running("quorum", 2)
    leader = etcd.leader_index()
    lost = [leader, (leader + 1) % 3]
    for index in lost:
        etcd.kill(index)
    try:
        for args in (("get", "services"), ("scale", "quorum", "--replicas", "3")):
            started = time.monotonic()
            result = cluster.cli(*args, check=False, timeout=HANG_GUARD_S)
            # 69 (EX_UNAVAILABLE) is the CLI's exit status for a scheduler answering UNAVAILABLE
            assert result.returncode == 69, (result.returncode, result.stdout, result.stderr)
            assert "etcd cannot be reached" in result.stderr and "retry" in result.stderr, result.stderr
            took = time.monotonic() - started
            print(f"{' '.join(args)}: refused after {took:.1f} s: {result.stderr.strip()}")
    finally:
        for index in lost:
            etcd.restart(index)
    # Quorum back: the API answers again, and what was running still is.
    wait_for(lambda: cluster.cli("get", "services", check=False).returncode == 0, timeout=60)
    wait_for(lambda: len(cluster.running("quorum")) >= 2, timeout=60)
