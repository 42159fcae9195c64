"""The view cache builds what ``build_view`` builds, through any sequence of changes, and never lets a batch
change what it keeps."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import model
from scheduler.model import HostId, ReplicaId, ReplicaPhase, ServiceName
from scheduler.placement import batch, registry
from scheduler.placement.sampling import Sampling
from scheduler.placement.view import ClusterView, HostView, build_view
from scheduler.placement.view_cache import UPDATE_SHARE, ViewCache, ViewInputs
from tests.unit.scheduler.placement import builders as b

FIGURES = [name for name in HostView.__slots__ if name not in ("record", "status", "labels", "replicas")]


def snapshot(view: ClusterView) -> dict[HostId, dict[str, object]]:
    """Everything a plugin reads of each host, comparable: with its place in the view's order, and the
    services whose replicas it holds as the view's per-service index finds them."""
    out: dict[HostId, dict[str, object]] = {}
    holding: dict[int, set[ServiceName]] = {}
    for service in view.services.keys() | {s for h in view.hosts for s in h.replicas}:
        for i in view.service_hosts(service):
            if view.hosts[i].replicas[service]:
                holding.setdefault(i, set()).add(service)
    for i, host in enumerate(view.hosts):
        row: dict[str, object] = {name: getattr(host, name) for name in FIGURES}
        row["record"], row["status"], row["labels"] = host.record, host.status, host.labels
        row["replicas"] = {s: n for s, n in host.replicas.items() if n}
        row["index"], row["by_id"] = view.index[host.id], view.by_id[host.id] is host
        row["indexed"] = holding.get(i, set())
        out[host.id] = row
    return out


def holders(cluster: Cluster) -> dict[ServiceName, set[HostId]]:
    """The hosts with replicas of each (current) service on them, in any phase."""
    out: dict[ServiceName, set[HostId]] = {}
    for r in cluster.replicas.values():
        if r.service in cluster.services and r.host in cluster.hosts:
            out.setdefault(r.service, set()).add(r.host)
    return out


def indexed(view: ClusterView) -> dict[ServiceName, set[HostId]]:
    """The view's per-service index, by host id (a superset of the hosts holding each service's replicas)."""
    found = {s: {view.hosts[i].id for i in view.service_hosts(s)} for s in view.services}
    return {s: hosts for s, hosts in found.items() if hosts}


class Cluster:
    """A small cluster whose records are replaced on every change, as the leader's mirror replaces them."""

    def __init__(self) -> None:
        self.hosts = {HostId(f"h{i}"): b.host(f"h{i}", zone="abc"[i % 3], cpus=8) for i in range(6)}
        self.statuses = {h: b.status(h) for h in self.hosts}
        self.services = {ServiceName(n): b.service(n, cpus=0.25, host_ports=(8080,) if n == "port" else ())
                         for n in ("web", "api", "port")}
        self.replicas: dict[ReplicaId, model.Replica] = {}
        self.counted: dict[HostId, frozenset[ReplicaId]] = {}
        self.serial = 0

    def inputs(self) -> ViewInputs:
        return ViewInputs(hosts=dict(self.hosts), statuses=dict(self.statuses), replicas=dict(self.replicas),
                          services=dict(self.services), counted_by_agent=dict(self.counted))

    def build(self, cache: ViewCache) -> ClusterView:
        return cache.build(self.inputs())

    def fresh(self) -> ClusterView:
        return build_view(hosts=self.hosts.values(), statuses=self.statuses, replicas=self.replicas.values(),
                          services=self.services.values(), counted_by_agent=self.counted)

    def change(self, kind: int, n: int) -> None:
        hosts, names = sorted(self.hosts), sorted(self.services)
        host = hosts[n % len(hosts)]
        rids = sorted(self.replicas)
        if kind == 0:  # a new replica, placed or pending
            self.serial += 1
            svc = self.services[names[n % len(names)]]
            phase = [ReplicaPhase.STARTING, ReplicaPhase.RUNNING, ReplicaPhase.PENDING][n % 3]
            rid = f"r{self.serial}"
            on = None if phase is ReplicaPhase.PENDING else host
            self.replicas[ReplicaId(rid)] = b.replica(rid, svc, on, phase=phase)
        elif kind == 1 and rids:  # a replica changes phase or host
            rid = rids[n % len(rids)]
            old = self.replicas[rid]
            phase = [ReplicaPhase.RUNNING, ReplicaPhase.STOPPING, ReplicaPhase.FAILED][n % 3]
            self.replicas[rid] = dataclasses.replace(old, phase=phase, host=old.host or host)
        elif kind == 2 and rids:  # a replica goes
            del self.replicas[rids[n % len(rids)]]
        elif kind == 3:  # the agent counts other replicas (its observation changed)
            on_host = sorted(rid for rid, r in self.replicas.items() if r.host == host)
            self.counted[host] = frozenset(on_host[n % 2::2])  # not what the phase rule would say
        elif kind == 4:  # the host's status or record changes
            if n % 4 == 1:
                self.statuses[host] = dataclasses.replace(self.statuses[host],
                                                          ready=not self.statuses[host].ready)
            elif n % 4 == 3:  # in what placement does not read, or in start_failing
                self.statuses[host] = relisted(self.statuses[host], failing=n % 8 == 7)
            elif n % 4 == 0:  # the agent commits more (or less) cpu than its counted replicas ask
                record = self.hosts[host]
                committed = (record.capacity.cpu_committed_millis + 100 * (n % 7)) % 900
                capacity = dataclasses.replace(record.capacity, cpu_committed_millis=committed)
                self.hosts[host] = dataclasses.replace(record, capacity=capacity)
            else:  # less memory allocatable, more committed
                record = self.hosts[host]
                memory = record.capacity.memory_allocatable_bytes - (1 << 30)
                committed = record.capacity.memory_committed_bytes + (64 << 20) * (n % 5)
                capacity = dataclasses.replace(record.capacity, memory_allocatable_bytes=memory,
                                               memory_committed_bytes=committed)
                self.hosts[host] = dataclasses.replace(record, capacity=capacity)
        elif kind == 5:  # a service's template changes (new facts), or only its replica count
            name = names[n % len(names)]
            svc = self.services[name]
            if n % 2:
                facts = dataclasses.replace(svc.spec.facts, cpu_millis=svc.spec.facts.cpu_millis + 50)
                spec = dataclasses.replace(svc.spec, facts=facts)
                self.services[name] = dataclasses.replace(svc, spec=spec)
            else:
                self.services[name] = svc.scaled(svc.spec.replicas + 1, now=0.0)
        elif kind == 6:  # "api" is deleted (its replicas stay until stopped), or comes back with new facts
            api = ServiceName("api")
            if api in self.services:
                del self.services[api]
            else:
                self.services[api] = b.service("api", cpus=0.5 + 0.25 * (n % 2))
        elif kind == 7:  # a host leaves, or joins
            if len(self.hosts) > 2 and n % 2:
                del self.hosts[host]
            else:
                new = HostId(f"n{n}")
                self.hosts[new] = b.host(new, zone="a")
                self.statuses[new] = b.status(new)
        elif kind == 8:  # the host registers again: with nothing new, or with a new label
            self.hosts[host] = reregistered(self.hosts[host], label=f"x{n}" if n % 2 else "")


def relisted(status: model.HostStatus, *, failing: bool = False) -> model.HostStatus:
    """``status`` judged again with a new time, reason and count of start failures: nothing placement
    reads; ``failing``: and start failing toggled (which it reads)."""
    return dataclasses.replace(status, since=status.since + 1.0,
                               reason=status.reason + ".", start_failures=status.start_failures + 1,
                               start_failing=status.start_failing != failing)


def reregistered(record: model.HostRecord, *, label: str = "") -> model.HostRecord:
    """``record`` as registering again writes it: a new revision, time and raw report; ``label``: and a
    label it did not have (a change placement reads)."""
    labels = (*record.labels, (label, "yes")) if label else record.labels
    return dataclasses.replace(record, revision=record.revision + 1, labels=labels,
                               last_registered_at=record.last_registered_at + 60.0,
                               info_json=f'{{"seq": {record.revision + 1}}}')


changes = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 1000)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(changes, st.integers(1, 5), st.sampled_from([UPDATE_SHARE, 1e9]))
def test_the_cache_builds_what_build_view_builds(steps: list[tuple[int, int]], every: int,
                                                 share: float) -> None:
    """(With a share of 1e9 every host whose replicas changed is updated where it can be, however many
    changed: the small hosts here would otherwise mostly be counted again.)"""
    cluster, cache = Cluster(), ViewCache(update_share=share)
    for i, (kind, n) in enumerate(steps):
        cluster.change(kind, n)
        if i % every == 0:
            view = cluster.build(cache)
            assert snapshot(view) == snapshot(cluster.fresh())
            # The kept index names exactly the hosts with replicas of each service on them, whatever
            # their phase (a superset of those holding some, which is all ``service_hosts`` promises).
            assert indexed(view) == holders(cluster)
        elif i % 2:
            cache.refresh(cluster.inputs())  # as the safety net keeps it warm
    assert snapshot(cluster.build(cache)) == snapshot(cluster.fresh())


def test_unchanged_hosts_are_copied_and_changed_ones_rebuilt() -> None:
    cluster, cache = Cluster(), ViewCache()
    for n in range(12):
        cluster.change(0, n)
    cluster.build(cache)
    assert cache.rebuilt == 6
    cluster.build(cache)
    assert cache.rebuilt == 0
    cluster.change(4, 1)  # one host's status
    cluster.build(cache)
    assert cache.rebuilt == 1
    cluster.change(5, 0)  # a service scaled: its facts did not change, nothing to rebuild
    cluster.build(cache)
    assert cache.rebuilt == 0
    cluster.change(5, 1)  # a new template for "api": every host holding an "api" replica
    holding = {r.host for r in cluster.replicas.values() if r.service == "api" and r.host}
    cluster.build(cache)
    assert cache.rebuilt == len(holding) > 0


def test_a_host_registered_again_with_nothing_new_is_kept_and_its_views_hold_the_new_record() -> None:
    """At 5,000 hosts every host's registration is rewritten once a minute (a new revision and time): a
    view built a minute after the last counted every host again."""
    cluster, cache = Cluster(), ViewCache()
    for n in range(12):
        cluster.change(0, n)
    earlier = cluster.build(cache)
    h0, h1 = HostId("h0"), HostId("h1")
    cluster.hosts[h0] = reregistered(cluster.hosts[h0])
    cluster.hosts[h1] = reregistered(cluster.hosts[h1], label="gpu")
    view = cluster.build(cache)
    assert cache.rebuilt == 1  # h1: a new label
    assert snapshot(view) == snapshot(cluster.fresh())
    # The kept h0 (shared with the earlier view) holds the new record: the old one is not kept alive.
    assert view.hosts[view.index[h0]].record is cluster.hosts[h0]
    assert earlier.hosts[earlier.index[h0]].record is cluster.hosts[h0]
    assert earlier.hosts[earlier.index[h1]].record is not cluster.hosts[h1]


def test_a_host_whose_status_changed_in_nothing_placement_reads_is_kept_and_holds_the_new_status() -> None:
    """A new term's sessions complete (their containers listed) over the term's first minute, which
    changes every host's status but in nothing placement reads: the next view counted all 5,000 hosts
    again (docs/scaling.md, part 38)."""
    cluster, cache = Cluster(), ViewCache()
    for n in range(12):
        cluster.change(0, n)
    earlier = cluster.build(cache)
    h0, h1, h2 = HostId("h0"), HostId("h1"), HostId("h2")
    cluster.statuses[h0] = relisted(cluster.statuses[h0])
    cluster.statuses[h1] = relisted(cluster.statuses[h1], failing=True)
    cluster.statuses[h2] = dataclasses.replace(cluster.statuses[h2], ready=False)
    view = cluster.build(cache)
    assert cache.rebuilt == 2  # h1 (start failing) and h2 (not ready)
    assert snapshot(view) == snapshot(cluster.fresh())
    assert view.hosts[view.index[h0]].status is cluster.statuses[h0]
    assert earlier.hosts[earlier.index[h0]].status is cluster.statuses[h0]  # shared: the old not kept alive
    # No status at all is not ready: a host whose status comes or goes is counted again.
    del cluster.statuses[h0]
    cluster.build(cache)
    assert cache.rebuilt == 1


def test_a_host_whose_agent_figures_changed_is_updated_and_earlier_views_keep_theirs() -> None:
    """As the replicas placed on a host start, its agent's committed figures change, and each such host
    was counted again: every host, when a mass failure came before the safety net had refreshed the
    cache after placing (docs/scaling.md, part 29)."""
    cluster, cache = Cluster(), ViewCache()
    for n in range(12):
        cluster.change(0, n)
    earlier = cluster.build(cache)
    h0 = HostId("h0")
    before = earlier.hosts[earlier.index[h0]].cpu_used
    record = cluster.hosts[h0]
    cluster.hosts[h0] = dataclasses.replace(record, capacity=dataclasses.replace(
        record.capacity, cpu_committed_millis=record.capacity.cpu_committed_millis + 3000))
    view = cluster.build(cache)
    assert (cache.rebuilt, cache.updated) == (0, 1)
    assert snapshot(view) == snapshot(cluster.fresh())
    assert view.hosts[view.index[h0]].cpu_used > before == earlier.hosts[earlier.index[h0]].cpu_used


def test_placing_on_a_view_leaves_the_kept_hosts_as_they_were() -> None:
    cluster, cache = Cluster(), ViewCache()
    first = cluster.build(cache)
    before = snapshot(first)
    web = cluster.services[ServiceName("web")]
    placed = batch.place(b.requests(web, 12), first, registry.default_profile()).placed
    assert len(placed) == 12
    assert snapshot(cluster.build(cache)) == before  # nothing changed in the cluster: the same view


def test_placing_on_a_view_leaves_the_kept_index_as_it_was() -> None:
    """Views share the cache's per-service index: a batch that places a service on hosts without it adds
    them to its own view's index only, and a refresh replaces the sets it changes, so a view built
    before (a placer kept for its explanations) keeps the index it was built with."""
    cluster, cache = Cluster(), ViewCache()
    many_on_h0(cluster)
    first = cluster.build(cache)
    before = indexed(first)
    web = cluster.services[ServiceName("web")]
    placed = batch.place(b.requests(web, 12), first, registry.default_profile()).placed
    assert set(placed.values()) - before[ServiceName("web")]  # placed where "web" was not
    assert indexed(first)[ServiceName("web")] == before[ServiceName("web")] | set(placed.values())
    second = cluster.build(cache)
    assert indexed(second) == before == holders(cluster)
    cluster.change(0, 4)  # a replica of "port" on h4, which had none
    cluster.change(2, 0)  # and one gone
    third = cluster.build(cache)
    assert indexed(third) == holders(cluster) != before
    assert indexed(second) == before


def many_on_h0(cluster: Cluster) -> None:
    """Twelve replicas on h0, of each service in each of four phases."""
    phases = (ReplicaPhase.STARTING, ReplicaPhase.RUNNING, ReplicaPhase.FAILED, ReplicaPhase.STOPPING)
    for i in range(12):
        svc = cluster.services[sorted(cluster.services)[i % 3]]
        rid = f"m{i}"
        cluster.replicas[ReplicaId(rid)] = b.replica(rid, svc, HostId("h0"), phase=phases[i // 3])


def test_a_host_that_got_a_replica_is_updated_not_counted_again() -> None:
    """A mass failure's replacement on a host of many: its kept view copied with that one replica added;
    the replacement then running in a new record, the agent counting it; then a replica stopping."""
    cluster, cache = Cluster(), ViewCache()
    many_on_h0(cluster)
    cluster.build(cache)
    h0 = HostId("h0")
    web = cluster.services[ServiceName("web")]
    cluster.replicas[ReplicaId("new")] = b.replica("new", web, h0, phase=ReplicaPhase.STARTING)
    assert snapshot(cluster.build(cache)) == snapshot(cluster.fresh())
    assert (cache.rebuilt, cache.updated) == (0, 1)
    cluster.replicas[ReplicaId("new")] = b.replica("new", web, h0, phase=ReplicaPhase.RUNNING)
    # The agent reports its live containers: those running and stopping, and the new one.
    live = (ReplicaPhase.RUNNING, ReplicaPhase.STOPPING)
    cluster.counted[h0] = frozenset(rid for rid, r in cluster.replicas.items()
                                    if r.host == h0 and r.phase in live)
    assert snapshot(cluster.build(cache)) == snapshot(cluster.fresh())
    assert (cache.rebuilt, cache.updated) == (0, 1)
    starting = next(rid for rid, r in sorted(cluster.replicas.items())
                    if r.host == h0 and r.phase is ReplicaPhase.STARTING and r.service != "port")
    cluster.replicas[starting] = dataclasses.replace(cluster.replicas[starting], phase=ReplicaPhase.STOPPING)
    assert snapshot(cluster.build(cache)) == snapshot(cluster.fresh())
    assert (cache.rebuilt, cache.updated) == (0, 1)


def test_a_service_gone_from_an_updated_host_leaves_the_index() -> None:
    """The host keeps other replicas and is brought up to date, not counted again: its kept services are
    those on it now, so the per-service index stops naming it for the service that left (a superset
    kept from before named it until the host was next counted again)."""
    cluster, cache = Cluster(), ViewCache(update_share=1e9)
    web, api = cluster.services[ServiceName("web")], cluster.services[ServiceName("api")]
    h0 = HostId("h0")
    cluster.replicas[ReplicaId("w")] = b.replica("w", web, h0, phase=ReplicaPhase.STARTING)
    for rid in ("a0", "a1"):
        cluster.replicas[ReplicaId(rid)] = b.replica(rid, api, h0, phase=ReplicaPhase.RUNNING)
    assert indexed(cluster.build(cache)) == {"web": {h0}, "api": {h0}}
    del cluster.replicas[ReplicaId("w")]
    view = cluster.build(cache)
    assert (cache.rebuilt, cache.updated) == (0, 1)
    assert indexed(view) == holders(cluster) == {"api": {h0}}


def test_a_host_that_lost_a_running_replica_is_counted_again() -> None:
    """Its image may have been the host's only one running that image: counted again, not updated."""
    cluster, cache = Cluster(), ViewCache()
    many_on_h0(cluster)
    cluster.build(cache)
    running = next(rid for rid, r in sorted(cluster.replicas.items())
                   if r.host == "h0" and r.phase is ReplicaPhase.RUNNING)
    del cluster.replicas[running]
    assert snapshot(cluster.build(cache)) == snapshot(cluster.fresh())
    assert (cache.rebuilt, cache.updated) == (1, 0)


def test_a_service_new_on_an_updated_host_has_it_counted_again_when_its_facts_change() -> None:
    cluster, cache = Cluster(), ViewCache()
    web = cluster.services[ServiceName("web")]
    for i in range(12):
        rid = f"w{i}"
        cluster.replicas[ReplicaId(rid)] = b.replica(rid, web, HostId("h0"), phase=ReplicaPhase.RUNNING)
    cluster.build(cache)
    api = cluster.services[ServiceName("api")]
    cluster.replicas[ReplicaId("a0")] = b.replica("a0", api, HostId("h0"), phase=ReplicaPhase.STARTING)
    cluster.build(cache)
    assert (cache.rebuilt, cache.updated) == (0, 1)
    cluster.change(5, 3)  # a new template for "api", with more cpu
    assert snapshot(cluster.build(cache)) == snapshot(cluster.fresh())
    assert cache.rebuilt == 1


def test_a_view_of_kept_hosts_places_as_a_view_built_afresh_and_copies_only_the_hosts_it_placed_on() -> None:
    """The cache's view shares the hosts it keeps and copies one the first time a batch places there. A
    sampled run placing again and again on the hosts it sampled must see its own placements on the
    copies (three fit on a host: a run reading the host it held before the copy would place a fourth),
    and its sample filling up sends the rest over every host."""
    hosts = {HostId(f"h{i:03d}"): b.host(f"h{i:03d}", zone="abc"[i % 3], cpus=1.5) for i in range(150)}
    statuses = {h: b.status(h) for h in hosts}
    svc = b.service("web", cpus=0.5, spread="zone")
    inputs = ViewInputs(hosts=hosts, statuses=statuses, replicas={}, services={svc.name: svc},
                        counted_by_agent={})
    profile = dataclasses.replace(registry.default_profile(),
                                  sampling=Sampling(percentage=10, min_hosts=5, hosts_per_replica=0))
    cache = ViewCache()
    kept = cache.build(inputs)
    before = snapshot(kept)
    shared = cache.build(inputs)
    fresh = build_view(hosts=hosts.values(), statuses=statuses, replicas=(), services=(svc,))
    requests = b.requests(svc, 60) + b.requests(svc, 400, prefix="more")
    on_shared, on_fresh = batch.place(requests, shared, profile), batch.place(requests, fresh, profile)
    assert [(o.host, o.why) for o in on_shared.outcomes] == [(o.host, o.why) for o in on_fresh.outcomes]
    assert snapshot(shared) == snapshot(fresh)
    counts = Counter(on_shared.placed.values())
    assert len(on_shared.placed) == 450 and set(counts.values()) == {3}  # every host full, none over
    assert len(on_shared.pending) == 10
    assert on_shared.outcomes[0].sampled_from == 150  # the first run was sampled
    # The kept hosts are as they were, and the next view still shares them.
    assert snapshot(kept) == before == snapshot(cache.build(inputs))
    assert all(shared.by_id[h] is not kept.by_id[h] for h in counts)
    few = cache.build(inputs)
    placed = batch.place(b.requests(svc, 5, prefix="few"), few, profile).placed
    assert sum(few.by_id[h] is not kept.by_id[h] for h in hosts) == len(set(placed.values())) == 5
