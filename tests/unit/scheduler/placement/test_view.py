from __future__ import annotations

import random
import zlib

from scheduler import model
from scheduler.model import ReplicaPhase
from scheduler.placement import view as view_module
from scheduler.placement.view import LABEL_HOST, SCORING_DEFAULT_CPU_MILLIS, SCORING_DEFAULT_MEMORY_BYTES
from tests.unit.scheduler.placement import builders as b


def test_room_is_allocatable_minus_committed_minus_placed_not_started() -> None:
    svc = b.service(cpus=1, memory=1 * b.GiB)
    view = b.cluster([b.host("h1", cpus=16, memory=64 * b.GiB, committed_cpus=3, committed_memory=3 * b.GiB)],
                     services=[svc], replicas=[
                         b.replica("pending", svc),                                   # no host: nothing
                         b.replica("starting", svc, "h1", phase=ReplicaPhase.STARTING),  # +1
                         b.replica("failed", svc, "h1", phase=ReplicaPhase.FAILED),      # +1, retried here
                         b.replica("running", svc, "h1", phase=ReplicaPhase.RUNNING),    # in committed
                         b.replica("stopping", svc, "h1", phase=ReplicaPhase.STOPPING),  # in committed
                     ])
    host = view.host(b.HostId("h1"))
    assert host.cpu_free == 16_000 - 3_000 - 2_000
    assert host.memory_free == 64 * b.GiB - 3 * b.GiB - 2 * b.GiB
    assert host.replicas[svc.name] == 3  # starting, failed, running; stopping ones are leaving


def test_an_agent_report_of_what_it_counts_overrides_the_phase_rule() -> None:
    svc = b.service(cpus=1)
    view = b.cluster([b.host("h1", cpus=16)], services=[svc], replicas=[
        b.replica("a", svc, "h1", phase=ReplicaPhase.STARTING),   # created already: the agent counts it
        b.replica("b", svc, "h1", phase=ReplicaPhase.RUNNING),    # the registration predates it
    ], counted_by_agent={b.HostId("h1"): {b.ReplicaId("a")}})
    assert view.host(b.HostId("h1")).cpu_placed == 1_000


def test_live_replicas_are_a_floor_for_a_committed_figure_that_lags() -> None:
    """The agent's committed figure comes with its registration, which lags the container list: a
    replica that just started must not leave its cpu free for the next one (found by the cluster tests:
    a 1-cpu replica placed beside a running 1.5-cpu one on a 2-cpu host)."""
    svc = b.service(cpus=1.5, memory=b.GiB)
    counted = {b.HostId("h1"): {b.ReplicaId("a")}}
    running = [b.replica("a", svc, "h1", phase=ReplicaPhase.RUNNING)]
    lagging = b.cluster([b.host("h1", cpus=2)], services=[svc], replicas=running, counted_by_agent=counted)
    host = lagging.host(b.HostId("h1"))
    assert (host.cpu_used, host.memory_used, host.cpu_placed) == (1_500, b.GiB, 0)
    assert host.cpu_scoring_used == 1_500
    # A current figure that also holds a container that is not a replica (0.25 cpu) is taken as it is.
    current = b.cluster([b.host("h1", cpus=2, committed_cpus=1.75, committed_memory=2 * b.GiB)],
                        services=[svc], replicas=running, counted_by_agent=counted)
    host = current.host(b.HostId("h1"))
    assert (host.cpu_used, host.memory_used) == (1_750, 2 * b.GiB)


def test_replicas_without_requests_count_scoring_defaults_only() -> None:
    svc = b.service(cpus=0, memory=0)
    view = b.cluster([b.host("h1")], services=[svc], replicas=[b.replica("a", svc, "h1")])
    host = view.host(b.HostId("h1"))
    assert (host.cpu_used, host.memory_used) == (0, 0)
    assert (host.cpu_scoring_used, host.memory_scoring_used) == (SCORING_DEFAULT_CPU_MILLIS,
                                                                 SCORING_DEFAULT_MEMORY_BYTES)


def test_a_replica_runs_its_own_generation() -> None:
    old_facts = b.facts(cpus=2, image="web:1")
    svc = b.service(cpus=1, image="web:2")
    svc = model.Service(spec=svc.spec, generation=3, template_generation=3,
                        history=(model.TemplateRevision(2, "{}", old_facts),))
    old = model.Replica(id=b.ReplicaId("old"), service=svc.name, generation=2, host=b.HostId("h1"),
                        phase=ReplicaPhase.STARTING)
    assert view_module.facts_of(old, svc) == old_facts
    unknown = model.Replica(id=b.ReplicaId("x"), service=svc.name, generation=1)
    assert view_module.facts_of(unknown, svc) == svc.spec.facts
    view = b.cluster([b.host("h1", cpus=16)], services=[svc], replicas=[old])
    assert view.host(b.HostId("h1")).cpu_placed == 2_000


def test_hosts_are_in_the_order_of_their_ids_hashes_and_labelled_with_their_id() -> None:
    """The order a sample takes them in (``placement.sampling``): whatever order they came in."""
    hosts = [b.host(f"h{i}") for i in range(10)]
    random.Random(7).shuffle(hosts)
    view = b.cluster(hosts)
    assert [h.id for h in view.hosts] == sorted((f"h{i}" for i in range(10)),
                                                key=lambda h: zlib.crc32(h.encode()))
    assert [h.id for h in view.hosts] != sorted(f"h{i}" for i in range(10))  # not by name
    assert view.host(b.HostId("h3")).labels[LABEL_HOST] == "h3"
    own = b.cluster([b.host("h1", labels={LABEL_HOST: "custom"})])
    assert own.host(b.HostId("h1")).labels[LABEL_HOST] == "custom"


def test_replicas_on_unknown_hosts_or_of_unknown_services_are_ignored() -> None:
    svc = b.service(cpus=1)
    gone = b.service("gone", cpus=1)
    view = b.cluster([b.host("h1")], services=[svc], replicas=[
        b.replica("a", svc, "nowhere", phase=ReplicaPhase.STARTING),
        b.replica("b", gone, "h1", phase=ReplicaPhase.STARTING,
                  ports=[model.HostPort(container_port=80, host_port=31000)])])
    host = view.host(b.HostId("h1"))
    assert host.cpu_placed == 0
    assert host.ports == {(31000, "tcp")}  # its port is still taken


def test_assume_counts_a_placed_replica() -> None:
    svc = b.service(cpus=1, memory=b.GiB, host_ports=[8080])
    view = b.cluster([b.host("h1", zone="a")], services=[svc])
    view.assume(b.HostId("h1"), replica=b.ReplicaId("r1"), service=svc.name, facts=svc.spec.facts)
    host = view.host(b.HostId("h1"))
    assert (host.cpu_placed, host.memory_placed) == (1000, b.GiB)
    assert (8080, "tcp") in host.ports
    assert host.replicas[svc.name] == 1
    assert view.host_of(b.ReplicaId("r1")) == "h1"
    counts = view.domain_counts(svc.name, "zone", lambda h: True)
    assert counts.counts == {"a": 1}
