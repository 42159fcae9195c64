from __future__ import annotations

from collections.abc import Sequence

import pytest

from scheduler.model import Strategy
from scheduler.placement import batch, registry
from scheduler.placement.framework import (
    PlacementError,
    PlacementRequest,
    ProfileConfig,
    Reads,
    build_profile,
)
from scheduler.placement.view import HostView
from tests.unit.scheduler.placement import builders as b


def test_default_profile_sorts_plugins_by_shape() -> None:
    profile = registry.default_profile()
    assert [f.name for f in profile.host_filters] == [
        "host_state", "constraints", "host_ports", "resources_fit"]
    assert [f.name for f in profile.domain_filters] == ["topology_spread"]
    assert [(p.name, w) for p, w in profile.host_scorers] == [
        ("least_allocated", 1.0), ("most_allocated", 1.0), ("service_spread", 1.0), ("image_locality", 0.1)]
    assert [(p.name, w) for p, w in profile.domain_scorers] == [("topology_spread", 2.0)]
    # One plugin that filters and scores is one instance.
    assert profile.domain_filters[0] is profile.domain_scorers[0][0]


def test_weights_come_from_configuration_and_zero_turns_off() -> None:
    config = registry.DEFAULT_CONFIG.with_weights({"image_locality": 0, "least_allocated": 3})
    profile = registry.profile_from(config)
    assert [(p.name, w) for p, w in profile.host_scorers] == [
        ("least_allocated", 3.0), ("most_allocated", 1.0), ("service_spread", 1.0)]


@pytest.mark.parametrize(("config", "message"), [
    (ProfileConfig(filters=("nope",), scores=()), "unknown placement plugin 'nope'"),
    (ProfileConfig(filters=("least_allocated",), scores=()), "'least_allocated' is not a filter"),
    (ProfileConfig(filters=(), scores=(("host_state", 1),)), "'host_state' is not a scorer"),
    (ProfileConfig(filters=(), scores=(("least_allocated", -1),)), "weight must be a number >= 0"),
    (ProfileConfig(filters=(), scores=(("least_allocated", float("nan")),)), "weight must be a number"),
    (ProfileConfig(filters=("host_state", "host_state"), scores=()), "listed twice"),
    (ProfileConfig(filters=(), scores=(("least_allocated", 1), ("least_allocated", 2))), "weighted twice"),
    (ProfileConfig(filters=(), scores=(), args={"host_state": {}}), "not enabled"),
    (ProfileConfig(filters=("host_state",), scores=(), args={"host_state": {"x": 1}}),
     "unknown argument 'x'"),
])
def test_bad_configuration_is_refused_clearly(config: ProfileConfig, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        registry.profile_from(config)


def test_the_strategy_picks_the_resource_scorer() -> None:
    hosts = [b.host("h1"), b.host("h2")]
    for strategy, expected in ((Strategy.SPREAD, {"least_allocated", "service_spread"}),
                               (Strategy.BINPACK, {"most_allocated"})):
        view = b.cluster(hosts)
        svc = b.service(strategy=strategy)
        verdict = batch.explain(b.request(svc, "r1"), view, registry.default_profile()).verdicts[0]
        assert set(verdict.scores) == expected | {"image_locality"}


class _Raw:
    """A test scorer whose raw score is the host's allocatable cpus, normalized."""

    name = "raw_cpus"
    reads = Reads.STATIC
    strategy = None
    normalize = True

    def applies(self, request: PlacementRequest) -> bool:
        return True

    def key(self, request: PlacementRequest) -> None:
        return None

    def score(self, request: PlacementRequest, host: HostView) -> float:
        return host.cpu_allocatable / 1000

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        return [self.score(request, host) for host in hosts]


def test_normalizing_scorers_give_the_best_host_the_full_score() -> None:
    profile = build_profile(ProfileConfig(filters=("resources_fit",), scores=(("raw_cpus", 2.0),)),
                            {"raw_cpus": lambda args: _Raw(), **registry.REGISTRY})
    view = b.cluster([b.host("h1", cpus=2), b.host("h2", cpus=8), b.host("h3", cpus=4),
                      b.host("h4", cpus=64, memory=0)])  # the largest does not fit: not the reference
    explained = batch.explain(b.request(b.service(), "r1"), view, profile)
    assert {v.host: v.score for v in explained.verdicts if v.feasible} == {
        "h2": 200.0, "h3": 100.0, "h1": 50.0}


def test_every_host_plugin_answers_the_same_for_one_host_and_for_all() -> None:
    """The batch's first look uses filter_all/score_all, re-evaluations filter/score: they must agree
    exactly, or a host's score would jump when it is re-evaluated."""
    from scheduler.model import HostAdmin, ReplicaPhase
    svc = b.service(cpus=1, memory=b.GiB, image="web:1", host_ports=[8080],
                    constraints=[b.constraint("zone", "in", "a", "b")])
    other = b.service("other", cpus=0, memory=0, image="web:1", host_ports=[8080])
    hosts = [b.host("a1", zone="a", cpus=0, memory=0), b.host("a2", zone="a", cpus=2, committed_cpus=1.5),
             b.host("b1", zone="b", memory=512 * b.MiB), b.host("c1", zone="c"),
             b.host("d1", admin=HostAdmin.DRAINING, conditions=("DiskPressure",)), b.host("e1", cpus=64)]
    view = b.cluster(hosts, services=[svc, other], not_ready=["b1"], replicas=[
        b.replica("o1", other, "e1", phase=ReplicaPhase.RUNNING), b.replica("o2", other, "a2")])
    profile = registry.default_profile()
    for req in (b.request(svc, "r1"), b.request(other, "r2"), b.request(b.service("plain", cpus=0), "r3")):
        for f in profile.host_filters:
            assert f.filter_all(req, view.hosts) == [f.filter(req, h) for h in view.hosts], f.name
        for p, _ in profile.host_scorers:
            assert p.score_all(req, view.hosts) == [p.score(req, h) for h in view.hosts], p.name
