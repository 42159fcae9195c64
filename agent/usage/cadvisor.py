"""The newest usage snapshot rendered as cAdvisor's Prometheus metrics.

Existing alert rules and dashboards are written against cAdvisor, so ``/metrics`` uses its names, types,
units and label conventions: ``container_cpu_usage_seconds_total{cpu="total"}``, memory gauges in bytes,
``container_spec_cpu_quota`` in microseconds per ``container_spec_cpu_period`` (100000, Shoal's only
period), network counters per ``interface`` (loopback excluded), families that cAdvisor only emits for
cpu-limited containers (``container_cpu_cfs_*``, ``container_spec_cpu_*``) likewise only for those, and
labels ``id`` (the container id), ``name``, ``image`` plus every container label as
``container_label_<key with characters outside [a-zA-Z0-9_] replaced by _>``. Every container carries
every ``container_label_*`` name of the snapshot, empty where it has no such label (Prometheus treats an
empty label as absent), again as cAdvisor does. Host figures are ``machine_cpu_cores`` and
``machine_memory_bytes`` plus ``shoal_host_*`` gauges for what cAdvisor has no name for (allocatable,
committed, used).

What can appear: ids, names, image references and labels — all things the user chose to show. The
snapshot holds no environment, command line or mount, so none can leak here.

A scrape renders ``latest()`` only: it never reads a cgroup, so scrapes cost the same however often
they come. Samples carry no explicit timestamp, so Prometheus's staleness handling drops a removed
container's series at the next scrape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.usage.sampler import ContainerSample, Snapshot

LABEL_PREFIX = "container_label_"
BASE_LABELS = ("id", "name", "image")
CPU_PERIOD_US = 100_000  # every Shoal cpu limit uses the kernel's default period
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def label_name(key: str) -> str:
    """``app.kubernetes.io/name`` → ``container_label_app_kubernetes_io_name``."""
    return LABEL_PREFIX + _INVALID_LABEL_CHARS.sub("_", key)


def container_label_names(containers: tuple[ContainerSample, ...]) -> list[str]:
    return sorted({label_name(k) for c in containers for k in c.labels})


def _label_values(container: ContainerSample, names: list[str]) -> list[str]:
    # Two keys may sanitize to one name ("a.b", "a-b"): the first key in sorted order wins, so the
    # result does not depend on dict order.
    by_name: dict[str, str] = {}
    for key in sorted(container.labels):
        by_name.setdefault(label_name(key), container.labels[key])
    return [container.id, container.name, container.image, *(by_name.get(n, "") for n in names)]


class UsageCollector(Collector):
    """A custom collector: pass ``sampler.latest`` (any thread may call it)."""

    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self._latest = latest

    def describe(self) -> list[Metric]:
        # Registering must not call collect() (there may be no snapshot yet).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._latest()
        if snap is None:
            return
        yield from render(snap)


def render(snap: Snapshot) -> list[Metric]:
    """Every family for one snapshot, in cAdvisor's names and units."""
    names = container_label_names(snap.containers)
    labels = [*BASE_LABELS, *names]

    def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=[*labels, *extra])

    def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=[*labels, *extra])

    last_seen = gauge("container_last_seen", "Last time a container was seen by the exporter")
    start_time = gauge("container_start_time_seconds",
                       "Start time of the container since unix epoch in seconds.")
    cpu_usage = counter("container_cpu_usage_seconds", "Cumulative cpu time consumed in seconds.", ("cpu",))
    cfs_periods = counter("container_cpu_cfs_periods", "Number of elapsed enforcement period intervals.")
    cfs_throttled_periods = counter("container_cpu_cfs_throttled_periods",
                                    "Number of throttled period intervals.")
    cfs_throttled = counter("container_cpu_cfs_throttled_seconds",
                            "Total time duration the container has been throttled.")
    mem_usage = gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed")
    mem_ws = gauge("container_memory_working_set_bytes", "Current working set in bytes.")
    mem_rss = gauge("container_memory_rss", "Size of RSS in bytes.")
    oom = counter("container_oom_events", "Count of out of memory events observed for the container")
    mem_limit = gauge("container_spec_memory_limit_bytes", "Memory limit for the container.")
    cpu_quota = gauge("container_spec_cpu_quota", "CPU quota of the container.")
    cpu_period = gauge("container_spec_cpu_period", "CPU period of the container.")
    processes = gauge("container_processes", "Number of processes running inside the container.")
    fs_usage = gauge("container_fs_usage_bytes",
                     "Number of bytes that are consumed by the container on this filesystem.")
    rx_bytes = counter("container_network_receive_bytes", "Cumulative count of bytes received",
                       ("interface",))
    tx_bytes = counter("container_network_transmit_bytes", "Cumulative count of bytes transmitted",
                       ("interface",))
    rx_packets = counter("container_network_receive_packets", "Cumulative count of packets received",
                         ("interface",))
    tx_packets = counter("container_network_transmit_packets", "Cumulative count of packets transmitted",
                         ("interface",))

    for c in snap.containers:
        values = _label_values(c, names)
        last_seen.add_metric(values, snap.time)
        start_time.add_metric(values, c.started_at)
        cpu_usage.add_metric([*values, "total"], c.cpu_seconds)
        if c.cpu_limit_millis:
            cfs_periods.add_metric(values, c.cpu_periods)
            cfs_throttled_periods.add_metric(values, c.cpu_throttled_periods)
            cfs_throttled.add_metric(values, c.cpu_throttled_seconds)
            cpu_quota.add_metric(values, c.cpu_limit_millis * CPU_PERIOD_US / 1000)
            cpu_period.add_metric(values, CPU_PERIOD_US)
        mem_usage.add_metric(values, c.memory_usage_bytes)
        mem_ws.add_metric(values, c.memory_working_set_bytes)
        mem_rss.add_metric(values, c.memory_rss_bytes)
        oom.add_metric(values, c.oom_events)
        mem_limit.add_metric(values, c.memory_limit_bytes)
        processes.add_metric(values, c.pids)
        fs_usage.add_metric(values, c.writable_layer_bytes)
        for i in c.interfaces:
            rx_bytes.add_metric([*values, i.name], i.rx_bytes)
            tx_bytes.add_metric([*values, i.name], i.tx_bytes)
            rx_packets.add_metric([*values, i.name], i.rx_packets)
            tx_packets.add_metric([*values, i.name], i.tx_packets)

    h = snap.host
    families: list[Metric] = [
        last_seen, start_time, cpu_usage, cfs_periods, cfs_throttled_periods, cfs_throttled,
        mem_usage, mem_ws, mem_rss, oom, mem_limit, cpu_quota, cpu_period, processes, fs_usage,
        rx_bytes, tx_bytes, rx_packets, tx_packets,
        GaugeMetricFamily("machine_cpu_cores", "Number of logical CPU cores.", value=h.cpu_cores),
        GaugeMetricFamily("machine_memory_bytes", "Amount of memory installed on the machine.",
                          value=h.memory_total_bytes),
        GaugeMetricFamily("shoal_host_memory_allocatable_bytes",
                          "Memory containers may be given: total minus the reserve for the system.",
                          value=h.memory_allocatable_bytes),
        GaugeMetricFamily("shoal_host_memory_used_bytes", "Host memory in use (MemTotal - MemAvailable).",
                          value=h.memory_used_bytes),
        GaugeMetricFamily("shoal_host_memory_committed_bytes", "Sum of the containers' memory limits.",
                          value=h.memory_committed_bytes),
        GaugeMetricFamily("shoal_host_cpu_committed_cores", "Sum of the containers' cpu limits, in cores.",
                          value=h.cpu_committed_millis / 1000),
        GaugeMetricFamily("shoal_host_cpu_used_cores", "Host cpus busy over the last sampling interval.",
                          value=h.cpu_used_cores),
    ]
    counts = GaugeMetricFamily("shoal_host_containers", "Containers on this host.", labels=["state"])
    counts.add_metric(["running"], h.containers_running)
    counts.add_metric(["all"], h.containers)
    families.append(counts)
    return families
