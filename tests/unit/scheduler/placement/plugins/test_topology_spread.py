from __future__ import annotations

import pytest

from scheduler.model import HostAdmin, ReplicaPhase
from scheduler.placement.framework import PlacementError
from scheduler.placement.plugins import topology_spread
from scheduler.placement.view import DomainCounts
from tests.unit.scheduler.placement import builders as b


@pytest.mark.parametrize(("counts", "domain", "max_skew", "expected"), [
    ({"a": 2, "b": 2, "c": 1}, "c", 1, ()),               # kube's doc example: only zone3 may take one
    ({"a": 2, "b": 2, "c": 1}, "a", 1, ("would exceed max skew 1 on zone",)),
    ({"a": 2, "b": 2, "c": 1}, "a", 2, ()),               # ... and with max skew 2 any zone may
    ({"a": 0, "b": 0}, "a", 1, ()),
    ({"a": 1, "b": 0}, None, 1, ("no label zone",)),
])
def test_skew_problem(counts: dict[str, int], domain: str | None, max_skew: int,
                      expected: tuple[str, ...]) -> None:
    assert topology_spread.skew_problem(DomainCounts("zone", counts), domain, max_skew) == expected


def test_domain_score_prefers_the_least_loaded_domain() -> None:
    counts = DomainCounts("zone", {"a": 3, "b": 1, "c": 2})
    scores = {d: topology_spread.domain_score(counts, d, 3) for d in "abc"}
    assert scores["b"] == 100.0
    assert scores["b"] > scores["c"] > scores["a"] > 0
    assert topology_spread.domain_score(counts, None, 3) == 0.0


def test_counts_cover_eligible_hosts_only() -> None:
    svc = b.service(spread="zone", constraints=[b.constraint("zone", "!=", "c")])
    other = b.service("other")
    hosts = [b.host("a1", zone="a"), b.host("a2", zone="a"), b.host("b1", zone="b"),
             b.host("b2", zone="b", admin=HostAdmin.CORDONED), b.host("c1", zone="c"), b.host("d1", zone="d"),
             b.host("x1")]
    view = b.cluster(hosts, services=[svc, other], not_ready=["d1"], replicas=[
        b.replica("r1", svc, "a1"), b.replica("r2", svc, "a2"), b.replica("r3", svc, "b2"),
        b.replica("r4", svc, "c1"), b.replica("r5", svc, "a1", phase=ReplicaPhase.STOPPING),
        b.replica("o1", other, "b1")])
    counts = topology_spread.new({}).domains(b.request(svc, "new"), view)
    assert counts is not None
    # b2 is cordoned (not counted, but b1 keeps zone b eligible), c is excluded by the constraint,
    # d's only host is not ready, x1 has no zone; stopping replicas and other services do not count.
    assert counts.counts == {"a": 2, "b": 0}
    assert counts.minimum == 0


def test_domain_counts_keep_the_minimum_as_replicas_are_added() -> None:
    counts = DomainCounts("zone", {"a": 0, "b": 0, "c": 1})
    assert counts.add("a") is False
    assert counts.minimum == 0
    assert counts.add("b") is True
    assert counts.minimum == 1
    assert counts.add("zz") is False and "zz" not in counts.counts


def test_without_topology_spread_the_plugin_does_not_apply() -> None:
    view = b.cluster([b.host("h1", zone="a")])
    assert topology_spread.new({}).domains(b.request(b.service(), "r1"), view) is None


def test_max_skew_below_one_is_refused() -> None:
    view = b.cluster([b.host("h1", zone="a")])
    with pytest.raises(PlacementError, match="max_skew must be at least 1"):
        topology_spread.new({}).domains(b.request(b.service(spread="zone", max_skew=0), "r1"), view)
