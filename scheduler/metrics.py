"""What the scheduler tells Prometheus: ``/metrics`` and ``http_sd`` discovery.

``SchedulerMetrics`` keeps a cache of the cluster (services, replicas, hosts, host statuses) refreshed
from etcd every ``REFRESH`` seconds by a task of the scheduler's loop, so a scrape — served from another
thread (``scheduler.httpd``) — never touches etcd or the loop, and every instance, leader or not, serves
the same figures. From it:

* per service: ``shoal_service_replicas_desired``, ``_ready``, ``_pending`` (the expansion platform adds
  hosts on pending), ``_failed``; per host state: ``shoal_hosts``; whether this instance leads;
* histograms of the leader's reconcile passes (``shoal_scheduler_reconcile_seconds``), of the time from a
  replica's creation to its placement (``shoal_scheduler_placement_latency_seconds``), of etcd snapshot
  reads (``shoal_scheduler_etcd_request_seconds``), and of API calls by method and code;
* ``http_sd``: one target group per agent with a metrics address, and one per replica whose service
  declares a ``metrics_port`` (its host's address and the port published for it), labelled so relabel
  rules can keep host labels (``__meta_shoal_host_label_<key>``), the service and the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from proto.scheduler.v1 import scheduler_pb2 as spb
from scheduler import api, reconcile
from scheduler.model import ReplicaPhase
from scheduler.store import base

log = logging.getLogger(__name__)

REFRESH = 2.0


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._snapshot: base.Snapshot | None = None
        self._leading: Callable[[], bool] = lambda: False
        self._placed_seen: set[str] = set()
        self.reconcile = Histogram("shoal_scheduler_reconcile_seconds",
                                   "Duration of the leader's reconcile passes", registry=self.registry,
                                   buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.placement = Histogram("shoal_scheduler_placement_latency_seconds",
                                   "Time from a replica's creation to its placement on a host",
                                   registry=self.registry,
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.etcd = Histogram("shoal_scheduler_etcd_request_seconds", "Duration of etcd snapshot reads",
                              registry=self.registry)
        self.rpcs = Counter("shoal_scheduler_api_requests", "API calls by method and code",
                            ["method", "code"], registry=self.registry)
        self.registry.register(_Collector(self))

    # -- feeding ------------------------------------------------------------------------------------

    def record_pass(self, seconds: float, plan: reconcile.Plan, world: reconcile.World) -> None:
        self.reconcile.observe(seconds)
        for write in plan.writes:
            if not isinstance(write, reconcile.WriteReplica):
                continue
            replica = write.replica
            if replica.host is not None and replica.id not in self._placed_seen and replica.created_at:
                before = world.replicas.get(replica.id)
                if before is None or before.host is None:
                    self._placed_seen.add(replica.id)
                    self.placement.observe(max(0.0, world.now - replica.created_at))
        if len(self._placed_seen) > 100_000:
            self._placed_seen.clear()

    def watch(self, *, store: base.Store, election: Any, leader: Callable[[], object | None]) -> None:
        """Start refreshing the cache from ``store`` (a task of the running loop)."""
        self._leading = lambda: leader() is not None
        asyncio.get_running_loop().create_task(self._refresh(store), name="metrics-refresh")

    async def _refresh(self, store: base.Store) -> None:
        while True:
            started = time.perf_counter()
            try:
                snap = await store.snapshot()
            except Exception as err:  # metrics must never take the scheduler down
                log.debug("metrics refresh failed: %s", err)
            else:
                self.etcd.observe(time.perf_counter() - started)
                with self._lock:
                    self._snapshot = snap
            await asyncio.sleep(REFRESH)

    def snapshot(self) -> base.Snapshot | None:
        with self._lock:
            return self._snapshot

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Interceptor(self.rpcs)

    # -- discovery ----------------------------------------------------------------------------------

    def http_sd(self) -> list[dict[str, Any]]:
        snap = self.snapshot()
        if snap is None:
            return []
        groups: list[dict[str, Any]] = []
        for host_id, record in sorted(snap.hosts.items()):
            if not record.metrics_address:
                continue
            labels = {"__meta_shoal_host_id": host_id, "__meta_shoal_host_name": record.name,
                      "job": "shoal-agent"}
            labels.update({f"__meta_shoal_host_label_{_label_name(k)}": v for k, v in record.labels})
            groups.append({"targets": [record.metrics_address], "labels": labels})
        for _, replica in sorted(snap.replicas.items()):
            service = snap.services.get(replica.service)
            if service is None or not service.spec.metrics_port or replica.phase is not ReplicaPhase.RUNNING:
                continue
            wanted = service.spec.metrics_port
            port = next((p.host_port for p in replica.ports if p.container_port == wanted), 0)
            address = api.host_address(snap.hosts.get(replica.host)) if replica.host else ""
            if not port or not address:
                continue
            groups.append({"targets": [f"{address}:{port}"], "labels": {
                "job": f"shoal-service-{replica.service}", "__meta_shoal_service": replica.service,
                "__meta_shoal_replica": replica.id, "__meta_shoal_host_id": replica.host or ""}})
        return groups


def _label_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


class _Collector:
    def __init__(self, owner: SchedulerMetrics) -> None:
        self.owner = owner

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.owner.snapshot()
        leader = GaugeMetricFamily("shoal_scheduler_leader", "1 while this instance runs the control loops")
        leader.add_metric([], 1.0 if self.owner._leading() else 0.0)
        yield leader
        if snap is None:
            return
        desired = GaugeMetricFamily("shoal_service_replicas_desired", "Replicas a service declares",
                                    labels=["service"])
        ready = GaugeMetricFamily("shoal_service_replicas_ready", "Replicas running and ready",
                                  labels=["service"])
        pending = GaugeMetricFamily("shoal_service_replicas_pending",
                                    "Replicas no host has room for (add hosts)", labels=["service"])
        failed = GaugeMetricFamily("shoal_service_replicas_failed", "Replicas that exited or could not start",
                                   labels=["service"])
        by_service: dict[str, list[Any]] = {}
        for replica in snap.replicas.values():
            by_service.setdefault(replica.service, []).append(replica)
        for name, service in sorted(snap.services.items()):
            status = api.service_status(service, by_service.get(name, []))
            desired.add_metric([name], service.spec.replicas)
            ready.add_metric([name], status.ready)
            pending.add_metric([name], status.pending)
            failed.add_metric([name], status.failed)
        yield from (desired, ready, pending, failed)
        hosts = GaugeMetricFamily("shoal_hosts", "Hosts by state", labels=["state"])
        counts: dict[str, int] = {}
        for host_id, record in snap.hosts.items():
            here = sum(1 for r in api.live(snap.replicas.values()) if r.host == host_id)
            code = api.host_state(record, snap.host_statuses.get(host_id), here)
            state_name = str(spb.HostState.Name(code)).removeprefix("HOST_STATE_").lower()
            counts[state_name] = counts.get(state_name, 0) + 1
        for state in ("ready", "not_ready", "cordoned", "draining", "drained"):
            hosts.add_metric([state], counts.get(state, 0))
        yield hosts


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        counter = self.counter

        async def counted(request: Any, context: Any) -> Any:
            try:
                reply = await inner(request, context)
            except BaseException:
                code = context.code() if hasattr(context, "code") else None
                counter.labels(method, getattr(code, "name", "UNKNOWN") if code else "UNKNOWN").inc()
                raise
            counter.labels(method, "OK").inc()
            return reply

        with contextlib.suppress(Exception):
            return grpc.unary_unary_rpc_method_handler(
                counted, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


__all__ = ["SchedulerMetrics"]
