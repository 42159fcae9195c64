"""Reading the kernel's usage counters and turning two readings into rates.

Pure parsers and arithmetic plus a few one-file readers, so the sampler's numbers can be checked in unit
tests against known file contents:

* network counters from ``/proc/PID/net/dev``, which shows the interfaces of *that pid's* network
  namespace to any reader, so no ``setns`` is needed. Loopback is left out (cAdvisor does the same):
  traffic a container sends itself is not network use. Interfaces are kept separate so ``/metrics`` can
  label them like cAdvisor (``interface``); the API carries the sums.
* host cpu time from the first line of ``/proc/stat`` (busy = all but idle and iowait).
* cores used over an interval (cpu-seconds delta / wall delta) and that as a fraction of a cpu limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "lo"


@dataclass(frozen=True)
class InterfaceCounters:
    """One interface's cumulative counters, as the kernel keeps them since the interface appeared."""

    name: str
    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


@dataclass(frozen=True)
class NetworkTotals:
    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0

    @classmethod
    def of(cls, interfaces: tuple[InterfaceCounters, ...]) -> NetworkTotals:
        return cls(rx_bytes=sum(i.rx_bytes for i in interfaces),
                   rx_packets=sum(i.rx_packets for i in interfaces),
                   tx_bytes=sum(i.tx_bytes for i in interfaces),
                   tx_packets=sum(i.tx_packets for i in interfaces))


def parse_net_dev(text: str) -> tuple[InterfaceCounters, ...]:
    """Parse ``/proc/net/dev`` (two header lines, then ``name: 8 rx fields, 8 tx fields``), loopback left out,
    sorted by name. Lines that do not parse are skipped rather than failing the whole sample."""
    out: list[InterfaceCounters] = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if not sep or name == LOOPBACK or len(fields) < 16:
            continue
        try:
            out.append(InterfaceCounters(name=name, rx_bytes=int(fields[0]), rx_packets=int(fields[1]),
                                         tx_bytes=int(fields[8]), tx_packets=int(fields[9])))
        except ValueError:
            continue
    return tuple(sorted(out, key=lambda i: i.name))


def read_network(pid: int, *, proc: Path = Path("/proc")) -> tuple[InterfaceCounters, ...]:
    """The non-loopback interfaces of ``pid``'s network namespace; ``()`` if the pid is gone."""
    try:
        # os.read, not open(): read for every container every second (see RealCgroupFs.read_text).
        fd = os.open(f"{proc}/{pid}/net/dev", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return ()
    try:
        chunks = []
        while data := os.read(fd, 65536):
            chunks.append(data)
    except ProcessLookupError:
        return ()
    finally:
        os.close(fd)
    return parse_net_dev(b"".join(chunks).decode("ascii", errors="replace"))


@dataclass(frozen=True)
class HostCpuTimes:
    """Cumulative host cpu time in clock ticks (``USER_HZ``), summed over all cpus."""

    busy_ticks: int
    total_ticks: int


def parse_proc_stat(text: str) -> HostCpuTimes:
    """The aggregate ``cpu`` line of ``/proc/stat``: user nice system idle iowait irq softirq steal
    (guest time is already inside user). Idle and iowait are not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:9]]
            values += [0] * (8 - len(values))
            total = sum(values)
            return HostCpuTimes(busy_ticks=total - values[3] - values[4], total_ticks=total)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cores_used(*, prev_seconds: float, now_seconds: float, wall_seconds: float) -> float:
    """Average cpus busy over an interval. A counter that went backwards (the group was re-created)
    or an empty interval reads 0, never a negative or infinite rate."""
    if wall_seconds <= 0 or now_seconds < prev_seconds:
        return 0.0
    return (now_seconds - prev_seconds) / wall_seconds


def fraction_of_limit(cores: float, limit_millis: int | None) -> float:
    """``cores`` as a fraction of a cpu limit in millicpus (500 = half a core); 0 when unlimited."""
    if not limit_millis or limit_millis <= 0:
        return 0.0
    return cores / (limit_millis / 1000)
