"""The audit after a disruption: live replicas (a ready host, not stopping) per service against the
declared count, and each replica id running on one host at most, judged on small listings."""

from __future__ import annotations

from bench.sim.audit import ReplicaRow, audit


def row(rid: str, host: str | None, phase: str = "running", service: str = "web") -> ReplicaRow:
    return ReplicaRow(id=rid, service=service, host=host, phase=phase)


def test_a_cluster_as_declared_passes() -> None:
    found = audit(declared={"web": 2, "db": 1},
                  replicas=[row("w1", "h1"), row("w2", "h2"), row("d1", "h1", service="db")],
                  ready_hosts={"h1", "h2"}, running={"h1": ["w1", "d1"], "h2": ["w2"]})
    assert found.ok
    assert (found.live, found.running, found.ready_hosts) == (3, 3, 2)
    assert found.as_json()["ok"] is True


def test_a_replica_running_on_two_hosts_is_a_duplicate() -> None:
    found = audit(declared={"web": 1}, replicas=[row("w1", "h1")], ready_hosts={"h1", "h2"},
                  running={"h1": ["w1"], "h2": ["w1"]})
    assert not found.ok
    assert found.duplicated == {"w1": ("h1", "h2")}
    assert found.running_not_live == ("w1",)  # the copy on h2 is not where its record says
    assert found.as_json()["duplicated"] == 1


def test_stopping_replicas_and_those_on_hosts_not_ready_are_not_live() -> None:
    # w1 on a lost host (not ready) and w2 stopping do not count: the service is one short.
    found = audit(declared={"web": 2},
                  replicas=[row("w1", "h9"), row("w2", "h1", phase="stopping"), row("w3", "h2")],
                  ready_hosts={"h1", "h2"}, running={"h1": [], "h2": ["w3"]})
    assert found.miscounted == {"web": (2, 1)}
    assert not found.live_not_running and not found.duplicated


def test_one_replica_too_many_is_miscounted_too() -> None:
    found = audit(declared={"web": 1}, replicas=[row("w1", "h1"), row("w2", "h2")], ready_hosts={"h1", "h2"},
                  running={"h1": ["w1"], "h2": ["w2"]})
    assert found.miscounted == {"web": (1, 2)}


def test_a_pending_replica_is_not_live_and_a_service_with_none_counts_zero() -> None:
    found = audit(declared={"web": 1, "db": 1}, replicas=[row("w1", None, phase="pending")],
                  ready_hosts={"h1"}, running={"h1": []})
    assert found.miscounted == {"web": (1, 0), "db": (1, 0)}


def test_a_live_record_without_its_container_and_a_container_without_a_record() -> None:
    found = audit(declared={"web": 1}, replicas=[row("w1", "h1")], ready_hosts={"h1"},
                  running={"h1": ["orphan"]})
    assert found.live_not_running == ("w1",)
    assert found.running_not_live == ("orphan",)
    summary = found.as_json(examples=1)
    assert summary["live_not_running_examples"] == ["w1"]
    assert summary["running_not_live"] == 1
