"""scheduler/metrics.py on a MemoryStore: the exposition a scrape gets (series, labels, values) for a
cluster with every host state and replica phase, the http_sd target groups, following changes through
the watch (and a compaction, an unreachable store, undecodable records), the leader gauge, placement
latency from reconcile passes, etcd request timing, and scrapes from other threads while the loop writes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import gc_pauses, reconcile
from scheduler.elastic.loop import AttemptRecord
from scheduler.metrics import CLUSTER_FAMILIES, SchedulerMetrics, agent_target
from scheduler.model import (
    AutoscaleDecision,
    GroupName,
    HostAdmin,
    HostGroup,
    HostGroupSpec,
    HostGroupStatus,
    HostId,
    HostPort,
    HostRecord,
    PortRequest,
    Replica,
    ReplicaPhase,
    Service,
)
from scheduler.store import base
from scheduler.store.base import Delete, Put
from scheduler.store.errors import Compacted, Conflict
from scheduler.store.keys import KeyRange
from scheduler.store.memory import MemoryStore
from scheduler.store.records import Record
from tests.fixtures import scheduler_records as build

HANG_GUARD_S = 20.0
FAST = 0.01  # publish interval for tests: figures follow the store within a few loop turns


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: SchedulerMetrics) -> Samples:
    """What Prometheus would read from /metrics, as {(sample name, sorted labels): value}."""
    text = generate_latest(metrics.registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll (bounded) until ``check()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


async def caught_up(metrics: SchedulerMetrics, store: MemoryStore) -> None:
    def done() -> bool:
        snap = metrics.snapshot()
        return snap is not None and snap.revision >= store.revision
    await until(done, f"metrics at the store's revision {store.revision}")


# -- a cluster with every host state and replica phase ------------------------------------------------

def host(host_id: str, address: str, *, metrics: str = "", zone: str = "a",
         admin: HostAdmin = HostAdmin.ACTIVE, labels: tuple[tuple[str, str], ...] = ()) -> HostRecord:
    return replace(build.host(host_id, zone=zone), address=address, metrics_address=metrics, admin=admin,
                   labels=tuple(sorted((("zone", zone), *labels))))


def service(name: str, replicas: int, *, metrics_port: int = 0, deleting: bool = False,
            labels: tuple[tuple[str, str], ...] = ()) -> Service:
    base_service = build.service(name, replicas=replicas)
    facts = replace(base_service.spec.facts, ports=(PortRequest(8080), PortRequest(9100)))
    spec = replace(base_service.spec, metrics_port=metrics_port, labels=labels, facts=facts)
    return replace(base_service, spec=spec, deleting=deleting)


def replica(service_name: str, index: int, phase: ReplicaPhase, *, on: str | None = None,
            ready: bool = False, created_at: float = 0.0, ports: tuple[HostPort, ...] = ()) -> Replica:
    return replace(build.replica(service_name, index, host=on, phase=phase), ready=ready,
                   created_at=created_at, ports=ports)


HOSTS = [
    host("h1", "10.0.0.1:7070", metrics="0.0.0.0:9101"),                  # ready; wildcard metrics address
    host("h2", "10.0.0.2:7070", metrics="10.0.0.2:9101", zone="b", admin=HostAdmin.CORDONED,
         labels=(("topology.shoal.io/rack", "r2"), ("région", "nord"))),
    host("h3", "10.0.0.3:7070", zone="c"),                               # its agent unreachable
    host("h4", "[fd00::4]:7070", metrics="[::]:9101", admin=HostAdmin.DRAINING),  # draining, empty: drained
    host("h5", "10.0.0.5:7070", admin=HostAdmin.DRAINING),               # draining, a replica left
]
STATUSES = [replace(build.host_status(h, ready=h != "h3"), start_failures=4 if h == "h5" else 0)
            for h in ("h1", "h2", "h3", "h4", "h5")]
SERVICES = [service("web", 3, metrics_port=9100, labels=(("team", "web"),)), service("api", 2),
            service("old", 4, deleting=True)]
REPLICAS = [
    replica("web", 0, ReplicaPhase.RUNNING, on="h1", ready=True,
            ports=(HostPort(8080, 31000), HostPort(9100, 31001))),
    replica("web", 1, ReplicaPhase.RUNNING, on="h5", ports=(HostPort(9100, 31002),)),  # running, not ready
    replica("web", 2, ReplicaPhase.PENDING, created_at=1000.5),
    replica("web", 3, ReplicaPhase.STARTING, on="h1", ports=(HostPort(9100, 31003),)),  # not a target yet
    replica("api", 0, ReplicaPhase.FAILED, on="h2"),
    replica("api", 1, ReplicaPhase.PENDING, created_at=2000.0),
    replica("api", 2, ReplicaPhase.PENDING, created_at=1500.0),
    replica("old", 0, ReplicaPhase.STOPPING, on="h1", ports=(HostPort(9100, 31009),)),
]


CLUSTER: list[Record] = [*HOSTS, *STATUSES, *SERVICES, *REPLICAS]


async def filled_store() -> MemoryStore:
    store = MemoryStore()
    await store.commit([Put(r) for r in CLUSTER])
    return store


async def following(store: MemoryStore, leader: Callable[[], object | None] = lambda: None,
                    ) -> SchedulerMetrics:
    metrics = SchedulerMetrics(publish_interval=FAST)
    metrics.watch(store=store, election=None, leader=leader)
    await caught_up(metrics, store)
    return metrics


# -- the exposition -----------------------------------------------------------------------------------

def test_the_exposition_counts_replicas_per_service_and_hosts_per_state() -> None:
    async def scenario() -> None:
        store = await filled_store()
        metrics = await following(store)
        try:
            s = scrape(metrics)
        finally:
            await metrics.close()
        per_service = {name: {svc: value(s, f"shoal_service_replicas_{name}", service=svc)
                              for svc in ("web", "api", "old")}
                       for name in ("desired", "ready", "pending", "failed")}
        assert per_service == {
            "desired": {"web": 3, "api": 2, "old": 0},   # a service being deleted wants none
            "ready": {"web": 1, "api": 0, "old": 0},
            "pending": {"web": 1, "api": 2, "old": 0},
            "failed": {"web": 0, "api": 1, "old": 0},
        }
        # The longest-waiting pending replica's creation time; no series for a service with none pending.
        assert value(s, "shoal_service_pending_since_timestamp_seconds", service="web") == 1000.5
        assert value(s, "shoal_service_pending_since_timestamp_seconds", service="api") == 1500.0
        assert value(s, "shoal_service_pending_since_timestamp_seconds", service="old") is None
        assert {state: value(s, "shoal_hosts", state=state)
                for state in ("ready", "not_ready", "cordoned", "draining", "drained")} == {
            "ready": 1, "not_ready": 1, "cordoned": 1, "draining": 1, "drained": 1}
        assert {h: value(s, "shoal_host_ready", host_id=h, host=h) for h in ("h1", "h2", "h3", "h4", "h5")} \
            == {"h1": 1, "h2": 1, "h3": 0, "h4": 1, "h5": 1}
        assert {h: value(s, "shoal_host_start_failures", host_id=h, host=h)
                for h in ("h1", "h2", "h3", "h4", "h5")} == {"h1": 0, "h2": 0, "h3": 0, "h4": 0, "h5": 4}
        assert value(s, "shoal_scheduler_leader") == 0
        assert value(s, "shoal_scheduler_state_synced") == 1
        assert value(s, "shoal_scheduler_corrupt_records") == 0
        assert value(s, "shoal_scheduler_state_resyncs_total") == 0
        # The follower's own snapshot went through the timed store.
        snapshots = value(s, "shoal_scheduler_etcd_request_duration_seconds_count", operation="snapshot")
        assert snapshots is not None and snapshots >= 1
        # Nothing was decided yet, but the action kinds exist (so rate() works from the first pass).
        assert value(s, "shoal_scheduler_planned_actions_total", action="launch") == 0
        assert value(s, "shoal_scheduler_reconcile_duration_seconds_count") == 0

    run(scenario)


def test_help_texts_and_types_follow_prometheus_conventions() -> None:
    async def scenario() -> None:
        metrics = await following(await filled_store())
        await metrics.close()
        families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
        assert families
        for family in families:
            prefixes = ("shoal_scheduler_", "shoal_service_", "shoal_host", "shoal_autoscale_")
            assert family.name.startswith(prefixes), family.name
            assert family.documentation, f"{family.name} has no help text"
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name
            if family.type == "counter":
                assert not family.name.endswith("_total"), family.name  # the client adds _total

    run(scenario)


def test_before_the_first_read_only_the_instance_gauges_are_exported() -> None:
    metrics = SchedulerMetrics()
    s = scrape(metrics)
    assert value(s, "shoal_scheduler_leader") == 0
    assert value(s, "shoal_scheduler_state_synced") == 0
    assert not [k for k in s if k[0].startswith(("shoal_service_", "shoal_hosts"))]
    assert not metrics.loaded and metrics.http_sd() == [] and metrics.snapshot() is None


def test_the_collectors_pauses_are_counted_by_generation_once_installed() -> None:
    metrics = SchedulerMetrics()
    before = scrape(metrics)
    assert {labels for name, labels in before if name == "shoal_scheduler_gc_pause_seconds_total"} == {
        (("generation", "0"),), (("generation", "1"),), (("generation", "2"),)}
    installed = gc_pauses._hook in gc.callbacks
    gc_pauses.install()
    try:
        gc.collect(1)
    finally:
        if not installed:
            gc.callbacks.remove(gc_pauses._hook)
    after = scrape(metrics)
    key = ("shoal_scheduler_gc_pause_seconds_total", (("generation", "1"),))
    assert after[key] > before[key]
    full = ("shoal_scheduler_gc_pause_seconds_total", (("generation", "2"),))
    assert after[full] == before[full]


def test_the_session_workers_pauses_are_exported_as_they_report_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_pauses, "workers", gc_pauses.Pauses())
    metrics = SchedulerMetrics()
    name = "shoal_scheduler_session_workers_gc_pause_seconds_total"
    before = scrape(metrics)
    assert {labels: v for (n, labels), v in before.items() if n == name} == {
        (("generation", "0"),): 0.0, (("generation", "1"),): 0.0, (("generation", "2"),): 0.0}
    gc_pauses.add_reported(gc_pauses.Pauses(3, 1.5, 1.2, {0: 0.1, 2: 1.4}), None)
    after = scrape(metrics)
    assert after[(name, (("generation", "2"),))] == 1.4
    assert after[(name, (("generation", "0"),))] == 0.1
    assert after[(name, (("generation", "1"),))] == 0.0
    # the instance's own collections are counted apart
    own = ("shoal_scheduler_gc_pause_seconds_total", (("generation", "2"),))
    assert after[own] == before[own]


# -- http_sd --------------------------------------------------------------------------------------------

def agent_group(target: str, host_id: str, address: str, **labels: str) -> dict[str, Any]:
    return {"targets": [target], "labels": {
        "__meta_shoal_kind": "agent", "__meta_shoal_host_id": host_id, "__meta_shoal_host_name": host_id,
        "__meta_shoal_host_address": address, **labels}}


EXPECTED_AGENTS = [
    # h1 listens on 0.0.0.0: the target is its advertised address with the metrics port.
    agent_group("10.0.0.1:9101", "h1", "10.0.0.1:7070", __meta_shoal_host_label_zone="a"),
    # Label keys become valid Prometheus label names (ASCII letters, digits, _).
    agent_group("10.0.0.2:9101", "h2", "10.0.0.2:7070", __meta_shoal_host_label_zone="b",
                __meta_shoal_host_label_topology_shoal_io_rack="r2", __meta_shoal_host_label_r_gion="nord"),
    # IPv6: the wildcard is replaced and the address bracketed.
    agent_group("[fd00::4]:9101", "h4", "[fd00::4]:7070", __meta_shoal_host_label_zone="a"),
]
EXPECTED_REPLICAS = [
    {"targets": ["10.0.0.1:31001"], "labels": {
        "__meta_shoal_kind": "replica", "__meta_shoal_service": "web", "__meta_shoal_replica": "web-00000",
        "__meta_shoal_replica_generation": "1", "__meta_shoal_host_id": "h1", "__meta_shoal_host_name": "h1",
        "__meta_shoal_host_address": "10.0.0.1:7070", "__meta_shoal_host_label_zone": "a",
        "__meta_shoal_service_label_team": "web"}},
    # Running but not ready: still scraped (its metrics may say why).
    {"targets": ["10.0.0.5:31002"], "labels": {
        "__meta_shoal_kind": "replica", "__meta_shoal_service": "web", "__meta_shoal_replica": "web-00001",
        "__meta_shoal_replica_generation": "1", "__meta_shoal_host_id": "h5", "__meta_shoal_host_name": "h5",
        "__meta_shoal_host_address": "10.0.0.5:7070", "__meta_shoal_host_label_zone": "a",
        "__meta_shoal_service_label_team": "web"}},
]


def test_http_sd_lists_agents_with_a_metrics_address_and_running_replicas_with_a_metrics_port() -> None:
    async def scenario() -> None:
        metrics = await following(await filled_store())
        await metrics.close()
        assert metrics.loaded
        assert metrics.http_sd() == EXPECTED_AGENTS + EXPECTED_REPLICAS
        assert metrics.http_sd("agent") == EXPECTED_AGENTS
        assert metrics.http_sd("replica") == EXPECTED_REPLICAS
        with pytest.raises(ValueError, match="unknown target kind 'pods'"):
            metrics.http_sd("pods")
        for group in metrics.http_sd():  # the format http_sd_config requires
            assert set(group) == {"targets", "labels"}
            assert all(isinstance(v, str) for v in group["labels"].values())

    run(scenario)


@pytest.mark.parametrize(("address", "metrics", "target"), [
    ("10.0.0.1:7070", "10.0.0.9:9101", "10.0.0.9:9101"),    # a management address of its own: kept
    ("10.0.0.1:7070", ":9101", "10.0.0.1:9101"),
    ("node-1.example:7070", "0.0.0.0:9101", "node-1.example:9101"),
    ("[fd00::1]:7070", "[fd00::9]:9101", "[fd00::9]:9101"),
    ("10.0.0.1:7070", "", ""),
    ("10.0.0.1:7070", "nonsense", ""),
])
def test_agent_targets(address: str, metrics: str, target: str) -> None:
    assert agent_target(host("h1", address, metrics=metrics)) == target


# -- following the store ------------------------------------------------------------------------------

def test_figures_and_targets_follow_changes_in_the_store() -> None:
    async def scenario() -> None:
        store = await filled_store()
        metrics = await following(store)
        try:
            web0 = await store.get(store.schema.replica("web", "web-00000"))
            web2 = await store.get(store.schema.replica("web", "web-00002"))
            h2 = await store.get(store.schema.host("h2"))
            assert web0 is not None and web2 is not None and h2 is not None
            await store.commit([
                Put(host("h6", "10.0.0.6:7070", metrics="10.0.0.6:9101", zone="d")),
                Put(replace(web0, ready=False)),
                Delete(h2),
                Put(replace(web2, phase=ReplicaPhase.RUNNING, host=HostId("h6"),
                            ports=(HostPort(9100, 32000),))),
            ])
            await caught_up(metrics, store)
            s = scrape(metrics)
            assert value(s, "shoal_service_replicas_ready", service="web") == 0
            assert value(s, "shoal_service_replicas_pending", service="web") == 0
            assert value(s, "shoal_service_pending_since_timestamp_seconds", service="web") is None
            assert value(s, "shoal_host_ready", host_id="h2", host="h2") is None
            assert value(s, "shoal_hosts", state="not_ready") == 2  # h3, and h6 (no status yet)
            assert [g["targets"][0] for g in metrics.http_sd("agent")] == [
                "10.0.0.1:9101", "[fd00::4]:9101", "10.0.0.6:9101"]
            assert [g["targets"][0] for g in metrics.http_sd("replica")] == [
                "10.0.0.1:31001", "10.0.0.5:31002", "10.0.0.6:32000"]
        finally:
            await metrics.close()

    run(scenario)


class CompactingOnce(MemoryStore):
    """A store whose first watch finds its history compacted."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0

    async def watch(self, after_revision: int, *,
                    scope: KeyRange[Any] | None = None) -> AsyncGenerator[base.Change, None]:
        self.watches += 1
        if self.watches == 1:
            raise Compacted(after_revision + 1, after_revision + 5)
        async for change in super().watch(after_revision, scope=scope):
            yield change


def test_a_compacted_watch_means_reading_the_cluster_again() -> None:
    async def scenario() -> None:
        store = CompactingOnce()
        await store.commit([Put(r) for r in CLUSTER])
        metrics = await following(store)
        try:
            await until(lambda: store.watches >= 2, "a second watch")
            await store.commit([Put(service("extra", 7))])
            await caught_up(metrics, store)
            s = scrape(metrics)
            assert value(s, "shoal_scheduler_state_resyncs_total") == 1
            assert value(s, "shoal_scheduler_state_synced") == 1
            assert value(s, "shoal_service_replicas_desired", service="extra") == 7
        finally:
            await metrics.close()

    run(scenario)


def test_an_unreachable_store_is_read_once_it_answers() -> None:
    async def scenario() -> None:
        store = await filled_store()
        store.available = False
        metrics = SchedulerMetrics(publish_interval=FAST)
        metrics.watch(store=store, leader=lambda: None)
        try:
            await until(lambda: value(scrape(metrics), "shoal_scheduler_etcd_request_failures_total",
                                      operation="snapshot", error="StoreUnavailable") == 1, "a failed read")
            assert not metrics.loaded and value(scrape(metrics), "shoal_scheduler_state_synced") == 0
            store.available = True
            await caught_up(metrics, store)
            await until(lambda: value(scrape(metrics), "shoal_scheduler_state_synced") == 1, "synced")
            assert value(scrape(metrics), "shoal_service_replicas_desired", service="web") == 3
        finally:
            await metrics.close()

    run(scenario)


def test_undecodable_records_are_counted_and_left_out() -> None:
    async def scenario() -> None:
        store = await filled_store()
        store.put_raw(store.schema.host("bad1").key, b"{not json")
        metrics = await following(store)
        try:
            assert value(scrape(metrics), "shoal_scheduler_corrupt_records") == 1
            store.put_raw(store.schema.service("bad2").key, b"\xff")  # arrives through the watch
            await caught_up(metrics, store)
            s = scrape(metrics)
            assert value(s, "shoal_scheduler_corrupt_records") == 2
            assert value(s, "shoal_service_replicas_desired", service="bad2") is None
            assert value(s, "shoal_host_ready", host_id="bad1", host="bad1") is None
            await store.commit([Put(service("bad2", 1), expected=store.revision)])  # repaired
            await caught_up(metrics, store)
            s = scrape(metrics)
            assert value(s, "shoal_scheduler_corrupt_records") == 1
            assert value(s, "shoal_service_replicas_desired", service="bad2") == 1
        finally:
            await metrics.close()

    run(scenario)


def test_the_leader_gauge_follows_the_callers_view() -> None:
    async def scenario() -> None:
        leading: list[object] = []
        metrics = await following(await filled_store(), leader=lambda: leading[0] if leading else None)
        try:
            assert value(scrape(metrics), "shoal_scheduler_leader") == 0
            leading.append(object())
            await until(lambda: value(scrape(metrics), "shoal_scheduler_leader") == 1, "leader 1")
            leading.clear()
            await until(lambda: value(scrape(metrics), "shoal_scheduler_leader") == 0, "leader 0")
        finally:
            await metrics.close()

    run(scenario)


def test_watch_twice_is_refused() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        metrics = SchedulerMetrics()
        metrics.watch(store=store)
        try:
            with pytest.raises(RuntimeError, match="already"):
                metrics.watch(store=store)
        finally:
            await metrics.close()

    run(scenario)


def test_scrapes_from_other_threads_while_the_loop_writes() -> None:
    """Scrapes run in the HTTP server's threads; the loop keeps changing the mirror meanwhile."""
    async def scenario() -> None:
        store = await filled_store()
        metrics = await following(store)
        errors: list[BaseException] = []
        stop = threading.Event()

        def scrape_repeatedly() -> None:
            while not stop.is_set():
                try:
                    scrape(metrics)
                    metrics.http_sd()
                except BaseException as err:
                    errors.append(err)
                    return

        threads = [threading.Thread(target=scrape_repeatedly) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(100):
                await store.commit([Put(replace(build.replica("busy", i), created_at=float(i)))])
            await store.commit([Put(service("busy", 100))])
            await caught_up(metrics, store)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            await metrics.close()
        assert errors == []
        s = scrape(metrics)
        assert value(s, "shoal_service_replicas_pending", service="busy") == 100
        assert value(s, "shoal_service_pending_since_timestamp_seconds", service="busy") == 0.0

    run(scenario)


# -- reconcile passes ---------------------------------------------------------------------------------

def world(*replicas: Replica, now: float) -> reconcile.World:
    return reconcile.World(services={}, replicas={r.id: r for r in replicas}, hosts={}, statuses={},
                           observed={}, now=now)


def placed(r: Replica, on: str = "h1") -> Replica:
    return replace(r, host=HostId(on), phase=ReplicaPhase.STARTING)


def test_a_pass_records_its_duration_the_wait_of_replicas_it_placed_and_its_actions() -> None:
    metrics = SchedulerMetrics()
    waiting = replace(build.replica("web", 0), created_at=100.0)
    running = replace(placed(build.replica("web", 1)), created_at=50.0, phase=ReplicaPhase.RUNNING)
    new = replace(build.replica("web", 2), created_at=103.0)  # created and placed in the same pass
    plan = reconcile.Plan(
        writes=(reconcile.WriteReplica(placed(waiting)), reconcile.WriteReplica(replace(running, ready=True)),
                reconcile.WriteReplica(placed(new))),
        actions=(reconcile.Launch(host=HostId("h1"), replica=waiting.id, service=waiting.service,
                                  generation=1),
                 reconcile.Retire(host=HostId("h1"), container="x", reason="orphan")),
        placed=frozenset({waiting.id, new.id}))
    metrics.record_pass(0.02, plan, world(waiting, running, now=103.0))
    # The same plan again (a repeated pass): nothing is placed twice.
    metrics.record_pass(0.03, plan, world(waiting, running, now=104.0))
    s = scrape(metrics)
    assert value(s, "shoal_scheduler_reconcile_duration_seconds_count") == 2
    assert value(s, "shoal_scheduler_reconcile_duration_seconds_sum") == pytest.approx(0.05)
    assert value(s, "shoal_scheduler_placement_duration_seconds_count") == 2  # waiting and new
    assert value(s, "shoal_scheduler_placement_duration_seconds_sum") == pytest.approx(3.0 + 0.0)
    assert value(s, "shoal_scheduler_placement_duration_seconds_bucket", le="2.5") == 1
    assert value(s, "shoal_scheduler_planned_actions_total", action="launch") == 2
    assert value(s, "shoal_scheduler_planned_actions_total", action="retire") == 2
    assert value(s, "shoal_scheduler_lost_hosts_held") == 0
    metrics.record_pass(0.01, replace(plan, writes=(), actions=(), lost_held=7), world(now=105.0))
    assert value(scrape(metrics), "shoal_scheduler_lost_hosts_held") == 7  # the latest pass's


# -- etcd timing --------------------------------------------------------------------------------------

def test_a_timed_store_times_every_call_and_counts_failures_by_error() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        metrics = SchedulerMetrics()
        timed = metrics.timed(store)
        assert metrics.timed(timed) is timed
        assert timed.schema is store.schema
        assert timed.revision == store.revision  # type: ignore[attr-defined]  # the wrapped store's own
        await timed.commit([Put(build.service("web"))])
        with pytest.raises(Conflict):
            await timed.commit([Put(build.service("web"))])  # expects the key absent
        assert (await timed.get(store.schema.service("web"))) is not None
        assert len((await timed.list(store.schema.services())).items) == 1
        lease = await timed.grant_lease(60)
        await timed.revoke_lease(lease.id)
        changes = timed.watch(0)
        first = await anext(changes)
        await changes.aclose()
        assert first.key == store.schema.service("web").key
        s = scrape(metrics)
        count = "shoal_scheduler_etcd_request_duration_seconds_count"
        assert {op: value(s, count, operation=op)
                for op in ("commit", "get", "list", "grant_lease", "revoke_lease", "snapshot")} == {
            "commit": 2, "get": 1, "list": 1, "grant_lease": 1, "revoke_lease": 1, "snapshot": None}
        assert value(s, "shoal_scheduler_etcd_request_failures_total", operation="commit",
                     error="Conflict") == 1
        with contextlib.suppress(Exception):
            await timed.close()

    run(scenario)


def test_autoscaled_services_export_their_bounds_and_last_decision() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        policy = build.full_service().spec.autoscale
        web = service("web", 3)
        web = replace(web, spec=replace(web.spec, autoscale=policy))
        decided = replace(build.full_autoscale_status(), decisions=(
            AutoscaleDecision(50.0, 2, 4, "up"), AutoscaleDecision(60.0, 4, 4, "no decision", error="down")))
        await store.commit([Put(web), Put(service("api", 2)), Put(decided)])
        metrics = await following(store)
        try:
            s = scrape(metrics)
        finally:
            await metrics.close()
        assert (value(s, "shoal_autoscale_min_replicas", service="web"),
                value(s, "shoal_autoscale_max_replicas", service="web")) == (2, 20)
        assert value(s, "shoal_autoscale_desired_replicas", service="web") == 4
        assert value(s, "shoal_autoscale_last_decision_timestamp_seconds", service="web") == 60.0
        assert value(s, "shoal_autoscale_decision_failed", service="web") == 1
        assert value(s, "shoal_autoscale_min_replicas", service="api") is None  # not autoscaled

    run(scenario)


def test_host_groups_export_members_desired_hosts_and_pending_replicas_until_deleted() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        workers = HostGroup(spec=HostGroupSpec(name=GroupName("workers"), max_hosts=5))
        batch = HostGroup(spec=HostGroupSpec(name=GroupName("batch"), max_hosts=2))
        status = HostGroupStatus(group=GroupName("workers"), desired_hosts=4, pending_replicas=7)
        members = [host(h, f"10.0.0.{i}:7070", labels=(("group", "workers"),)) for i, h in enumerate("ab")]
        await store.commit([Put(workers), Put(batch), Put(status), *(Put(m) for m in members),
                            Put(host("c", "10.0.0.9:7070"))])
        metrics = await following(store)
        try:
            s = scrape(metrics)
            assert value(s, "shoal_hostgroup_hosts", group="workers") == 2
            assert value(s, "shoal_hostgroup_desired_hosts", group="workers") == 4
            assert value(s, "shoal_hostgroup_pending_replicas", group="workers") == 7
            # A group the elastic loop has not decided for yet: its members, nothing pending.
            assert (value(s, "shoal_hostgroup_hosts", group="batch"),
                    value(s, "shoal_hostgroup_desired_hosts", group="batch"),
                    value(s, "shoal_hostgroup_pending_replicas", group="batch")) == (0, 0, 0)
            stored = await store.get(store.schema.hostgroup(workers.spec.name))
            assert stored is not None
            await store.commit([Delete(stored)])  # its status stays in etcd; its series go
            await caught_up(metrics, store)
            s = scrape(metrics)
            assert value(s, "shoal_hostgroup_hosts", group="workers") is None
            assert value(s, "shoal_hostgroup_desired_hosts", group="workers") is None
            assert value(s, "shoal_hostgroup_pending_replicas", group="batch") == 0
        finally:
            await metrics.close()

    run(scenario)


def test_provider_attempts_are_counted_by_group_kind_and_outcome() -> None:
    metrics = SchedulerMetrics()
    for outcome in ("failed", "failed", "delivered"):
        metrics.record_provider_attempt(AttemptRecord(GroupName("workers"), "scale_out", outcome))
    s = scrape(metrics)
    name = "shoal_hostgroup_provider_requests_total"
    assert value(s, name, group="workers", kind="scale_out", outcome="failed") == 2
    assert value(s, name, group="workers", kind="scale_out", outcome="delivered") == 1


def test_the_cluster_collector_describes_every_family_it_yields_so_restricted_scrapes_skip_it() -> None:
    """``/metrics?name[]=`` collects only the collectors holding those names: the cluster collector's
    description must name every family it yields (``CLUSTER_FAMILIES``), and a scrape for other names
    must not walk the cluster."""
    async def scenario() -> None:
        store = MemoryStore()
        policy = build.full_service().spec.autoscale
        web = service("web", 3)
        web = replace(web, spec=replace(web.spec, autoscale=policy))
        decided = replace(build.full_autoscale_status(), decisions=(AutoscaleDecision(50.0, 2, 4, "up"),))
        workers = HostGroup(spec=HostGroupSpec(name=GroupName("workers"), max_hosts=5))
        await store.commit([Put(web), Put(decided), Put(workers),
                            Put(host("a", "10.0.0.1:7070", labels=(("group", "workers"),))),
                            Put(build.replica("web", 1))])  # pending
        metrics = await following(store)
        try:
            yielded = {family.name for collector in list(metrics.registry._collector_to_names)
                       for family in collector.collect()}
            described = {name for name, _ in CLUSTER_FAMILIES}
            assert {"shoal_autoscale_desired_replicas", "shoal_hostgroup_hosts", "shoal_host_ready",
                    "shoal_service_pending_since_timestamp_seconds"} <= yielded
            named = set(metrics.registry._names_to_collectors)
            assert yielded <= named, yielded - named  # every family reachable by its name
            assert len(described) == len(CLUSTER_FAMILIES)
            cluster = metrics.registry._names_to_collectors["shoal_hosts"]
            walked: list[int] = []
            real = cluster.collect

            def counted() -> Any:
                walked.append(1)
                return real()

            cluster.collect = counted  # type: ignore[method-assign]
            text = generate_latest(metrics.registry.restricted_registry(
                ["shoal_scheduler_reconcile_duration_seconds_count"])).decode()
            assert text.startswith("# HELP shoal_scheduler_reconcile_duration_seconds") and not walked
            text = generate_latest(metrics.registry.restricted_registry(["shoal_hosts"])).decode()
            assert "shoal_hosts{" in text and "shoal_host_ready" not in text and walked == [1]
        finally:
            await metrics.close()

    run(scenario)
