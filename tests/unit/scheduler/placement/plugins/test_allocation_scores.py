from __future__ import annotations

import pytest

from scheduler.placement.framework import PlacementError
from scheduler.placement.plugins import least_allocated, most_allocated
from scheduler.placement.plugins.allocation import ResourceWeights
from scheduler.placement.view import SCORING_DEFAULT_CPU_MILLIS
from tests.unit.scheduler.placement import builders as b

EVEN = ResourceWeights()


def _setup(**host_kwargs: object):  # type: ignore[no-untyped-def]
    view = b.cluster([b.host("h1", **host_kwargs)])  # type: ignore[arg-type]
    return view.host(b.HostId("h1"))


def test_least_and_most_allocated_are_kube_formulas() -> None:
    # 4 cpus, 1 committed, asks 1 -> cpu 50% used; 8 GiB, 2 committed, asks 2 -> memory 50% used.
    host = _setup(cpus=4, memory=8 * b.GiB, committed_cpus=1, committed_memory=2 * b.GiB)
    req = b.request(b.service(cpus=1, memory=2 * b.GiB), "r1")
    assert least_allocated.least_allocated(req, host, EVEN) == pytest.approx(50.0)
    assert most_allocated.most_allocated(req, host, EVEN) == pytest.approx(50.0)
    # cpu 3/4 after, memory 2/8 after: weighted 3:1 -> (3*75 + 25)/4 = 62.5 used.
    req = b.request(b.service(cpus=2, memory=0 + 1), "r2")
    host2 = _setup(cpus=4, memory=8 * b.GiB, committed_cpus=1, committed_memory=2 * b.GiB - 1)
    weights = ResourceWeights(cpu=3, memory=1)
    assert most_allocated.most_allocated(req, host2, weights) == pytest.approx(62.5)
    assert least_allocated.least_allocated(req, host2, weights) == pytest.approx(37.5)


def test_over_capacity_caps_at_the_ends() -> None:
    host = _setup(cpus=1, memory=1 * b.GiB)
    req = b.request(b.service(cpus=4, memory=4 * b.GiB), "r1")
    assert least_allocated.least_allocated(req, host, EVEN) == 0.0
    assert most_allocated.most_allocated(req, host, EVEN) == 100.0
    nothing = _setup(cpus=0, memory=0)  # a resource the host does not offer counts as full
    assert most_allocated.most_allocated(b.request(b.service(), "r2"), nothing, EVEN) == 100.0


def test_a_replica_without_requests_scores_as_the_defaults() -> None:
    host = _setup(cpus=1, memory=1 << 40)
    req = b.request(b.service(cpus=0, memory=0), "r1")
    cpu_fraction = SCORING_DEFAULT_CPU_MILLIS / 1000
    weights = ResourceWeights(cpu=1, memory=0)
    assert most_allocated.most_allocated(req, host, weights) == pytest.approx(100 * cpu_fraction)
    # ... and a placed one makes the host look fuller, so the next one goes elsewhere.
    svc = b.service(cpus=0, memory=0)
    view = b.cluster([b.host("h1", cpus=1)], services=[svc])
    before = least_allocated.least_allocated(req, view.host(b.HostId("h1")), weights)
    view.assume(b.HostId("h1"), replica=b.ReplicaId("r0"), service=svc.name, facts=svc.spec.facts)
    assert least_allocated.least_allocated(req, view.host(b.HostId("h1")), weights) < before


def test_strategies_are_tied_to_the_scorers() -> None:
    from scheduler.model import Strategy
    assert least_allocated.new({}).strategy is Strategy.SPREAD
    assert most_allocated.new({}).strategy is Strategy.BINPACK


@pytest.mark.parametrize("args", [
    {"cpu": -1}, {"cpu": 0, "memory": 0}, {"disk": 1}, {"cpu": "1"}, {"cpu": True}])
def test_bad_resource_weights_are_refused(args: dict[str, object]) -> None:
    with pytest.raises(PlacementError, match="least_allocated"):
        least_allocated.new(args)
