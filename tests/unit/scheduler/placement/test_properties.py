"""Property tests: whatever the cluster and the batch, placement never overcommits a host, never breaks
max skew, never uses a host a filter refuses, and every decision equals a fresh look at the cluster as
it was at that step (so the incremental bookkeeping is the same as recomputing from scratch)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import model
from scheduler.model import HostAdmin, ReplicaPhase, Strategy
from scheduler.placement import batch, registry
from scheduler.placement.framework import PlacementRequest, Profile
from scheduler.placement.plugins import constraints as constraints_plugin
from scheduler.placement.plugins import host_state
from scheduler.placement.sampling import Sampling
from tests.unit.scheduler.placement import builders as b

PROFILE = registry.default_profile()
# Samples even of these small clusters (a third of the hosts that fit, none per replica), so runs often
# run out of sampled room and go on over every host.
SAMPLED = replace(PROFILE, sampling=Sampling(percentage=30, min_hosts=1, hosts_per_replica=0))
ZONES = ["a", "b", "c", "d"]


@dataclass
class Case:
    hosts: list[model.HostRecord]
    not_ready: set[str]
    services: list[model.Service]
    existing: list[model.Replica]
    batch: list[PlacementRequest]
    batches: list[list[PlacementRequest]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n_hosts = draw(st.integers(0, 9))
    hosts = []
    not_ready = set()
    for i in range(n_hosts):
        cpus = draw(st.sampled_from([0, 1, 2, 4]))
        hosts.append(b.host(
            f"h{i}", cpus=cpus, memory=draw(st.sampled_from([0, 1, 2, 4])) * b.GiB,
            committed_cpus=draw(st.sampled_from([0, 0.5, 1, 5])),
            committed_memory=draw(st.sampled_from([0, 512 * b.MiB, 3 * b.GiB])),
            zone=draw(st.sampled_from([*ZONES, None])),
            admin=draw(st.sampled_from([HostAdmin.ACTIVE] * 4 + [HostAdmin.CORDONED, HostAdmin.DRAINING])),
            conditions=draw(st.sampled_from([(), (), (), ("MemoryPressure",)]))))
        if draw(st.integers(0, 5)) == 0:
            not_ready.add(f"h{i}")
    services = []
    for s in range(draw(st.integers(1, 3))):
        spread = draw(st.sampled_from([None, "zone"]))
        services.append(b.service(
            f"s{s}", cpus=draw(st.sampled_from([0, 0.25, 0.5, 1])),
            memory=draw(st.sampled_from([0, 256 * b.MiB, 1 * b.GiB])),
            strategy=draw(st.sampled_from([Strategy.SPREAD, Strategy.BINPACK])),
            host_ports=draw(st.sampled_from([(), (), (8080,)])),
            constraints=draw(st.sampled_from([(), (), (b.constraint("zone", "!=", "c"),),
                                              (b.constraint("zone", "in", "a", "b"),)])),
            spread=spread, max_skew=draw(st.integers(1, 3))))
    existing = []
    for r in range(draw(st.integers(0, 6)) if hosts else 0):
        svc = draw(st.sampled_from(services))
        existing.append(b.replica(f"old{r}", svc, draw(st.sampled_from(hosts)).id,
                                  phase=draw(st.sampled_from([ReplicaPhase.RUNNING, ReplicaPhase.STARTING]))))
    reqs = []
    for r in range(draw(st.integers(1, 30))):
        reqs.append(b.request(draw(st.sampled_from(services)), f"new{r:03d}"))
    # The batch is placed in one to three calls on the same view (what the view keeps between them
    # must be as good as recomputing).
    cuts = sorted(draw(st.lists(st.integers(0, len(reqs)), max_size=2)))
    batches = [reqs[a:b_] for a, b_ in zip([0, *cuts], [*cuts, len(reqs)], strict=True)]
    return Case(hosts, not_ready, services, existing, reqs, [part for part in batches if part])


def view_of(case: Case, placed: list[model.Replica]) -> object:
    return b.cluster(case.hosts, services=case.services, replicas=case.existing + placed,
                     not_ready=case.not_ready)


def decision_order(requests: list[PlacementRequest]) -> list[PlacementRequest]:
    """The order ``place`` decides in: runs of one service in first-appearance order."""
    order: dict[str, list[PlacementRequest]] = {}
    for r in requests:
        order.setdefault(r.service, []).append(r)
    return [r for run in order.values() for r in run]


@pytest.mark.parametrize("profile", [PROFILE, SAMPLED], ids=["every-host", "sampled"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_placements_hold_every_rule_and_equal_a_fresh_look(profile: Profile, case: Case) -> None:
    """Sampled, a decision's verdicts are a fresh look's for the hosts it sampled, and a replica is
    pending only when a fresh look at every host finds none that fits."""
    view = view_of(case, [])
    results = {}
    order = []
    for part in case.batches:
        result = batch.place(part, view, profile)  # type: ignore[arg-type]
        results.update({r.replica: result for r in part})
        order += decision_order(part)
    service_of = {s.name: s for s in case.services}
    placed: list[model.Replica] = []
    for request in order:
        svc = service_of[request.service]
        result = results[request.replica]
        outcome = result[request.replica]
        before = view_of(case, placed)
        # 1. The decision equals a fresh evaluation of the cluster as it was then.
        fresh = batch.explain(request, before, profile)  # type: ignore[arg-type]
        seen = {v.host: v for v in result.verdicts(request.replica)}
        if outcome.sampled_from:
            assert outcome.host is not None and outcome.hosts == len(seen) < outcome.sampled_from
            assert seen == {v.host: v for v in fresh.verdicts if v.host in seen}
            assert outcome.feasible == sum(v.feasible for v in seen.values())
        else:
            assert seen == {v.host: v for v in fresh.verdicts}
            assert (outcome.feasible, outcome.reasons) == (fresh.outcome.feasible, fresh.outcome.reasons)
        feasible = [v for v in seen.values() if v.feasible]
        if outcome.host is None:
            assert not feasible
            continue
        # 2. The best host was chosen.
        assert outcome.score == max(v.score for v in feasible)
        host = before.host(outcome.host)  # type: ignore[attr-defined]
        # 3. Independently of the plugins: room, ports, state, constraints.
        assert request.facts.cpu_millis <= host.cpu_free
        assert request.facts.memory_bytes <= host.memory_free
        assert not any(p.host_port and (p.host_port, p.protocol) in host.ports for p in request.facts.ports)
        assert host_state.host_problem(host.record, host.status) is None
        assert all(c.matches(host.labels) for c in request.placement.constraints)
        # 4. Max skew over eligible domains, counted from scratch.
        spread = request.placement.topology_spread
        if spread is not None:
            counts: dict[str, int] = {}
            for h in before.hosts:  # type: ignore[attr-defined]
                zone = h.labels.get(spread.label)
                if zone is None or host_state.host_problem(h.record, h.status) or constraints_plugin.unmet(
                        request.placement.constraints, h.labels):
                    continue
                counts[zone] = counts.get(zone, 0) + h.replicas[request.service]
            zone = host.labels[spread.label]
            assert counts[zone] + 1 - min(counts.values()) <= spread.max_skew
        placed.append(b.replica(request.replica, svc, outcome.host, phase=ReplicaPhase.STARTING))


@settings(max_examples=100, deadline=None)
@given(cases())
def test_the_view_after_a_batch_equals_one_built_with_its_placements(case: Case) -> None:
    view = view_of(case, [])
    room_before = {h.id: (h.cpu_free, h.memory_free) for h in view.hosts}  # type: ignore[attr-defined]
    placed = {}
    for part in case.batches:
        placed.update(batch.place(part, view, PROFILE).placed)  # type: ignore[arg-type]
    service_of = {s.name: s for s in case.services}
    rebuilt = view_of(case, [b.replica(r.replica, service_of[r.service], placed[r.replica],
                                       phase=ReplicaPhase.STARTING)
                             for r in case.batch if r.replica in placed])
    for mine, theirs in zip(view.hosts, rebuilt.hosts, strict=True):  # type: ignore[attr-defined]
        assert (mine.cpu_free, mine.memory_free, mine.ports, mine.replicas) == (
            theirs.cpu_free, theirs.memory_free, theirs.ports, +theirs.replicas)
        # No overcommit: a host ends with room left, or as overcommitted as it was before the batch.
        cpu_before, memory_before = room_before[mine.id]
        assert mine.cpu_free >= min(0, cpu_before)
        assert mine.memory_free >= min(0, memory_before)
        assert mine.cpu_free == cpu_before or mine.cpu_free >= 0
