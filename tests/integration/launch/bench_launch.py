"""Measure ``launch()`` of busybox ``/bin/true`` (not a test: prints numbers, asserts nothing).

Run as root: ``python tests/integration/launch/bench_launch.py [RUNS]``. Each run gets fresh
upper/work/target dirs (created outside the timed region). Prints the median of ``launch()`` alone
(fork → namespaces → mounts → execve succeeded) and of launch-to-exit (plus ``waitpid``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.runtime.launch import launch
from agent.runtime.plan import LaunchPlan, OverlayRootfs

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere
from tests.integration.launch.busybox_rootfs import build_busybox_rootfs


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    try:
        lower = tmp / "lower"
        build_busybox_rootfs(lower)
        devnull = os.open("/dev/null", os.O_WRONLY)
        launch_ms: list[float] = []
        total_ms: list[float] = []
        for i in range(runs + 1):
            box = tmp / f"c{i}"
            for d in ("upper", "work", "target"):
                (box / d).mkdir(parents=True)
            plan = LaunchPlan(
                container_id=f"c{i}",
                rootfs=OverlayRootfs(lower=(str(lower),), upper=str(box / "upper"), work=str(box / "work"),
                                     target=str(box / "target")),
                argv=("/bin/true",), env=("PATH=/bin",), hostname=f"c{i}",
            )
            start = time.perf_counter()
            pid = launch(plan, stdout_fd=devnull, stderr_fd=devnull)
            launched = time.perf_counter()
            _, status = os.waitpid(pid, 0)
            done = time.perf_counter()
            assert os.waitstatus_to_exitcode(status) == 0
            if i:  # the first run warms page cache and imports
                launch_ms.append((launched - start) * 1000)
                total_ms.append((done - start) * 1000)
        baseline_ms: list[float] = []
        for _ in range(runs):  # same process, no isolation at all: the floor for fork+exec+wait
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os.execv(str(lower / "bin" / "busybox"), ["true"])
            os.waitpid(pid, 0)
            baseline_ms.append((time.perf_counter() - start) * 1000)
        print(f"plain fork+exec+wait of busybox true median {statistics.median(baseline_ms):.2f} ms")
        print(f"runs={runs} launch() median {statistics.median(launch_ms):.2f} ms "
              f"(p90 {statistics.quantiles(launch_ms, n=10)[-1]:.2f}); "
              f"launch+exit median {statistics.median(total_ms):.2f} ms")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
