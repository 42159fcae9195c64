"""The cpu the benchmark's containers use, read straight from the kernel: the "load" of a cpu scenario.

``CpuMeter(names)`` samples, every ``interval`` seconds in a thread, the summed ``cpuacct.usage`` of the
cgroup v1 directories named ``names`` (the agents' ``--cgroup-parent`` groups, which hold every
container they run and nothing else), and records the cores used over each interval as ``(t, cores)``
with ``t`` on ``time.perf_counter``'s clock. It reads what the kernel charged, not what Shoal reports,
so a plot shows the load as it was, and the autoscaler's view of it (the agents' 1 s samples) can be
judged against it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from bench.cluster_daemon import cgroup_dirs


class CpuMeter:
    def __init__(self, names: list[str], *, interval: float = 0.1) -> None:
        self.names = names
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        with self._lock:
            return [(t, cores) for t, cores in self.samples if start <= t <= end]

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _usage_ns(self) -> int:
        """Summed cpuacct.usage of the groups that exist now (an agent creates its group lazily)."""
        total = 0
        for name in self.names:
            for group in cgroup_dirs(name):
                usage = Path(group, "cpuacct.usage")
                with contextlib.suppress(OSError, ValueError):
                    total += int(usage.read_text())
        return total

    def _run(self) -> None:
        last_t, last_ns = time.perf_counter(), self._usage_ns()
        while not self._stop.wait(self.interval):
            now, ns = time.perf_counter(), self._usage_ns()
            # A group removed and made again restarts at 0: a negative delta is no sample.
            if ns >= last_ns and now > last_t:
                with self._lock:
                    self.samples.append((round(now, 4), (ns - last_ns) / 1e9 / (now - last_t)))
            last_t, last_ns = now, ns


__all__ = ["CpuMeter"]
