"""The usage sampler: one snapshot of the host and every running container per interval, fanned out.

``UsageSampler.run()`` is a task of the daemon. Every ``interval`` it asks the runtime for its running
containers (``targets()``, on the event loop, where the runtime's state lives), then reads the kernel's
counters in a worker thread of its own — a dedicated thread, so a busy default executor cannot delay
sampling and sampling never blocks the event loop. The result is an immutable ``Snapshot``; ``latest()``
returns it (the ``/metrics`` scrape and ``GetHost`` read it and never touch cgroups), and every
``subscribe()``r gets it through a one-slot "latest wins" mailbox: publishing replaces whatever the
subscriber has not taken yet, so a slow ``WatchUsage`` client costs one slot, never a backlog, and
never delays the sampler or other clients.

Rates (cores used, host cpu) need two readings: the sampler keeps the previous reading of each
container, keyed by id *and* pid so a restarted container starts afresh. A container's first sample
reports its lifetime average (cpu seconds since it started). A container whose cgroup vanished between
``targets()`` and the read (it just exited) is left out of that snapshot.

Storage limits enforced by measurement (``SampleTarget.storage_limit_bytes``) are checked here, where
the layers are measured: each limited layer is re-measured every interval (from scratch for each new
run), and a container found over its limit — or whose layer cannot be walked — is handed to ``evict``
on the event loop with the message to record, once per run. The runtime does the killing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ShoalError
from agent.rootfs.storage_limit import over_limit
from agent.usage import host as hosts
from agent.usage import sample
from agent.usage.layer_size import WritableLayerSizer
from agent.usage.targets import SampleTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerSample:
    """One container at one moment; mirrors ``ContainerStats`` in the API. 0 means unlimited for
    limits; ``writable_layer_bytes`` is the last completed measurement (0 before the first)."""

    id: str
    name: str
    image: str
    labels: dict[str, str] = field(hash=False)
    started_at: float
    cpu_seconds: float
    cpu_cores: float
    cpu_fraction_of_limit: float
    cpu_limit_millis: int
    cpu_throttled_seconds: float
    cpu_periods: int
    cpu_throttled_periods: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_rss_bytes: int
    memory_limit_bytes: int
    oom_events: int
    pids: int
    network_rx_bytes: int
    network_tx_bytes: int
    network_rx_packets: int
    network_tx_packets: int
    interfaces: tuple[sample.InterfaceCounters, ...]
    writable_layer_bytes: int


@dataclass(frozen=True)
class HostSample:
    """The host at one moment; mirrors ``HostInfo`` in the API. Committed figures are the sums of the
    *requests* of every container holding a reservation (created, running, restarting); the limit sums
    are what those containers may use at most."""

    host_id: str
    hostname: str
    agent_version: str
    labels: dict[str, str] = field(hash=False)
    started_at: float
    cpu_cores: int
    memory_total_bytes: int
    memory_allocatable_bytes: int
    memory_used_bytes: int
    memory_committed_bytes: int
    cpu_committed_millis: int
    containers: int
    containers_running: int
    cpu_used_cores: float
    cpu_allocatable_millis: int = 0
    memory_limits_bytes: int = 0
    cpu_limits_millis: int = 0
    disk_total_bytes: int = 0
    disk_free_bytes: int = 0
    boot_id: str = ""
    os: str = "linux"
    architecture: str = ""
    conditions: tuple[hosts.Condition, ...] = ()
    storage_limit_enforcement: str = ""  # "project-quota" or "measured" (agent.rootfs.storage_limit)
    storage_limit_detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    time: float  # unix time the sample was taken
    sequence: int  # 1, 2, ...: a watcher that sees a gap knows it was given the newest, not all
    host: HostSample
    containers: tuple[ContainerSample, ...]
    sample_seconds: float  # how long taking it took

    def select(self, labels: Mapping[str, str] | None) -> Snapshot:
        """This snapshot with only the containers carrying every one of ``labels``."""
        if not labels:
            return self
        wanted = labels.items()
        return Snapshot(time=self.time, sequence=self.sequence, host=self.host,
                        containers=tuple(c for c in self.containers if wanted <= c.labels.items()),
                        sample_seconds=self.sample_seconds)


@dataclass(frozen=True)
class RuntimeTotals:
    """What the runtime has promised, running or not: the host's committed figures (requests) and the
    limits behind them, plus conditions only the runtime knows (``(type, message, since)``)."""

    containers: int
    memory_committed_bytes: int
    cpu_committed_millis: int
    memory_limits_bytes: int = 0
    cpu_limits_millis: int = 0
    conditions: tuple[tuple[str, str, float], ...] = ()


def totals_of(targets: Sequence[SampleTarget]) -> RuntimeTotals:
    """Totals counting only the running containers, for a runtime that offers nothing better."""
    memory = sum(t.memory_limit_bytes or 0 for t in targets)
    cpu = sum(t.cpu_limit_millis or 0 for t in targets)
    return RuntimeTotals(containers=len(targets), memory_committed_bytes=memory, cpu_committed_millis=cpu,
                         memory_limits_bytes=memory, cpu_limits_millis=cpu)


class Mailbox:
    """A one-slot mailbox where the newest item wins. ``put`` never blocks and never queues; ``dropped``
    counts items replaced before they were taken. Loop-thread only."""

    def __init__(self) -> None:
        self._item: Snapshot | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: Snapshot) -> None:
        if self._item is not None:
            self.dropped += 1
        self._item = item
        self._ready.set()

    async def get(self) -> Snapshot:
        while self._item is None:
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


@dataclass
class _Previous:
    cpu_seconds: float
    at: float  # sampler clock


class UsageSampler:
    def __init__(
        self,
        *,
        targets: Callable[[], Sequence[SampleTarget]],
        identity: hosts.HostIdentity,
        interval: float = 1.0,
        memory_reserve_bytes: int = 0,
        cpu_reserve_millis: int = 0,
        disk_path: Path | None = None,
        pressure: hosts.PressureThresholds | None = None,
        totals: Callable[[], RuntimeTotals] | None = None,
        layer_sizer: WritableLayerSizer | None = None,
        observe_duration: Callable[[float], None] | None = None,
        evict: Callable[[SampleTarget, str], None] | None = None,
        storage_limit: tuple[str, str] = ("", ""),
        proc: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"sampling interval must be positive, not {interval}")
        self.interval = interval
        self._targets = targets
        self._identity = identity
        self._reserve = max(0, memory_reserve_bytes)
        self._cpu_reserve = max(0, cpu_reserve_millis)
        self._disk_path = disk_path
        self._pressure = pressure or hosts.PressureThresholds()
        self._conditions = hosts.ConditionTracker()
        self._totals = totals
        self._sizer = layer_sizer if layer_sizer is not None else WritableLayerSizer()
        self._observe = observe_duration
        self._evict = evict
        self._storage_limit = storage_limit  # (enforcement, why), reported in every host sample
        self._runs: dict[str, int] = {}  # limited container id → the pid its layer was measured for
        self._evicted: set[tuple[str, int]] = set()  # (id, pid) already handed to evict
        self._proc = proc
        self._clock = clock
        self._wall = wall
        self._cores, self._memory_total = hosts.read_host_capacity(meminfo=proc / "meminfo")
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._previous: dict[tuple[str, int], _Previous] = {}
        self._previous_host: tuple[sample.HostCpuTimes, float] | None = None
        self._latest: Snapshot | None = None
        self._sequence = 0
        self._subscribers: set[Mailbox] = set()
        # One thread: readings are serial by design (the previous-reading maps are not locked).
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                               thread_name_prefix="usage-sampler")

    # -- reading ---------------------------------------------------------------------------------

    def latest(self) -> Snapshot | None:
        """The newest snapshot, or ``None`` before the first. Safe from any thread."""
        return self._latest

    def host(self) -> HostSample:
        """The newest host sample; before the first snapshot, identity and capacity with zero use."""
        snap = self._latest
        if snap is not None:
            return snap.host
        return self._host_sample(used_bytes=0, cpu_used=0.0, running=0,
                                 totals=RuntimeTotals(containers=0, memory_committed_bytes=0,
                                                      cpu_committed_millis=0),
                                 disk=hosts.DiskSpace(), conditions=())

    async def subscribe(self, labels: Mapping[str, str] | None = None, *,
                        every: float = 0.0) -> AsyncIterator[Snapshot]:
        """Snapshots as they are taken, starting with the current one; only containers carrying all
        ``labels``; with ``every``, at most one per ``every`` seconds of sample time (within half an
        interval, so that sampling's jitter does not skip a whole interval). A consumer slower than the
        interval skips to the newest (watch ``sequence``)."""
        if every < 0:
            raise ValueError(f"a usage subscription's interval cannot be negative, got {every}")
        box = Mailbox()
        self._subscribers.add(box)
        sent: float | None = None
        try:
            if self._latest is not None:
                box.put(self._latest)
            while True:
                snap = await box.get()
                if sent is not None and snap.time < sent + every - self.interval / 2:
                    continue
                sent = snap.time
                yield snap.select(labels)
        finally:
            self._subscribers.discard(box)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """Stop the worker thread; ``run()`` does this itself when cancelled. Only for callers that
        used ``sample_once()`` without ``run()``."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sizer.close()

    # -- sampling --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every ``interval`` until cancelled. A failed sample is logged and the next one is
        tried; a sample that overruns skips the ticks it missed rather than bursting to catch up."""
        try:
            next_at = self._clock()
            while True:
                try:
                    await self.sample_once()
                except ShoalError as err:
                    log.warning("usage sample failed: %s", err)
                except Exception:
                    log.exception("usage sample failed")
                next_at += self.interval
                now = self._clock()
                while next_at <= now:
                    next_at += self.interval
                await asyncio.sleep(next_at - now)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def sample_once(self) -> Snapshot:
        """Take one snapshot now, make it ``latest()`` and hand it to every subscriber."""
        targets = tuple(self._targets())
        totals = self._totals() if self._totals is not None else totals_of(targets)
        loop = asyncio.get_running_loop()
        snap, evictions = await loop.run_in_executor(self._executor, self._take, targets, totals)
        self._latest = snap
        for target, message in evictions:
            if self._evict is not None and (target.id, target.pid) not in self._evicted:
                self._evicted.add((target.id, target.pid))
                self._evict(target, message)
        for box in tuple(self._subscribers):
            box.put(snap)
        if self._observe is not None:
            self._observe(snap.sample_seconds)
        return snap

    def _take(self, targets: tuple[SampleTarget, ...],
              totals: RuntimeTotals) -> tuple[Snapshot, list[tuple[SampleTarget, str]]]:
        started = self._clock()
        wall = self._wall()
        limited = {_key(t): t for t in targets if t.storage_limit_bytes is not None}
        for layer, target in limited.items():
            if self._runs.get(layer) != target.pid:
                self._sizer.invalidate(layer)  # a new run: decide only on what is measured from now
                self._runs[layer] = target.pid
        for layer in [k for k in self._runs if k not in limited]:
            del self._runs[layer]
        self._sizer.advance({_key(t): t.upper_dir for t in targets}, limited=limited.keys())
        evictions = [(t, message) for layer, t in limited.items()
                     if (message := self._over_limit(layer, t)) is not None]
        containers = []
        for target in targets:
            try:
                containers.append(self._container(target, wall=wall))
            except ShoalError as err:
                # Usually the container exited after targets() listed it; it is gone next time.
                log.debug("skipping container %s in this sample: %s", target.id, err)
        live = {(t.id, t.pid) for t in targets}
        for key in [k for k in self._previous if k not in live]:
            del self._previous[key]
        self._evicted &= live
        host = self._host(running=len(containers), totals=totals)
        self._sequence += 1
        return Snapshot(time=wall, sequence=self._sequence, host=host, containers=tuple(containers),
                        sample_seconds=self._clock() - started), evictions

    def _over_limit(self, key: str, target: SampleTarget) -> str | None:
        why = self._sizer.unmeasurable(key)
        if why:
            return f"writable layer cannot be measured against its storage limit: {why}"
        used = self._sizer.measured(key)
        return None if used is None else over_limit(used, target.storage_limit_bytes)

    def _container(self, target: SampleTarget, *, wall: float) -> ContainerSample:
        stats = target.cgroup.stats()
        at = self._clock()
        cpu_seconds = stats.cpu_usage_ns / 1e9
        key = (target.id, target.pid)
        prev = self._previous.get(key)
        if prev is None:
            cores = sample.cores_used(prev_seconds=0.0, now_seconds=cpu_seconds,
                                      wall_seconds=wall - target.started_at)
        else:
            cores = sample.cores_used(prev_seconds=prev.cpu_seconds, now_seconds=cpu_seconds,
                                      wall_seconds=at - prev.at)
        self._previous[key] = _Previous(cpu_seconds=cpu_seconds, at=at)
        # --network host: /proc/PID/net/dev would be the host's own counters, not the container's.
        interfaces = sample.read_network(target.pid, proc=self._proc) if target.own_network else ()
        net = sample.NetworkTotals.of(interfaces)
        memory_limit = stats.memory_limit_bytes or target.memory_limit_bytes or 0
        return ContainerSample(
            id=target.id, name=target.name, image=target.image, labels=dict(target.labels),
            started_at=target.started_at,
            cpu_seconds=cpu_seconds, cpu_cores=cores,
            cpu_fraction_of_limit=sample.fraction_of_limit(cores, target.cpu_limit_millis),
            cpu_limit_millis=target.cpu_limit_millis or 0,
            cpu_throttled_seconds=stats.cpu_throttled_ns / 1e9,
            cpu_periods=stats.cpu_periods, cpu_throttled_periods=stats.cpu_throttled_periods,
            memory_usage_bytes=stats.memory_usage_bytes,
            memory_working_set_bytes=stats.memory_working_set_bytes,
            memory_rss_bytes=stats.memory_rss_bytes, memory_limit_bytes=memory_limit,
            oom_events=stats.oom_kill_count, pids=stats.pids_current,
            network_rx_bytes=net.rx_bytes, network_tx_bytes=net.tx_bytes,
            network_rx_packets=net.rx_packets, network_tx_packets=net.tx_packets,
            interfaces=interfaces,
            writable_layer_bytes=self._sizer.size(_key(target)) or 0,
        )

    def _host(self, *, running: int, totals: RuntimeTotals) -> HostSample:
        meminfo = hosts.read_meminfo(self._proc / "meminfo")
        available = meminfo.get("MemAvailable", 0)
        used = meminfo.get("MemTotal", 0) - available
        disk = hosts.DiskSpace()
        if self._disk_path is not None:
            try:
                disk = hosts.disk_space(self._disk_path)
            except OSError as err:
                log.warning("cannot measure the disk of %s: %s", self._disk_path, err)
        active = hosts.pressure(memory_available=available, disk=disk, thresholds=self._pressure)
        active += [(kind, message) for kind, message, _ in totals.conditions]
        conditions = self._conditions.update(active, now=self._wall(),
                                             since={kind: since for kind, _, since in totals.conditions})
        with open(self._proc / "stat", encoding="ascii") as f:
            times = sample.parse_proc_stat(f.read())
        at = self._clock()
        cpu_used = 0.0
        if self._previous_host is not None:
            prev, prev_at = self._previous_host
            cpu_used = sample.cores_used(prev_seconds=prev.busy_ticks / self._clk_tck,
                                         now_seconds=times.busy_ticks / self._clk_tck,
                                         wall_seconds=at - prev_at)
        self._previous_host = (times, at)
        return self._host_sample(used_bytes=used, cpu_used=cpu_used, running=running, totals=totals,
                                 disk=disk, conditions=conditions)

    def _host_sample(self, *, used_bytes: int, cpu_used: float, running: int, totals: RuntimeTotals,
                     disk: hosts.DiskSpace, conditions: tuple[hosts.Condition, ...]) -> HostSample:
        ident = self._identity
        return HostSample(
            host_id=ident.host_id, hostname=ident.hostname, agent_version=ident.agent_version,
            labels=dict(ident.labels), started_at=ident.started_at,
            cpu_cores=self._cores, memory_total_bytes=self._memory_total,
            memory_allocatable_bytes=max(0, self._memory_total - self._reserve),
            memory_used_bytes=used_bytes, memory_committed_bytes=totals.memory_committed_bytes,
            cpu_committed_millis=totals.cpu_committed_millis,
            containers=max(totals.containers, running), containers_running=running,
            cpu_used_cores=cpu_used, cpu_allocatable_millis=max(0, self._cores * 1000 - self._cpu_reserve),
            memory_limits_bytes=totals.memory_limits_bytes, cpu_limits_millis=totals.cpu_limits_millis,
            disk_total_bytes=disk.total, disk_free_bytes=disk.free, boot_id=ident.boot_id, os=ident.os,
            architecture=ident.architecture, conditions=conditions,
            storage_limit_enforcement=self._storage_limit[0], storage_limit_detail=self._storage_limit[1],
        )


def _key(target: SampleTarget) -> str:
    # By id alone: a restarted container keeps its writable layer (and its measurement).
    return target.id
