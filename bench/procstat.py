"""What /proc says of a process, for the benchmarks: its cpu time and resident memory."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int | None = None) -> int:
    """A process's resident memory (this process's by default); 0 when /proc does not say."""
    with open(f"/proc/{'self' if pid is None else pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


__all__ = ["cpu_seconds", "rss_bytes"]
