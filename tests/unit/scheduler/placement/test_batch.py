from __future__ import annotations

import random
from collections import Counter

import pytest

from scheduler import model
from scheduler.model import HostAdmin, ReplicaPhase, Strategy
from scheduler.placement import batch, registry
from scheduler.placement.framework import (
    PlacementError,
    PlacementRequest,
    ProfileConfig,
    build_profile,
)
from scheduler.placement.plugins import topology_spread
from scheduler.placement.view import ClusterView, DomainCounts
from tests.unit.scheduler.placement import builders as b

PROFILE = registry.default_profile()


def three_zones(per_zone: int = 2, **host_kwargs: object) -> list[model.HostRecord]:
    return [b.host(f"{zone}{i}", zone=zone, **host_kwargs)  # type: ignore[arg-type]
            for zone in "abc" for i in range(per_zone)]


def test_spread_6_over_3_zones_is_2_2_2() -> None:
    svc = b.service(spread="zone")
    view = b.cluster(three_zones(), services=[svc])
    result = batch.place(b.requests(svc, 6), view, PROFILE)
    assert b.zones_of(view, result.placed) == {"a": 2, "b": 2, "c": 2}
    # ... and within a zone, the emptier host: one replica on each of the six hosts.
    assert len(set(result.placed.values())) == 6


def test_spread_without_topology_still_spreads_over_hosts() -> None:
    svc = b.service()
    view = b.cluster(three_zones(), services=[svc])
    result = batch.place(b.requests(svc, 12), view, PROFILE)
    assert sorted(Counter(result.placed.values()).values()) == [2] * 6


def test_binpack_fills_one_host_first() -> None:
    svc = b.service(cpus=1, memory=b.GiB, strategy=Strategy.BINPACK)
    view = b.cluster([b.host(f"h{i}", cpus=4, memory=16 * b.GiB) for i in range(4)], services=[svc])
    result = batch.place(b.requests(svc, 6), view, PROFILE)
    per_host = Counter(result.placed.values())
    assert sorted(per_host.values()) == [2, 4]
    first_host = result.outcomes[0].host
    assert [o.host for o in result.outcomes[:4]] == [first_host] * 4


def test_binpack_prefers_the_fuller_host_already_there() -> None:
    svc = b.service(cpus=1, strategy=Strategy.BINPACK)
    view = b.cluster([b.host("h1", cpus=8, committed_cpus=1), b.host("h2", cpus=8, committed_cpus=5),
                      b.host("h3", cpus=8)], services=[svc])
    result = batch.place(b.requests(svc, 3), view, PROFILE)
    assert set(result.placed.values()) == {"h2"}


def test_constraints_are_honoured() -> None:
    svc = b.service(constraints=[b.constraint("zone", "!=", "c")])
    view = b.cluster(three_zones(), services=[svc])
    result = batch.place(b.requests(svc, 9), view, PROFILE)
    assert len(result.placed) == 9
    assert sorted(b.zones_of(view, result.placed).items()) in ([("a", 5), ("b", 4)], [("a", 4), ("b", 5)])


def test_a_fixed_host_port_allows_one_replica_per_host() -> None:
    svc = b.service(host_ports=[8080])
    other = b.service("other", host_ports=[8080])
    view = b.cluster([b.host(f"h{i}") for i in range(4)], services=[svc, other],
                     replicas=[b.replica("o1", other, "h0")])
    result = batch.place(b.requests(svc, 4), view, PROFILE)
    assert sorted(result.placed.values()) == ["h1", "h2", "h3"]
    pending = result[b.ReplicaId("web-00003")]
    assert pending.host is None
    assert pending.summary == "0/4 hosts: 4 port 8080 in use"


def test_topology_max_skew_keeps_replicas_pending_rather_than_piling_up() -> None:
    # Zone c has a host but it is full: with max skew 1, zones a and b may get one replica each.
    svc = b.service(cpus=1, spread="zone")
    hosts = [b.host("a1", zone="a"), b.host("b1", zone="b"), b.host("c1", zone="c", cpus=0.5)]
    view = b.cluster(hosts, services=[svc])
    result = batch.place(b.requests(svc, 4), view, PROFILE)
    assert sorted(result.placed.values()) == ["a1", "b1"]
    last = result.outcomes[-1]
    assert last.host is None
    assert last.summary == "0/3 hosts: 2 would exceed max skew 1 on zone, 1 insufficient cpu"


def test_max_skew_two_allows_an_uneven_spread_but_prefers_the_emptier_zone() -> None:
    svc = b.service(spread="zone", max_skew=2)
    view = b.cluster(three_zones(per_zone=1), services=[svc], replicas=[
        b.replica("x1", svc, "a0"), b.replica("x2", svc, "a0")])
    result = batch.place(b.requests(svc, 4), view, PROFILE)
    # a=2, b=0, c=0: b and c are preferred until they catch up.
    assert b.zones_of(view, result.placed) == {"b": 2, "c": 2}


def test_pending_has_the_summary_a_person_reads() -> None:
    svc = b.service(cpus=1, memory=4 * b.GiB)
    view = b.cluster([b.host("h1", memory=1 * b.GiB), b.host("h2", memory=2 * b.GiB),
                      b.host("h3", admin=HostAdmin.CORDONED)], services=[svc])
    result = batch.place(b.requests(svc, 1), view, PROFILE)
    outcome = result.outcomes[0]
    assert outcome.host is None
    assert outcome.summary == "0/3 hosts: 2 insufficient memory, 1 cordoned"
    assert outcome.reasons == (("insufficient memory", 2), ("cordoned", 1))
    assert result.pending == (outcome,)


def test_no_hosts_at_all() -> None:
    svc = b.service()
    result = batch.place(b.requests(svc, 2), b.cluster([], services=[svc]), PROFILE)
    assert [o.summary for o in result.outcomes] == ["0/0 hosts: no host has joined"] * 2


def test_placed_summary_names_the_host_and_the_others() -> None:
    svc = b.service()
    view = b.cluster([b.host("h1"), b.host("h2", admin=HostAdmin.DRAINING)], services=[svc], not_ready=[])
    outcome = batch.place(b.requests(svc, 1), view, PROFILE).outcomes[0]
    assert outcome.host == "h1"
    assert outcome.summary == f"on node-h1: 1/2 hosts fit, score {outcome.score:.1f}; 1 draining"
    assert outcome.why == f"1/2 hosts fit, score {outcome.score:.1f}; 1 draining"


def test_incremental_accounting_100_replicas_of_1_cpu_fill_exactly_10_hosts() -> None:
    svc = b.service(cpus=1, memory=64 * b.MiB, strategy=Strategy.BINPACK)
    view = b.cluster([b.host(f"h{i:02d}", cpus=10, memory=64 * b.GiB) for i in range(30)], services=[svc])
    result = batch.place(b.requests(svc, 100), view, PROFILE)
    per_host = Counter(result.placed.values())
    assert len(per_host) == 10 and set(per_host.values()) == {10}
    # Spread uses every host instead, never more than the room.
    spread = b.service("spread", cpus=1, memory=64 * b.MiB)
    view = b.cluster([b.host(f"h{i:02d}", cpus=10, memory=64 * b.GiB) for i in range(12)], services=[spread])
    result = batch.place(b.requests(spread, 130), view, PROFILE)
    assert len(result.placed) == 120 and set(Counter(result.placed.values()).values()) == {10}
    assert result.pending[0].summary == "0/12 hosts: 12 insufficient cpu"


def test_earlier_placements_of_the_batch_count_for_later_services() -> None:
    web = b.service("web", cpus=3)
    db = b.service("db", cpus=3)
    view = b.cluster([b.host("h1", cpus=4), b.host("h2", cpus=4)], services=[web, db])
    result = batch.place(b.requests(web, 1) + b.requests(db, 2), view, PROFILE)
    assert result[b.ReplicaId("web-00000")].host is not None
    placed_db = [o for o in result.outcomes if o.replica.startswith("db") and o.host is not None]
    assert len(placed_db) == 1 and placed_db[0].host != result[b.ReplicaId("web-00000")].host


def test_scaling_0_to_1000_on_1000_hosts_evaluates_each_host_once_plus_once_per_replica() -> None:
    profile = b.counting_profile()
    svc = b.service(spread="zone")
    view = b.cluster([b.host(f"h{i:04d}", zone="abcde"[i % 5]) for i in range(1000)], services=[svc])
    result = batch.place(b.requests(svc, 1000), view, profile)
    assert len(result.placed) == 1000
    assert b.CountingFilter.calls == 1000 + 1000


def test_ties_spread_over_equal_hosts_and_differ_between_batches() -> None:
    hosts = [b.host(f"h{i}") for i in range(20)]
    firsts = set()
    for n in range(10):
        svc = b.service(f"svc{n}")
        view = b.cluster(hosts, services=[svc])
        firsts.add(batch.place(b.requests(svc, 1), view, PROFILE).outcomes[0].host)
    assert len(firsts) > 3  # not always the same first host


def test_placement_is_deterministic_whatever_the_input_order() -> None:
    svc = b.service(spread="zone", cpus=0.75)
    hosts = three_zones(per_zone=4, cpus=3)
    results = []
    for seed in range(3):
        shuffled = hosts[:]
        random.Random(seed).shuffle(shuffled)
        view = b.cluster(shuffled, services=[svc])
        outcomes = batch.place(b.requests(svc, 60), view, PROFILE).outcomes
        results.append([(o.host, o.summary) for o in outcomes])
    assert results[0] == results[1] == results[2]
    assert sum(1 for host, _ in results[0] if host is not None) == 48


def test_verdicts_show_every_host_as_the_decision_saw_it() -> None:
    svc = b.service(cpus=2, spread="zone")
    view = b.cluster([b.host("a1", zone="a", cpus=4), b.host("b1", zone="b", cpus=4),
                      b.host("c1", zone="c", admin=HostAdmin.CORDONED)], services=[svc])
    result = batch.place(b.requests(svc, 5), view, PROFILE)
    first = result.verdicts(b.ReplicaId("web-00000"))
    assert [v.feasible for v in first] == [True, True, False]
    assert first[0].host == result.outcomes[0].host
    assert first[0].score == result.outcomes[0].score
    assert set(first[0].scores) == {"least_allocated", "service_spread", "image_locality", "topology_spread"}
    assert first[2].reasons == ("cordoned",)
    second = {v.host: v for v in result.verdicts(b.ReplicaId("web-00001"))}
    assert second[result.outcomes[0].host].reasons == ("would exceed max skew 1 on zone",)  # type: ignore[index]
    last = result.explain(b.ReplicaId("web-00004"))
    assert last.outcome.host is None
    assert {v.host: v.reasons for v in last.verdicts} == {
        "a1": ("insufficient cpu",), "b1": ("insufficient cpu",), "c1": ("cordoned",)}


def test_verdicts_of_a_step_equal_a_fresh_look_at_the_cluster_then() -> None:
    svc = b.service(cpus=1, spread="zone", max_skew=2)
    hosts = three_zones(per_zone=3, cpus=3)
    view = b.cluster(hosts, services=[svc])
    reqs = b.requests(svc, 25)
    result = batch.place(reqs, view, PROFILE)
    for k in (0, 7, 13, 24):
        earlier = [b.replica(r.replica, svc, result.placed[r.replica], phase=ReplicaPhase.STARTING)
                   for r in reqs[:k] if r.replica in result.placed]
        fresh = batch.explain(reqs[k], b.cluster(hosts, services=[svc], replicas=earlier), PROFILE)
        by_host = {v.host: v for v in fresh.verdicts}
        assert {v.host: v for v in result.verdicts(reqs[k].replica)} == by_host
        assert fresh.outcome.reasons == result.outcomes[k].reasons
        assert fresh.outcome.feasible == result.outcomes[k].feasible


def test_explain_does_not_place() -> None:
    svc = b.service()
    view = b.cluster([b.host("h1")], services=[svc])
    explained = batch.explain(b.request(svc, "r1"), view, PROFILE)
    assert explained.outcome.host == "h1"
    assert view.host(b.HostId("h1")).cpu_placed == 0
    assert view.host_of(b.ReplicaId("r1")) is None


def test_a_replica_cannot_be_placed_twice() -> None:
    svc = b.service()
    view = b.cluster([b.host("h1")], services=[svc], replicas=[b.replica("r1", svc, "h1")])
    with pytest.raises(PlacementError, match="replica r1 is already on host h1"):
        batch.place([b.request(svc, "r1")], view, PROFILE)
    with pytest.raises(PlacementError, match="appears twice"):
        batch.place([b.request(svc, "r2"), b.request(svc, "r2")], view, PROFILE)
    batch.place([b.request(svc, "r2")], view, PROFILE)
    with pytest.raises(PlacementError, match="replica r2 is already on host h1"):
        batch.place([b.request(svc, "r2")], view, PROFILE)


def test_image_locality_breaks_near_ties() -> None:
    svc = b.service(image="web:1")
    # A host with the image but half full loses to an empty one: the image is worth 10 points.
    view = b.cluster([b.host("h1", committed_cpus=2, committed_memory=4 * b.GiB), b.host("h2")],
                     services=[svc], images={b.HostId("h1"): ["web:1"]})
    assert batch.place(b.requests(svc, 1), view, PROFILE).outcomes[0].host == "h2"
    # Between equal hosts, it decides.
    view = b.cluster([b.host("h1"), b.host("h2")], services=[svc], images={b.HostId("h2"): ["web:1"]})
    assert batch.place(b.requests(svc, 1), view, PROFILE).outcomes[0].host == "h2"


def test_a_spread_service_spreads_over_hosts_even_when_one_lacks_its_image() -> None:
    """A host that came back empty (no replica, so no known image) still gets its share: without the
    service spread score, replicas requesting little piled 3 + 3 + 0 on the hosts with the image
    (found by the failover benchmark)."""
    svc = b.service(cpus=0.01, memory=16 * 1024 * 1024, image="web:1")
    view = b.cluster([b.host("h1"), b.host("h2"), b.host("h3")], services=[svc],
                     images={b.HostId("h1"): ["web:1"], b.HostId("h2"): ["web:1"]})
    placed = batch.place(b.requests(svc, 6), view, PROFILE).outcomes
    assert sorted(Counter(o.host for o in placed).values()) == [2, 2, 2]


class _RackSpread:
    """A second domain plugin (max skew 1 over the "rack" label), to exercise several domain labels."""

    name = "rack_spread"

    def domains(self, request: PlacementRequest, view: ClusterView) -> DomainCounts | None:
        return view.domain_counts(request.service, "rack", lambda host: True)

    def filter_domain(self, request: PlacementRequest, counts: DomainCounts,
                      domain: str | None) -> tuple[str, ...]:
        return topology_spread.skew_problem(counts, domain, 1)

    def score_domain(self, request: PlacementRequest, counts: DomainCounts, domain: str | None) -> float:
        return topology_spread.domain_score(counts, domain, 1)


def test_two_domain_labels_are_both_held() -> None:
    config = registry.DEFAULT_CONFIG
    profile = build_profile(
        ProfileConfig(filters=(*config.filters, "rack_spread"),
                      scores=(*config.scores, ("rack_spread", 1.0))),
        {"rack_spread": lambda args: _RackSpread(), **registry.REGISTRY})
    svc = b.service(spread="zone")
    hosts = [b.host(f"{zone}{rack}{i}", zone=zone, labels={"rack": f"r{rack}"})
             for zone in "ab" for rack in "123" for i in range(2)]
    view = b.cluster(hosts, services=[svc])
    result = batch.place(b.requests(svc, 12), view, profile)
    assert len(result.placed) == 12
    domains = {"zone": ("a", "b"), "rack": ("r1", "r2", "r3")}
    counts: dict[str, Counter[str]] = {"zone": Counter(), "rack": Counter()}
    for outcome in result.outcomes:  # after every placement, both spreads within max skew 1
        host = view.host(outcome.host)  # type: ignore[arg-type]
        for label, values in domains.items():
            counts[label][host.labels[label]] += 1
            assert max(counts[label].values()) - min(counts[label][v] for v in values) <= 1
    assert counts["zone"] == {"a": 6, "b": 6}
    assert counts["rack"] == {"r1": 4, "r2": 4, "r3": 4}
    explained = result.explain(result.outcomes[1].replica)
    assert {v.reasons for v in explained.verdicts if not v.feasible} <= {
        ("would exceed max skew 1 on zone",), ("would exceed max skew 1 on rack",)}


def test_an_earlier_batch_explains_what_it_saw_after_later_batches_on_the_view() -> None:
    svc = b.service(cpus=1)
    other = b.service("other", cpus=1)  # the same request shape: the view's kept answers are shared
    view = b.cluster([b.host("h1"), b.host("h2")], services=[svc, other])
    first = batch.place([b.request(svc, "r1")], view, PROFILE)
    before = first.verdicts(b.ReplicaId("r1"))
    later = batch.place([b.request(svc, "r2"), b.request(other, "r3"), b.request(svc, "r4")], view, PROFILE)
    assert len(later.placed) == 3
    assert first.verdicts(b.ReplicaId("r1")) == before
    assert {v.score for v in before} == {before[0].score}  # both hosts were empty then
