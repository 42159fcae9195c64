"""Small constructors for the usage tests: a fake /proc tree, a cgroup whose counters the test sets,
and SampleTargets over them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from agent.cgroups.manager import CgroupStats
from agent.errors import NotFound
from agent.usage.host import HostIdentity
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
