"""How many hosts a run looks at (kube-scheduler's percentageOfNodesToScore), and that a sampled run
still places what the cluster has room for: pending means that no host in the cluster fits."""

from __future__ import annotations

import gc
from collections import Counter
from dataclasses import replace

import pytest

from scheduler.placement import batch, registry
from scheduler.placement.sampling import EVERY_HOST, Sampling
from tests.unit.scheduler.placement import builders as b

PROFILE = registry.default_profile()


@pytest.mark.parametrize(("hosts", "replicas", "wanted"), [
    (100, 1, None),      # up to 100 hosts, every host
    (101, 1, 100),       # 49 %, but at least 100
    (1000, 1, 420),      # 50 % less 1 % per 125 hosts
    (2000, 5, 680),
    (5000, 100, 500),    # 10 %
    (20000, 1, 1000),    # never under 5 %
    (5000, 1000, 2000),  # two hosts per replica, so a batch can spread
    (5000, 2500, None),  # ... which is every host here
])
def test_the_adaptive_share_is_kube_schedulers(hosts: int, replicas: int, wanted: int | None) -> None:
    assert Sampling().wanted(hosts, replicas) == wanted


def test_a_fixed_percentage_and_sampling_off() -> None:
    assert Sampling(percentage=20).wanted(1000, 1) == 200
    assert Sampling(percentage=5).wanted(1000, 1) == 100  # the minimum still holds
    assert EVERY_HOST.wanted(100_000, 1) is None


@pytest.mark.parametrize("bad", [{"percentage": -1}, {"percentage": 101}, {"min_hosts": 0},
                                 {"hosts_per_replica": -1}])
def test_bad_settings_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Sampling(**bad)


def test_a_sample_is_a_window_of_the_view_wrapping_around() -> None:
    """The view keeps its hosts in the order samples take them, so a sample's values are slices."""
    window = batch._Window(8, 4, 10)
    assert window.take(list(range(100, 110))) == [108, 109, 100, 101]
    assert window.take(tuple("abcdefghij")) == ["i", "j", "a", "b"]
    assert window.indices() == [8, 9, 0, 1]
    assert [window.position(i) for i in (8, 9, 0, 1)] == [0, 1, 2, 3]
    assert all(window.position(i) >= 4 for i in range(2, 8))
    assert batch._Window(2, 3, 10).take(list(range(10))) == [2, 3, 4]


def test_sampled_runs_keep_a_static_column_once_two_ask_for_it_and_only_so_many() -> None:
    """Image locality's column (static: the same for every service of one image) is kept for every host
    once a second sampled run asks for it, and picked from then on; at most ``STATIC_COLUMNS`` of them
    per view, so services of many images do not hold a column each."""
    hosts = [b.host(f"h{i:04d}") for i in range(1000)]
    services = [b.service(f"svc{n}", image=f"registry.test/img{n % 3}:1") for n in range(6)]
    running = [b.replica(f"old{i}", services[i % 3], hosts[i * 7].id, phase=b.ReplicaPhase.RUNNING)
               for i in range(30)]  # so some hosts have each image
    view = b.cluster(hosts, services=services, replicas=running)
    fresh = b.cluster(hosts, services=services, replicas=running)
    kept = view.memo("placement.static_columns", dict)
    for svc in services[:3]:  # img0, img1, img2: asked once each
        batch.place(b.requests(svc, 1), view, PROFILE)
    assert kept == {}
    result = batch.place(b.requests(services[3], 1), view, PROFILE)  # img0 again: kept from now on
    assert [key[2] for key in kept] == ["registry.test/img0:1"]
    replica = result.outcomes[0].replica
    # What the run saw of each host's image is what a look at that host alone says.
    expected = batch.explain(b.request(services[3], replica), fresh, PROFILE)
    assert {v.host: v.scores.get("image_locality") for v in result.verdicts(replica)} == \
        {v.host: v.scores.get("image_locality") for v in expected.verdicts if v.host in
         {w.host for w in result.verdicts(replica)}}
    assert any(v.scores.get("image_locality") for v in result.verdicts(replica))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch, "STATIC_COLUMNS", 1)
        batch.place(b.requests(services[4], 1), view, PROFILE)  # img1 again, but one column is the bound
    assert len(kept) == 1


def test_a_run_in_a_large_cluster_looks_at_a_sample_and_says_so() -> None:
    profile = b.counting_profile()
    svc = b.service(spread="zone")
    view = b.cluster([b.host(f"h{i:04d}", zone="abc"[i % 3]) for i in range(1000)], services=[svc])
    result = batch.place(b.requests(svc, 6), view, profile)
    assert len(result.placed) == 6
    # 420 hosts looked at once, then the chosen host again after each placement.
    assert b.CountingFilter.calls == 420 + 6
    first = result.outcomes[0]
    assert (first.hosts, first.feasible, first.sampled_from) == (420, 420, 1000)
    assert first.why.startswith("420/420 hosts fit (sampled from 1000), score ")
    assert len(result.verdicts(first.replica)) == 420
    # The sample is spread over the cluster whatever the hosts are named: every zone is in it.
    assert b.zones_of(view, result.placed) == {"a": 2, "b": 2, "c": 2}


def test_the_sample_holds_enough_hosts_that_fit_when_filters_refuse_most() -> None:
    svc = b.service(constraints=[b.constraint("zone", "=", "a")])
    view = b.cluster([b.host(f"h{i:04d}", zone="abc"[i % 3]) for i in range(1000)], services=[svc])
    profile = replace(PROFILE, sampling=Sampling(percentage=20))  # 200 hosts that fit; 334 are in zone a
    outcome = batch.place(b.requests(svc, 1), view, profile).outcomes[0]
    assert outcome.feasible >= 200
    # Hosts of other zones were looked at and refused on the way, and the sample stopped short of all.
    assert outcome.feasible < outcome.hosts < outcome.sampled_from == 1000
    assert dict(outcome.reasons) == {"constraint zone=a": outcome.hosts - outcome.feasible}
    assert view.host(outcome.host).labels["zone"] == "a"  # type: ignore[arg-type]


def test_a_few_refused_hosts_grow_the_sample_by_about_as_many_not_double_it() -> None:
    """One host in 25 is full: the first 420 looked at hold about 17 that do not fit, and the sample grows
    by about that many more (a quarter over the rate seen), not by another 420. At 5,000 hosts, a mass
    failure's lost hosts in every sample doubled each replacement run's cost."""
    svc = b.service()
    view = b.cluster([b.host(f"h{i:04d}", cpus=0.001 if i % 25 == 0 else 4) for i in range(1000)],
                     services=[svc])
    outcome = batch.place(b.requests(svc, 1), view, PROFILE).outcomes[0]
    assert outcome.feasible >= 420 and outcome.sampled_from == 1000
    assert outcome.hosts - outcome.feasible > 0  # full hosts were in the sample, and refused
    assert outcome.hosts <= 420 * 1.1


def test_services_sample_different_hosts() -> None:
    hosts = [b.host(f"h{i:04d}") for i in range(1000)]
    services = [b.service(f"svc{n}") for n in range(5)]
    view = b.cluster(hosts, services=services)
    samples = [frozenset(v.host for v in batch.place(b.requests(svc, 1), view, PROFILE).explain(
        b.ReplicaId(f"svc{n}-00000")).verdicts) for n, svc in enumerate(services)]
    assert all(len(sample) == 420 for sample in samples)
    assert len(set(samples)) == 5


def test_a_sample_out_of_room_goes_on_over_every_host() -> None:
    svc = b.service(cpus=1)
    profile = replace(PROFILE, sampling=Sampling(percentage=10, min_hosts=5, hosts_per_replica=0))
    view = b.cluster([b.host(f"h{i:02d}", cpus=1) for i in range(50)], services=[svc])
    result = batch.place(b.requests(svc, 51), view, profile)
    # Five sampled hosts held one replica each; the run then looked at all 50 and filled them.
    assert [o.sampled_from for o in result.outcomes[:5]] == [50] * 5
    assert {o.sampled_from for o in result.outcomes[5:]} == {0}
    assert len(result.placed) == 50 and set(Counter(result.placed.values()).values()) == {1}
    (pending,) = result.pending
    assert pending.summary == "0/50 hosts: 50 insufficient cpu"


def test_a_sampled_run_sees_what_earlier_runs_on_the_view_placed() -> None:
    """Values kept for every host once two runs asked for them (resources fit, shared by services with
    the same requests) stay current for the samples that pick from them."""
    services = [b.service(f"svc{n}", cpus=1) for n in range(4)]
    view = b.cluster([b.host(f"h{i:03d}", cpus=1) for i in range(200)], services=services)
    placed: Counter[str] = Counter()
    for svc in services:
        placed.update(batch.place(b.requests(svc, 40), view, PROFILE).placed.values())
    assert len(placed) == 160 and set(placed.values()) == {1}  # never two on a host with room for one


def test_what_a_placed_batch_keeps_does_not_grow_with_the_hosts_its_runs_looked_at() -> None:
    """A step keeps every run for its explanations. A run's heaps, a tuple per host it looked at, go when
    the run is done: kept through a pass, the cyclic collector walked them again each time it ran (a
    fifth of the cpu of the pass that marks a mass failure at 5,000 hosts, docs/scaling.md part 27)."""
    services = [b.service(f"svc{n}", spread="zone") for n in range(20)]
    view = b.cluster([b.host(f"h{i:04d}", zone="abc"[i % 3]) for i in range(2000)], services=services)
    kept = []
    gc.collect()
    gc.disable()
    try:
        before = {id(o) for o in gc.get_objects()}
        for svc in services:
            kept.append(batch.place(b.requests(svc, 2), view, PROFILE))
        alive = sum(id(o) not in before for o in gc.get_objects())  # made since, tracked by the collector
    finally:
        gc.enable()
    looked_at = sum(result.outcomes[0].hosts for result in kept)
    assert looked_at == 20 * 680  # sampled runs
    assert alive < looked_at // 5  # about 84 a run, whatever its sample (one a host more before)
    for result in kept:  # and each still explains every host it looked at, the best first
        first = result.outcomes[0]
        verdicts = result.verdicts(first.replica)
        assert len(verdicts) == first.hosts and verdicts[0].host == first.host
    with pytest.raises(batch.PlacementError, match="finished run"):
        kept[0]._steps[kept[0].outcomes[0].replica][0].decide(b.requests(services[0], 3)[2])
