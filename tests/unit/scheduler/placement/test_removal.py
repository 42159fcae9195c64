from __future__ import annotations

from collections import Counter

from scheduler.model import HostAdmin, ReplicaPhase
from scheduler.placement.removal import rank_for_removal
from tests.unit.scheduler.placement import builders as b


def test_pending_then_not_ready_then_ready() -> None:
    svc = b.service()
    replicas = [
        b.replica("ready", svc, "h1", ready=True),
        b.replica("running-not-ready", svc, "h1"),
        b.replica("starting", svc, "h1", phase=ReplicaPhase.STARTING),
        b.replica("failed", svc, "h1", phase=ReplicaPhase.FAILED),
        b.replica("pending", svc),
        b.replica("stopping", svc, "h1", phase=ReplicaPhase.STOPPING),
    ]
    view = b.cluster([b.host("h1")], services=[svc], replicas=replicas)
    assert [r.id for r in rank_for_removal(replicas, view)] == [
        "stopping", "pending", "failed", "starting", "running-not-ready", "ready"]


def test_replicas_on_hosts_placement_would_not_use_go_first() -> None:
    svc = b.service()
    replicas = [b.replica("on-good", svc, "good", ready=True),
                b.replica("on-cordoned", svc, "cordoned", ready=True),
                b.replica("on-gone", svc, "gone", ready=True)]
    view = b.cluster([b.host("good"), b.host("cordoned", admin=HostAdmin.CORDONED)], services=[svc],
                     replicas=replicas)
    assert [r.id for r in rank_for_removal(replicas, view)] == ["on-gone", "on-cordoned", "on-good"]


def test_largest_domains_shrink_first_and_the_counts_follow() -> None:
    svc = b.service(spread="zone")
    hosts = [b.host("a1", zone="a"), b.host("a2", zone="a"), b.host("b1", zone="b"), b.host("c1", zone="c")]
    layout = {"a1": 3, "a2": 3, "b1": 2, "c1": 2}
    replicas = [b.replica(f"{h}-{i}", svc, h, ready=True) for h, n in layout.items() for i in range(n)]
    view = b.cluster(hosts, services=[svc], replicas=replicas)
    order = rank_for_removal(replicas, view)
    first_five = Counter(view.host(r.host).labels["zone"] for r in order[:5])  # type: ignore[arg-type]
    # 6/2/2 -> remove 4 from a (2/2/2), then one more from any zone.
    assert first_five["a"] in (4, 5) and sum(first_five.values()) == 5
    first_four_hosts = Counter(r.host for r in order[:4])
    assert first_four_hosts == {"a1": 2, "a2": 2}  # within the zone, the host with more goes first


def test_most_loaded_host_then_newest() -> None:
    svc = b.service()
    replicas = [b.replica("old-busy", svc, "busy", ready=True, created_at=1),
                b.replica("new-busy", svc, "busy", ready=True, created_at=2),
                b.replica("idle", svc, "idle", ready=True, created_at=3),
                b.replica("idle2", svc, "idle", ready=True, created_at=4)]
    view = b.cluster([b.host("busy", cpus=4, committed_cpus=3), b.host("idle", cpus=4, committed_cpus=1)],
                     services=[svc], replicas=replicas)
    assert [r.id for r in rank_for_removal(replicas, view)][:2] == ["new-busy", "idle2"]
