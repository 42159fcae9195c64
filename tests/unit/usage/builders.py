"""Small constructors for the usage tests: a fake /proc tree, a cgroup whose counters the test sets,
and SampleTargets over them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from agent.cgroups.manager import CgroupStats
from agent.errors import NotFound
from agent.usage.host import HostIdentity
from agent.usage.sample import InterfaceCounters
from agent.usage.sampler import ContainerSample, HostSample, Snapshot
from agent.usage.targets import SampleTarget

NET_DEV_HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
    "carrier compressed\n"
)


def net_dev_line(name: str, *, rx_bytes: int, rx_packets: int, tx_bytes: int, tx_packets: int) -> str:
    return (f"{name:>6}: {rx_bytes} {rx_packets} 0 0 0 0 0 0 "
            f"{tx_bytes} {tx_packets} 0 0 0 0 0 0\n")


def stats(**overrides: int | None) -> CgroupStats:
    base = CgroupStats(cpu_usage_ns=0, cpu_throttled_ns=0, cpu_periods=0, cpu_throttled_periods=0,
                       memory_usage_bytes=0, memory_working_set_bytes=0, memory_rss_bytes=0,
                       memory_limit_bytes=None, oom_kill_count=0, pids_current=1)
    return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class FakeCgroup:
    """Only what the sampler uses: ``stats()``, returning what the test last set, or raising."""

    current: CgroupStats
    gone: bool = False
    name: str = "test/fake"

    def stats(self) -> CgroupStats:
        if self.gone:
            raise NotFound("cgroup or interface file missing: test")
        return self.current


class FakeProc:
    """A directory laid out like the bits of /proc the sampler reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.set_meminfo(total_kib=4 * 1024 * 1024, available_kib=3 * 1024 * 1024)
        self.set_stat(busy=0, idle=0)

    def set_meminfo(self, *, total_kib: int, available_kib: int) -> None:
        (self.root / "meminfo").write_text(
            f"MemTotal:       {total_kib} kB\nMemFree:        1 kB\nMemAvailable:   {available_kib} kB\n"
        )

    def set_stat(self, *, busy: int, idle: int) -> None:
        # user nice system idle iowait irq softirq steal guest guest_nice
        (self.root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")

    def set_net_dev(self, pid: int, text: str) -> None:
        d = self.root / str(pid) / "net"
        d.mkdir(parents=True, exist_ok=True)
        (d / "dev").write_text(text)


def identity(**overrides: object) -> HostIdentity:
    base = HostIdentity(host_id="0" * 32, hostname="h1", agent_version="0.0.test",
                        labels={"zone": "a"}, started_at=1000.0)
    return replace(base, **overrides)  # type: ignore[arg-type]


def target(cgroup: FakeCgroup, *, upper: Path, **overrides: object) -> SampleTarget:
    base = SampleTarget(id="c1", name="one", image="busybox:latest", labels={"app": "web"}, pid=4242,
                        cgroup=cgroup, upper_dir=upper, started_at=0.0, memory_limit_bytes=None,
                        cpu_limit_millis=None, own_network=True)
    return replace(base, **overrides)  # type: ignore[arg-type]


def container(**overrides: object) -> ContainerSample:
    base = ContainerSample(
        id="c0ffee", name="busy", image="busybox:1.36", labels={"app": "web", "team.name/x-y": "infra"},
        started_at=1_700_000_000.0, cpu_seconds=12.5, cpu_cores=0.5, cpu_fraction_of_limit=1.0,
        cpu_limit_millis=500, cpu_throttled_seconds=3.25, cpu_periods=100, cpu_throttled_periods=40,
        memory_usage_bytes=100, memory_working_set_bytes=80, memory_rss_bytes=70, memory_limit_bytes=1 << 30,
        oom_events=1, pids=3, network_rx_bytes=1010, network_tx_bytes=2020, network_rx_packets=11,
        network_tx_packets=22,
        interfaces=(InterfaceCounters("eth0", 1000, 10, 2000, 20), InterfaceCounters("eth1", 10, 1, 20, 2)),
        writable_layer_bytes=4096)
    return replace(base, **overrides)  # type: ignore[arg-type]


def snapshot(*containers: ContainerSample) -> Snapshot:
    host = HostSample(host_id="h" * 32, hostname="h1", agent_version="0.1.0", labels={}, started_at=1.0,
                      cpu_cores=2, memory_total_bytes=8 << 30, memory_allocatable_bytes=7 << 30,
                      memory_used_bytes=3 << 30, memory_committed_bytes=1 << 30, cpu_committed_millis=500,
                      containers=2, containers_running=1, cpu_used_cores=0.75)
    return Snapshot(time=1_700_000_100.0, sequence=1, host=host, containers=containers, sample_seconds=0.01)


def exposed_names() -> set[str]:
    """Every sample name a fully populated agent exposes on /metrics."""
    from prometheus_client import generate_latest

    from agent.usage.cadvisor import UsageCollector
    from agent.usage.metrics import AgentMetrics

    metrics = AgentMetrics(version="0", host_id="h")
    metrics.record_rpc(method="/m", code="OK", seconds=0.1)
    snap = snapshot(container())
    metrics.registry.register(UsageCollector(lambda: snap))
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
