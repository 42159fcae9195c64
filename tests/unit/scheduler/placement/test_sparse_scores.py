"""A sparse scorer's column (service spread: only the hosts holding the service's replicas score less
than the rest), built without asking every host, must decide exactly as asking every host did."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace

from hypothesis import HealthCheck, given, settings

from scheduler.model import ReplicaPhase
from scheduler.placement import batch, registry
from scheduler.placement.framework import (
    PlacementRequest,
    Profile,
    ScorePlugin,
    SparseScorePlugin,
    SparseScores,
)
from scheduler.placement.plugins.service_spread import ServiceSpread
from scheduler.placement.sampling import Sampling
from scheduler.placement.view import ClusterView, HostView
from tests.unit.scheduler.placement import builders as b
from tests.unit.scheduler.placement.test_properties import SAMPLED, Case, cases, view_of

PROFILE = registry.default_profile()


class Dense:
    """A score plugin as it is, but without ``score_sparse``: every run asks it about every host."""

    def __init__(self, inner: ScorePlugin) -> None:
        self.inner = inner
        self.name, self.reads = inner.name, inner.reads
        self.strategy, self.normalize = inner.strategy, inner.normalize

    def applies(self, request: PlacementRequest) -> bool:
        return self.inner.applies(request)

    def key(self, request: PlacementRequest) -> Hashable:
        return self.inner.key(request)

    def score(self, request: PlacementRequest, host: HostView) -> float:
        return self.inner.score(request, host)

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        return self.inner.score_all(request, hosts)


def dense(profile: Profile) -> Profile:
    return replace(profile, host_scorers=tuple((Dense(p) if isinstance(p, SparseScorePlugin) else p, w)
                                               for p, w in profile.host_scorers))


def decisions(case: Case, profile: Profile) -> list[tuple[object, ...]]:
    view = view_of(case, [])
    out: list[tuple[object, ...]] = []
    for part in case.batches:
        result = batch.place(part, view, profile)  # type: ignore[arg-type]
        for request in part:
            outcome = result[request.replica]
            out.append((outcome, result.verdicts(request.replica)))
    return out


def test_the_default_profile_scores_service_spread_sparsely() -> None:
    assert [p.name for p, _ in PROFILE.host_scorers if isinstance(p, SparseScorePlugin)] == ["service_spread"]
    assert not any(isinstance(p, SparseScorePlugin) for p, _ in dense(PROFILE).host_scorers)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_sparse_columns_decide_as_asking_every_host(case: Case) -> None:
    for profile in (PROFILE, SAMPLED):
        assert decisions(case, profile) == decisions(case, dense(profile))


def test_service_spread_sparse_equals_its_score_on_every_host_as_replicas_land() -> None:
    web, api = b.service("web", cpus=0.1), b.service("api", cpus=0.1)
    hosts = [b.host(f"h{i:02d}") for i in range(12)]
    existing = [b.replica("w0", web, "h03"), b.replica("w1", web, "h03"), b.replica("a0", api, "h05"),
                b.replica("w2", web, "h07", phase=ReplicaPhase.STOPPING)]
    view = b.cluster(hosts, services=[web, api], replicas=existing)
    plugin = ServiceSpread()
    for placed in ([], b.requests(web, 5), b.requests(api, 9, prefix="more")):
        if placed:
            batch.place(placed, view, PROFILE)
        for svc in (web, api):
            request = b.request(svc, "probe")
            sparse = plugin.score_sparse(request, view)
            others = {i: sparse.value(i) for i in sparse.where}
            assert [others.get(i, sparse.default) for i in range(len(view.hosts))] == \
                [plugin.score(request, h) for h in view.hosts]
            assert set(others) <= set(view.service_hosts(svc.name))


class Counting(ServiceSpread):
    """Service spread that counts the hosts whose score it is asked for (``SparseScores.value``)."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def score_sparse(self, request: PlacementRequest, view: ClusterView) -> SparseScores:
        inner = super().score_sparse(request, view)

        def value(i: int) -> float:
            self.asked.append(i)
            return inner.value(i)

        return SparseScores(inner.default, inner.where, value)


def test_a_sampled_run_scores_only_the_hosts_of_its_sample() -> None:
    """Service spread differs on the hosts holding the service's replicas, here every host: a run sampling
    a tenth of them asks for a tenth (before part 28 it asked for all), and places as asking all does."""
    web = b.service("web", cpus=0.1)
    hosts = [b.host(f"h{i:03d}") for i in range(200)]
    existing = [b.replica(f"w{i}", web, f"h{i % 200:03d}") for i in range(400)]
    counting = Counting()
    profile = replace(PROFILE, sampling=Sampling(percentage=10, min_hosts=1, hosts_per_replica=0),
                      host_scorers=tuple((counting if isinstance(p, ServiceSpread) else p, w)
                                         for p, w in PROFILE.host_scorers))
    view = b.cluster(hosts, services=[web], replicas=existing)
    placed = batch.place(b.requests(web, 3), view, profile)
    assert placed.outcomes[0].sampled_from == 200
    assert 0 < len(counting.asked) == len(set(counting.asked)) <= 20  # its sample of 20 hosts, once each
    fresh = b.cluster(hosts, services=[web], replicas=existing)
    assert dict(placed.placed) == dict(batch.place(b.requests(web, 3), fresh, dense(profile)).placed)
