"""What the scheduler tells Prometheus: the figures behind ``/metrics`` and ``http_sd`` discovery.

``SchedulerMetrics`` runs the instance's follower (``scheduler.follower``: one snapshot, then a watch from
its revision, a new snapshot after a compaction or a failure), whose state, owned by the event loop, the
API's reads share. Every ``publish_interval`` the loop publishes an immutable copy of it (only when something
changed; less often when copying it costs more than ``PUBLISH_SHARE`` of the loop) together with whether
this instance leads; scrapes, served from other threads
(``scheduler.httpd``), read only that copy, so they never touch etcd, the loop or its objects, and every
instance, leader or not, serves the same figures. Derived figures are computed once per published copy,
by the first scrape that needs them. Every instance exports the cluster figures: aggregate across
instances with ``max by (service)`` (the rules in ``deploy/prometheus/`` do).

Series (see ``docs/architecture.md`` for the table):

* per service: ``shoal_service_replicas_{desired,ready,pending,failed}`` and
  ``shoal_service_pending_since_timestamp_seconds`` (when its longest-waiting pending replica was
  created: the expansion platform's "add hosts" signal); per host state ``shoal_hosts``; per host
  ``shoal_host_ready``;
* about this instance: ``shoal_scheduler_leader``, ``shoal_scheduler_state_synced`` (its copy follows
  etcd), ``shoal_scheduler_state_resyncs_total``, ``shoal_scheduler_corrupt_records``,
  ``shoal_scheduler_gc_pause_seconds_total`` (by generation: what the collector held the loop for),
  ``shoal_scheduler_event_loop_silent_seconds`` (since the loop last ran, computed at each scrape);
* histograms of the leader's reconcile passes, of replicas' wait from creation to placement and from
  placement to running, of launches from hand-over to their agent's answer, of the session workers'
  share of agent calls and of how late the leader reads them (``scheduler.timings``: the leader's parts
  call this object), of etcd requests (every call through a store wrapped by ``timed``) and of API calls
  (``interceptor``); counters of planned agent actions, failed etcd requests, and the etcd client's
  retries and watch resumes.

``http_sd()`` is Prometheus' HTTP service discovery format: one target group per agent that registered a
metrics address and one per running replica of a service declaring ``metrics_port``, with ``__meta_shoal_*``
labels for relabeling (host labels as ``__meta_shoal_host_label_<key>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proto.scheduler.v1 import scheduler_pb2 as spb
from scheduler import api, gc_pauses, reconcile, timings
from scheduler.elastic.loop import AttemptRecord
from scheduler.follower import Follower
from scheduler.liveness import LoopAlive
from scheduler.model import LABEL_GROUP, HostId, HostRecord, Replica, ReplicaPhase, Service
from scheduler.store import base
from scheduler.store.keys import KeyRange, KeyRef, KeySchema, R
from scheduler.store.records import LeaderRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

GC_GENERATIONS = (0, 1, 2)  # CPython's
PUBLISH_INTERVAL = 1.0   # scrapes see the cluster at most about this much behind the mirror
# ... or longer, so that copying it takes at most this share of the loop: at 100,000 replicas on a
# loaded machine a copy took ~50 ms (its objects' reference counts are cache misses), and copying it
# every second while placing was 5 % of the leader's cpu (docs/scaling.md, part 11).
PUBLISH_SHARE = 0.01
PLACED_MEMORY = 100_000  # replica ids remembered as placed (so a repeated plan is not counted twice)
STARTED_MEMORY = 100_000  # starts remembered (a record written again with the same decision counts once)

HOST_STATES = tuple(name.removeprefix("HOST_STATE_").lower() for name, _ in spb.HostState.items()
                    if name != "HOST_STATE_UNSPECIFIED")
TARGET_KINDS = ("agent", "replica")

ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A replica's way to running: milliseconds on an idle cluster, seconds through a mass failure, minutes
# when an image is pulled.
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)


class SchedulerMetrics:
    """The scheduler's metrics registry and discovery (see the module docstring).

    Fed by the loop: ``record_pass`` (the controller's ``on_pass``), the ``Timings`` methods (the leader's
    controller, actuator and session workers), ``watch`` (starts following the store), ``interceptor()``
    (the API server's), ``timed(store)`` (etcd request latency). Read from any
    thread: ``registry`` (what ``/metrics`` renders), ``http_sd()``, ``loaded``, ``snapshot()``.
    """

    def __init__(self, *, publish_interval: float = PUBLISH_INTERVAL) -> None:
        self.registry = CollectorRegistry()
        self.publish_interval = publish_interval
        self._lock = threading.Lock()
        self._published = Published()
        self._tasks: list[asyncio.Task[None]] = []
        self._placed: dict[str, None] = {}  # insertion-ordered: the oldest are forgotten first
        self._follower: Follower | None = None
        r = self.registry
        self.reconcile = Histogram(
            "shoal_scheduler_reconcile_duration_seconds",
            "Time the leader took for one reconcile pass (decide, commit to etcd, hand actions over).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.placement = Histogram(
            "shoal_scheduler_placement_duration_seconds",
            "Time from a replica's creation to its placement on a host (including any wait, pending, for "
            "room).", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=r)
        self.actions = Counter(
            "shoal_scheduler_planned_actions",
            "Agent actions the leader's reconcile passes decided, by kind.", ["action"], registry=r)
        self.etcd = Histogram(
            "shoal_scheduler_etcd_request_duration_seconds",
            "Time of the scheduler's etcd calls as its code sees them (the store's own retries included).",
            ["operation"], buckets=ETCD_BUCKETS, registry=r)
        self.etcd_failures = Counter(
            "shoal_scheduler_etcd_request_failures", "etcd calls that raised, by operation and error "
            "(Conflict is a compare-and-swap that lost: expected now and then).",
            ["operation", "error"], registry=r)
        self.rpcs = Histogram(
            "shoal_scheduler_rpc_duration_seconds",
            "gRPC API calls by method and status code, handling time (streams: their lifetime).",
            ["method", "code"], buckets=RPC_BUCKETS, registry=r)
        self.resyncs = Counter(
            "shoal_scheduler_state_resyncs",
            "Full re-reads of the cluster from etcd after the first (a compacted or failed watch).",
            registry=r)
        self.read_fallbacks = Counter(
            "shoal_scheduler_consistent_read_fallbacks",
            "API reads served from a snapshot of etcd instead of the follower's copy, by reason: not_synced "
            "(the follower is not following etcd), behind (it did not reach the read's revision within the "
            "wait), quiet (it received nothing while short of the revision: a write outside what it "
            "follows).", ["reason"], registry=r)
        for reason in ("not_synced", "behind", "quiet"):
            self.read_fallbacks.labels(reason)
        # A replica's way from placement to running (``scheduler.timings``; fed by the leader).
        self.launches = Histogram(
            "shoal_scheduler_launch_duration_seconds",
            "Time from a launch's hand-over to the actuator (its replica's record written) to its agent's "
            "answer in the leader, by outcome (created, failed).", ["outcome"], buckets=START_BUCKETS,
            registry=r)
        for outcome in ("created", "failed"):
            self.launches.labels(outcome)
        self.worker_calls = Histogram(
            "shoal_scheduler_session_worker_call_duration_seconds",
            "With --session-workers: the share of an agent call spent in the session worker, from the "
            "call's arrival there to its reply (the agent's own time included), by method.", ["method"],
            buckets=START_BUCKETS, registry=r)
        self.worker_delays = Histogram(
            "shoal_scheduler_session_worker_delay_seconds",
            "With --session-workers: how old a worker's message of changed agent sessions (starts, exits, "
            "connections) is when the leader reads it.", buckets=START_BUCKETS, registry=r)
        self.starts = Histogram(
            "shoal_scheduler_replica_start_duration_seconds",
            "Time from a replica's placement to the leader deciding it runs (its agent reported its "
            "container running), counted as that decision is written; restarts are not counted.",
            buckets=START_BUCKETS, registry=r)
        self._started: dict[tuple[str, float], None] = {}  # insertion-ordered, as _placed
        self.provider_requests = Counter(
            "shoal_hostgroup_provider_requests",
            "Attempts to deliver a host group's request to its provider (webhook and/or command), by "
            "kind (scale_out, scale_in) and outcome (delivered, failed: retried with backoff). Counted "
            "by the leader.", ["group", "kind", "outcome"], registry=r)
        self.lost_held = Gauge(
            "shoal_scheduler_lost_hosts_held",
            "Hosts lost past their grace whose replicas the leader is not replacing, because more than "
            "--max-lost-share of the hosts were lost at once (0 normally; set by each reconcile pass).",
            registry=r)
        self._alive: LoopAlive | None = None
        self.loop_silent = Gauge(
            "shoal_scheduler_event_loop_silent_seconds",
            "Seconds since this instance's event loop last ran, at the scrape (near 0; a loop silent past "
            "--leader-hang-limit has let its term go, and /healthz answers 503).", registry=r)
        self.loop_silent.set_function(lambda: self._alive.silent_for() if self._alive is not None else 0.0)
        for action in ("launch", "retire"):
            self.actions.labels(action)
        r.register(_ClusterCollector(self))

    def follow_loop(self, alive: LoopAlive) -> None:
        """``shoal_scheduler_event_loop_silent_seconds`` from now on says how long ``alive``'s loop has
        not run (scrapes are served from threads: they answer while the loop is stuck)."""
        self._alive = alive

    # -- feeding (on the event loop) ----------------------------------------------------------------

    def record_pass(self, seconds: float, plan: reconcile.Plan, world: reconcile.World) -> None:
        """One reconcile pass of the leader: its duration, the replicas it placed, the actions it decided."""
        self.reconcile.observe(seconds)
        self.lost_held.set(plan.lost_held)
        for write in plan.writes:
            if isinstance(write, reconcile.DropReplica):
                self._placed.pop(write.replica.id, None)
                continue
            if not isinstance(write, reconcile.WriteReplica):
                continue
            replica = write.replica
            # (the plan says what it placed: ``world.replicas`` may be the leader's own, changed since)
            if replica.id not in plan.placed or replica.id in self._placed or not replica.created_at:
                continue
            self._placed[replica.id] = None
            self.placement.observe(max(0.0, world.now - replica.created_at))
        while len(self._placed) > PLACED_MEMORY:
            del self._placed[next(iter(self._placed))]
        for action in plan.actions:
            self.actions.labels("launch" if isinstance(action, reconcile.Launch) else "retire").inc()

    # ``scheduler.timings.Timings``: the leader's controller, actuator and session workers call these.

    def launched(self, seconds: float, outcome: str) -> None:
        self.launches.labels(outcome).observe(seconds)

    def worker_call(self, seconds: float, method: str) -> None:
        self.worker_calls.labels(method).observe(seconds)

    def worker_delay(self, seconds: float) -> None:
        self.worker_delays.observe(seconds)

    def written(self, records: Iterable[object]) -> None:
        for replica, decided, seconds in timings.starts(records):
            if (key := (replica.id, decided)) in self._started:
                continue
            self._started[key] = None
            self.starts.observe(seconds)
        while len(self._started) > STARTED_MEMORY:
            del self._started[next(iter(self._started))]

    def record_provider_attempt(self, attempt: AttemptRecord) -> None:
        """One delivery attempt of the leader's elastic loop (the controller's ``on_provider_attempt``)."""
        self.provider_requests.labels(attempt.group, attempt.kind, attempt.outcome).inc()

    def timed(self, store: base.Store) -> base.Store:
        """``store`` with every call timed into ``shoal_scheduler_etcd_request_duration_seconds``."""
        return store if isinstance(store, TimedStore) else TimedStore(store, self)

    def follower(self, store: base.Store) -> Follower:
        """This instance's follower of ``store`` (made on the first call), counted into these metrics; the
        API serves its reads from it (``scheduler.server.add_services(reads=...)``), ``watch`` runs it."""
        if self._follower is None:
            self._follower = Follower(self.timed(store), on_resync=self.resyncs.inc,
                                      on_fallback=lambda reason: self.read_fallbacks.labels(reason).inc())
        return self._follower

    def watch(self, *, store: base.Store, election: Any = None,
              leader: Callable[[], object | None] = lambda: None) -> None:
        """Start following ``store`` and publishing (tasks of the running loop). ``leader()`` is not None
        while this instance runs the control loops; it is called on the loop only. (``election`` is
        accepted for the callers' sake and not needed.)"""
        if self._tasks:
            raise RuntimeError("SchedulerMetrics.watch was already called")
        follower = self.follower(store)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(follower.run(), name="metrics-follow"),
                       loop.create_task(self._publish_loop(follower, store, leader), name="metrics-publish")]

    async def close(self) -> None:
        """Stop following the store (the last published figures stay)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _publish_loop(self, follower: Follower, store: base.Store,
                            leader: Callable[[], object | None]) -> None:
        cluster: PublishedCluster | None = None
        published_version = -1
        while True:
            try:
                leading = leader() is not None
            except Exception:  # a caller's bookkeeping must not stop the figures
                leading = False
            wait = self.publish_interval
            if follower.state is not None and follower.version != published_version:
                started = time.perf_counter()
                cluster = PublishedCluster(follower.state.copy())
                published_version = follower.version
                wait = max(wait, (time.perf_counter() - started) / PUBLISH_SHARE)
            stats = getattr(store, "stats", None)  # EtcdStore's client counters, when there are some
            state = Published(cluster=cluster, leading=leading, synced=follower.synced,
                               etcd_retries=getattr(stats, "retries", None),
                               etcd_watch_resumes=getattr(stats, "watch_resumes", None))
            with self._lock:
                self._published = state
            await asyncio.sleep(wait)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """For ``grpc.aio.server(interceptors=[...])``: times every API call by method and status."""
        return _RpcInterceptor(self.rpcs)

    # -- reading (any thread) -----------------------------------------------------------------------

    def published(self) -> Published:
        with self._lock:
            return self._published

    @property
    def loaded(self) -> bool:
        """Whether the cluster has been read from etcd at least once (before that, discovery has nothing
        to say and ``/http_sd`` answers 503, so Prometheus keeps the targets it had)."""
        return self.published().cluster is not None

    def snapshot(self) -> base.Snapshot | None:
        """The cluster as last published (None before it was first read)."""
        cluster = self.published().cluster
        return cluster.snapshot if cluster is not None else None

    def http_sd(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Target groups in Prometheus' http_sd format, all of them or those of one ``kind`` ("agent",
        "replica"); ``[]`` before the cluster was read (check ``loaded``)."""
        if kind is not None and kind not in TARGET_KINDS:
            raise ValueError(f"unknown target kind {kind!r}: use {' or '.join(TARGET_KINDS)}")
        cluster = self.published().cluster
        if cluster is None:
            return []
        return [g for g in cluster.targets if kind is None or g["labels"]["__meta_shoal_kind"] == kind]


@dataclass(frozen=True)
class Published:
    """What scrapes read: replaced whole, never changed."""

    cluster: PublishedCluster | None = None
    leading: bool = False
    synced: bool = False
    etcd_retries: int | None = None
    etcd_watch_resumes: int | None = None


class TimedStore:
    """A ``Store`` that times every call of the store it wraps (``SchedulerMetrics.timed``); a watch is
    passed through (it is a stream: its lifetime says nothing about etcd's latency). Other attributes of
    the wrapped store (``EtcdStore.stats``, ``.target``) are reached through it."""

    def __init__(self, inner: base.Store, metrics: SchedulerMetrics) -> None:
        self.inner = inner
        self._duration = metrics.etcd
        self._failures = metrics.etcd_failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except Exception as err:
            self._duration.labels(operation).observe(time.perf_counter() - started)
            self._failures.labels(operation, type(err).__name__).inc()
            raise
        self._duration.labels(operation).observe(time.perf_counter() - started)
        return result

    @property
    def schema(self) -> KeySchema:
        return self.inner.schema

    async def snapshot(self) -> base.Snapshot:
        return await self._timed("snapshot", self.inner.snapshot())

    async def get(self, ref: KeyRef[R]) -> R | None:
        return await self._timed("get", self.inner.get(ref))

    async def list(self, key_range: KeyRange[R]) -> base.Listing[R]:
        return await self._timed("list", self.inner.list(key_range))

    async def current_revision(self) -> int:
        return await self._timed("current_revision", self.inner.current_revision())

    async def commit(self, ops: Sequence[base.Op], *, guard: base.LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: base.Landed | None = None) -> base.Committed:
        return await self._timed("commit", self.inner.commit(ops, guard=guard, in_flight=in_flight,
                                                             on_landed=on_landed))

    def watch(self, after_revision: int, *,
              scope: KeyRange[Any] | None = None) -> AsyncGenerator[base.Change, None]:
        return self.inner.watch(after_revision, scope=scope)

    async def compact(self, revision: int) -> None:
        await self._timed("compact", self.inner.compact(revision))

    async def grant_lease(self, ttl_s: int) -> base.Lease:
        return await self._timed("grant_lease", self.inner.grant_lease(ttl_s))

    async def refresh_lease(self, lease_id: int) -> int:
        return await self._timed("refresh_lease", self.inner.refresh_lease(lease_id))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._timed("revoke_lease", self.inner.revoke_lease(lease_id))

    async def campaign(self, record: LeaderRecord, *, lease_id: int) -> LeaderRecord:
        return await self._timed("campaign", self.inner.campaign(record, lease_id=lease_id))

    async def close(self) -> None:
        await self.inner.close()


# -- figures derived from a published copy ----------------------------------------------------------

@dataclass(frozen=True)
class ServiceFigures:
    name: str
    desired: int
    ready: int
    pending: int
    failed: int
    pending_since: float | None  # creation time of the longest-waiting pending replica


class PublishedCluster:
    """One published copy of the cluster and what scrapes derive from it (each computed once, by the
    first scrape that asks; ``cached_property`` locks in Python 3.11, and a second computation of the
    same immutable input in 3.12+ would only cost time)."""

    def __init__(self, snapshot: base.Snapshot) -> None:
        self.snapshot = snapshot

    @functools.cached_property
    def _live_by_service(self) -> dict[str, list[Replica]]:
        out: dict[str, list[Replica]] = {}
        for replica in api.live(self.snapshot.replicas.values()):
            out.setdefault(replica.service, []).append(replica)
        return out

    @functools.cached_property
    def services(self) -> tuple[ServiceFigures, ...]:
        out = []
        for name, service in sorted(self.snapshot.services.items()):
            replicas = self._live_by_service.get(name, [])
            pending = [r.created_at for r in replicas if r.phase is ReplicaPhase.PENDING]
            out.append(ServiceFigures(
                name=name, desired=0 if service.deleting else service.spec.replicas,
                ready=sum(r.ready for r in replicas), pending=len(pending),
                failed=sum(r.phase is ReplicaPhase.FAILED for r in replicas),
                pending_since=min(pending) if pending else None))
        return tuple(out)

    @functools.cached_property
    def host_states(self) -> dict[HostId, str]:
        here: dict[str, int] = {}
        for replicas in self._live_by_service.values():
            for replica in replicas:
                if replica.host is not None:
                    here[replica.host] = here.get(replica.host, 0) + 1
        snap = self.snapshot
        return {host_id: _state_name(api.host_state(record, snap.host_statuses.get(host_id),
                                                     here.get(host_id, 0)))
                for host_id, record in snap.hosts.items()}

    @functools.cached_property
    def targets(self) -> tuple[dict[str, Any], ...]:
        snap = self.snapshot
        groups: list[dict[str, Any]] = []
        for _, record in sorted(snap.hosts.items()):
            target = agent_target(record)
            if target:
                groups.append({"targets": [target], "labels": {"__meta_shoal_kind": "agent",
                                                               **_host_labels(record)}})
        for replica_id, replica in sorted(snap.replicas.items()):
            service = snap.services.get(replica.service)
            host = snap.hosts.get(replica.host) if replica.host is not None else None
            target = replica_target(replica, service, host)
            if not target or service is None or host is None:
                continue
            labels = {"__meta_shoal_kind": "replica", "__meta_shoal_service": replica.service,
                      "__meta_shoal_replica": replica_id,
                      "__meta_shoal_replica_generation": str(replica.generation), **_host_labels(host),
                      **_label_map("__meta_shoal_service_label_", service.spec.labels)}
            groups.append({"targets": [target], "labels": labels})
        return tuple(groups)


def _state_name(code: spb.HostState.ValueType) -> str:
    return str(spb.HostState.Name(code)).removeprefix("HOST_STATE_").lower()


def _join(host: str, port: int | str) -> str:
    """HOST:PORT with an IPv6 host bracketed once (``host`` may come bracketed from api.host_address)."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def agent_target(record: HostRecord) -> str:
    """The agent's metrics address as a scrape target; a wildcard host (``0.0.0.0:9101``, ``[::]:9101``,
    ``:9101``) is replaced by the host part of its advertised API address. "" when there is none."""
    host, sep, port = record.metrics_address.rpartition(":")
    if not sep or not port.isdigit():
        return ""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = api.host_address(record)
    return _join(host, port) if host else ""


def replica_target(replica: Replica, service: Service | None, record: HostRecord | None) -> str:
    """Where a running replica's metrics port is published (its host's address, the host port); ""
    when it has none, is not running, or the port is not known yet."""
    if service is None or not service.spec.metrics_port or replica.phase is not ReplicaPhase.RUNNING:
        return ""
    port = next((p.host_port for p in replica.ports
                 if p.container_port == service.spec.metrics_port and p.protocol == "tcp"), 0)
    address = api.host_address(record)
    return _join(address, port) if port and address else ""


def _host_labels(record: HostRecord) -> dict[str, str]:
    return {"__meta_shoal_host_id": record.id, "__meta_shoal_host_name": record.name,
            "__meta_shoal_host_address": record.address,
            **_label_map("__meta_shoal_host_label_", record.labels)}


def _label_map(prefix: str, labels: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Labels as Prometheus label names: ASCII letters, digits and ``_`` (anything else becomes ``_``; a
    name Prometheus would refuse fails the whole discovery response). Of keys that come out the same, the
    first in sorted order wins."""
    out: dict[str, str] = {}
    for key, value in sorted(labels):
        name = prefix + "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key)
        out.setdefault(name, value)
    return out


def _gc_pauses() -> Iterator[CounterMetricFamily]:
    """What ``scheduler.gc_pauses`` timed (zero until ``install``), in this process and in its session
    workers: read from the scrape's thread, a float per generation that only the collector's callback
    (the loop, for the workers') writes."""
    for name, what, pauses in (
            ("shoal_scheduler_gc_pause_seconds", "this instance's interpreter (its event loop and the lease "
             "thread with it)", gc_pauses.pauses),
            ("shoal_scheduler_session_workers_gc_pause_seconds", "the interpreters of this instance's "
             "session workers (--session-workers; their loops), summed over workers", gc_pauses.workers)):
        family = CounterMetricFamily(name, f"Time the cyclic garbage collector held {what}, by generation "
                                           "(2: full collections).", labels=["generation"])
        by_generation = pauses.by_generation
        for generation in GC_GENERATIONS:
            family.add_metric([str(generation)], by_generation.get(generation, 0.0))
        yield family


# Every family ``_ClusterCollector.collect`` can yield, with its type: what it describes to the registry,
# so that a scrape restricted to other names (``/metrics?name[]=``, ``scheduler.httpd``) skips its walk
# over every host and service of the published copy, most of a whole page's cost at 5,000 hosts.
CLUSTER_FAMILIES = (
    ("shoal_scheduler_leader", "gauge"), ("shoal_scheduler_state_synced", "gauge"),
    ("shoal_scheduler_etcd_retries", "counter"), ("shoal_scheduler_etcd_watch_resumes", "counter"),
    ("shoal_scheduler_gc_pause_seconds", "counter"),
    ("shoal_scheduler_session_workers_gc_pause_seconds", "counter"),
    ("shoal_scheduler_corrupt_records", "gauge"),
    ("shoal_service_replicas_desired", "gauge"), ("shoal_service_replicas_ready", "gauge"),
    ("shoal_service_replicas_pending", "gauge"), ("shoal_service_replicas_failed", "gauge"),
    ("shoal_service_pending_since_timestamp_seconds", "gauge"),
    ("shoal_autoscale_min_replicas", "gauge"), ("shoal_autoscale_max_replicas", "gauge"),
    ("shoal_autoscale_desired_replicas", "gauge"),
    ("shoal_autoscale_last_decision_timestamp_seconds", "gauge"),
    ("shoal_autoscale_decision_failed", "gauge"),
    ("shoal_hosts", "gauge"), ("shoal_host_ready", "gauge"), ("shoal_host_start_failures", "gauge"),
    ("shoal_hostgroup_hosts", "gauge"), ("shoal_hostgroup_desired_hosts", "gauge"),
    ("shoal_hostgroup_pending_replicas", "gauge"),
)


class _ClusterCollector:
    """The gauges computed from the published copy at scrape time."""

    def __init__(self, owner: SchedulerMetrics) -> None:
        self.owner = owner

    def describe(self) -> list[Metric]:
        return [Metric(name, "", kind) for name, kind in CLUSTER_FAMILIES]

    def collect(self) -> Iterator[Metric]:
        state = self.owner.published()
        yield _gauge("shoal_scheduler_leader", "1 while this instance runs the control loops, else 0.",
                     1 if state.leading else 0)
        yield _gauge("shoal_scheduler_state_synced",
                     "1 while this instance's copy of the cluster follows etcd; 0 before the first read "
                     "and while it cannot (the figures below are then the last known ones).",
                     1 if state.synced else 0)
        if state.etcd_retries is not None:
            yield CounterMetricFamily("shoal_scheduler_etcd_retries",
                                      "etcd calls attempted again after a transient failure.",
                                      value=state.etcd_retries)
        if state.etcd_watch_resumes is not None:
            yield CounterMetricFamily("shoal_scheduler_etcd_watch_resumes",
                                      "etcd watch streams re-created after they broke.",
                                      value=state.etcd_watch_resumes)
        yield from _gc_pauses()
        cluster = state.cluster
        if cluster is None:
            return
        yield _gauge("shoal_scheduler_corrupt_records",
                     "Keys under the scheduler's prefix whose value does not decode (left out of every "
                     "figure).", len(cluster.snapshot.corrupt))
        families = {
            "desired": GaugeMetricFamily("shoal_service_replicas_desired",
                                         "Replicas the service declares (0 while it is being deleted).",
                                         labels=["service"]),
            "ready": GaugeMetricFamily("shoal_service_replicas_ready",
                                       "The service's replicas running and ready (any generation).",
                                       labels=["service"]),
            "pending": GaugeMetricFamily("shoal_service_replicas_pending",
                                         "The service's replicas no host has taken yet (no room: add hosts).",
                                         labels=["service"]),
            "failed": GaugeMetricFamily("shoal_service_replicas_failed",
                                        "The service's replicas whose container exited or could not start "
                                        "(retried with backoff).", labels=["service"]),
        }
        since = GaugeMetricFamily("shoal_service_pending_since_timestamp_seconds",
                                  "Unix time the service's longest-waiting pending replica was created (no "
                                  "series while none is pending).", labels=["service"])
        for figures in cluster.services:
            for field_name, family in families.items():
                family.add_metric([figures.name], getattr(figures, field_name))
            if figures.pending_since is not None:
                since.add_metric([figures.name], figures.pending_since)
        yield from families.values()
        yield since
        yield from _autoscale_families(cluster.snapshot)
        yield from _hostgroup_families(cluster.snapshot)
        by_state = GaugeMetricFamily("shoal_hosts", "Registered hosts by state.", labels=["state"])
        states = cluster.host_states
        for name in HOST_STATES:
            by_state.add_metric([name], sum(1 for s in states.values() if s == name))
        yield by_state
        ready = GaugeMetricFamily(
            "shoal_host_ready", "1 while the leader reaches the host's agent and trusts its report, else 0.",
            labels=["host_id", "host"])
        for host_id, record in sorted(cluster.snapshot.hosts.items()):
            status = cluster.snapshot.host_statuses.get(host_id)
            ready.add_metric([host_id, record.name], 1 if status is not None and status.ready else 0)
        yield ready
        failing = GaugeMetricFamily(
            "shoal_host_start_failures",
            "Launches on the host that failed in a row for a host-side reason (placement avoids it from "
            "--start-failure-threshold on).", labels=["host_id", "host"])
        for host_id, record in sorted(cluster.snapshot.hosts.items()):
            status = cluster.snapshot.host_statuses.get(host_id)
            failing.add_metric([host_id, record.name], status.start_failures if status is not None else 0)
        yield failing


def _autoscale_families(snapshot: base.Snapshot) -> Iterator[Metric]:
    """kube-state-metrics' HPA figures, for services with an autoscale policy: its bounds, and the last
    recorded decision (what it wanted, when, and whether it could decide at all)."""
    bounds = {"min": GaugeMetricFamily("shoal_autoscale_min_replicas", "The autoscale policy's min.",
                                       labels=["service"]),
              "max": GaugeMetricFamily("shoal_autoscale_max_replicas", "The autoscale policy's max.",
                                       labels=["service"])}
    desired = GaugeMetricFamily("shoal_autoscale_desired_replicas",
                                "What the autoscaler's last recorded decision set (or kept).",
                                labels=["service"])
    decided = GaugeMetricFamily("shoal_autoscale_last_decision_timestamp_seconds",
                                "Unix time of the autoscaler's last recorded decision.", labels=["service"])
    failing = GaugeMetricFamily("shoal_autoscale_decision_failed",
                                "1 when the last recorded decision could not be made (a metric missing: "
                                "the count stays), else 0.", labels=["service"])
    for name, service in sorted(snapshot.services.items()):
        policy = service.spec.autoscale
        if policy is None or service.deleting:
            continue
        bounds["min"].add_metric([name], policy.min_replicas)
        bounds["max"].add_metric([name], policy.max_replicas)
        status = snapshot.autoscale.get(name)
        if status is not None and status.decisions:
            last = status.decisions[-1]
            desired.add_metric([name], last.desired_replicas)
            decided.add_metric([name], last.time)
            failing.add_metric([name], 1 if last.error else 0)
    yield from bounds.values()
    yield from (desired, decided, failing)


def _hostgroup_families(snapshot: base.Snapshot) -> Iterator[Metric]:
    """Per declared host group (docs/elastic-hosts.md): its member hosts, and the elastic loop's last
    recorded desired hosts and pending replicas. A deleted group has no series (its status record stays
    in etcd, so the group list, not the statuses, decides)."""
    hosts = GaugeMetricFamily("shoal_hostgroup_hosts", "Registered hosts carrying the group's label "
                              "(group=NAME).", labels=["group"])
    desired = GaugeMetricFamily("shoal_hostgroup_desired_hosts", "The group's members, plus hosts asked "
                                "for and still expected, minus hosts being drained or released.",
                                labels=["group"])
    pending = GaugeMetricFamily("shoal_hostgroup_pending_replicas", "Replicas pending for lack of room "
                                "that the group's hosts would take.", labels=["group"])
    members: dict[str, int] = {}
    for record in snapshot.hosts.values():
        name = record.label_map.get(LABEL_GROUP)
        if name is not None:
            members[name] = members.get(name, 0) + 1
    for name in sorted(snapshot.hostgroups):
        status = snapshot.hostgroup_statuses.get(name)
        hosts.add_metric([name], members.get(name, 0))
        desired.add_metric([name], status.desired_hosts if status is not None else members.get(name, 0))
        pending.add_metric([name], status.pending_replicas if status is not None else 0)
    yield from (hosts, desired, pending)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


# -- API calls --------------------------------------------------------------------------------------

def _status_name(context: Any, err: BaseException | None) -> str:
    if isinstance(err, asyncio.CancelledError):
        return "CANCELLED"
    try:
        code = context.code()
    except Exception:  # not every context implementation offers code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "OK" if err is None else "UNKNOWN"


class _RpcInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Times every call (streams over their lifetime) by full method name and final status code. Only
    methods the server has are counted (an unknown name gets no handler), so the labels stay bounded.
    (The agent has the same interceptor; the scheduler may not import the agent.)"""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        observe = self.histogram

        def wrap_unary(inner: Callable[..., Any]) -> Callable[..., Any]:
            async def timed(request: Any, context: Any) -> Any:
                started, err = time.perf_counter(), None
                try:
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result
                except BaseException as e:
                    err = e
                    raise
                finally:
                    observe.labels(method, _status_name(context, err)).observe(time.perf_counter() - started)
            return timed

        def wrap_stream(inner: Callable[..., Any]) -> Callable[..., Any]:
            async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
                started, err = time.perf_counter(), None
                try:
                    result = inner(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result  # a handler that writes with context.write()
                except BaseException as e:
                    err = e
                    raise
                finally:
                    observe.labels(method, _status_name(context, err)).observe(time.perf_counter() - started)
            return timed

        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **kw)
        return handler


__all__ = ["HOST_STATES", "TARGET_KINDS", "Published", "PublishedCluster", "SchedulerMetrics",
           "ServiceFigures", "TimedStore", "agent_target", "replica_target"]
