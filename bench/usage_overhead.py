"""Cost of usage sampling and of ``/metrics`` with N running containers.

Drives ``agent.usage.sampler.UsageSampler`` in-process, as the daemon does (a task on an asyncio loop,
readings in the sampler's own worker thread), over N real container-like targets: each a ``sleep`` in a
network namespace of its own (``unshare -n``), in a real cgroup under a private parent with memory, cpu
and pids limits, with a small writable-layer directory (a few files in nested directories). It then:

* samples every ``--interval`` seconds for ``--seconds`` and reports this process's cpu time over that
  window divided by wall time (share of one core), its RSS (before the sampler existed and at the end),
  and the p50/p99 of each snapshot's own duration;
* serves ``/metrics`` (the cAdvisor collector plus the agent's own metrics) on loopback and times
  ``--scrapes`` sequential HTTP GETs while sampling continues, reporting p50/p99 and the page size.

Nothing else runs in this process, so its cpu and RSS are the sampler's plus the interpreter's. Run as
root with the project's venv: ``/opt/shoal-venv/bin/python bench/usage_overhead.py [--n 200]``. Write-up:
``docs/benchmarks.md`` ("Usage sampling and /metrics").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.cgroups.detect import detect as detect_cgroups  # noqa: E402
from agent.cgroups.manager import Cgroup, Limits  # noqa: E402
from agent.usage.cadvisor import UsageCollector  # noqa: E402
from agent.usage.host import HostIdentity  # noqa: E402
from agent.usage.metrics import AgentMetrics, serve_metrics  # noqa: E402
from agent.usage.sampler import UsageSampler  # noqa: E402
from agent.usage.targets import SampleTarget  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_upper(path: Path) -> None:
    for d in range(3):
        sub = path / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for f in range(6):
            (sub / f"file{f}").write_bytes(b"x" * 2048 * (f + 1))


class Fleet:
    """N sleeping processes, each in its own netns and cgroup."""

    def __init__(self, n: int, scratch: Path) -> None:
        self.manager = detect_cgroups()
        self.parent = f"shoal-bench-usage-{secrets.token_hex(4)}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.groups: list[Cgroup] = []
        self.targets: list[SampleTarget] = []
        for i in range(n):
            cid = secrets.token_hex(16)
            group = self.manager.create(f"{self.parent}/{cid}", devices=(), limits=Limits(
                memory_bytes=64 << 20, cpu_quota_us=10_000, pids_max=64))
            self.groups.append(group)
            proc = subprocess.Popen(["unshare", "-n", "sh", "-c", 'read _ && exec sleep 100000'],
                                    stdin=subprocess.PIPE)
            self.procs.append(proc)
            for path in group.procs_files():
                Path(path).write_text(str(proc.pid))
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            upper = scratch / cid / "upper"
            make_upper(upper)
            self.targets.append(SampleTarget(
                id=cid, name=f"bench-{i}", image="busybox:latest", labels={"bench": "usage", "i": str(i)},
                pid=proc.pid, cgroup=group, upper_dir=upper, started_at=time.time(),
                memory_limit_bytes=64 << 20, cpu_limit_millis=100, own_network=True))

    def close(self) -> list[str]:
        for group in self.groups:
            with contextlib.suppress(Exception):
                group.kill_all()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        problems = []
        for group in self.groups:
            try:
                group.remove()
            except Exception as err:
                problems.append(str(err))
        if not self.manager.remove_parent_if_empty(self.parent):
            problems.append(f"cgroup parent {self.parent} left behind")
        return problems


async def measure(fleet: Fleet, *, seconds: float, interval: float, scrapes: int,
                  root: Path) -> dict[str, Any]:
    rss_before = rss_mib()
    agent_metrics = AgentMetrics(version="bench", host_id="bench")
    identity = HostIdentity.for_this_agent(root=root, labels={})
    durations: list[float] = []

    def observe(d: float) -> None:
        durations.append(d)
        agent_metrics.record_sample(d)

    sampler = UsageSampler(targets=lambda: fleet.targets, identity=identity, interval=interval,
                           observe_duration=observe)
    agent_metrics.registry.register(UsageCollector(sampler.latest))
    task = asyncio.create_task(sampler.run())
    # Warm up: the first layer walks and the first rates.
    while len(durations) < 3:
        await asyncio.sleep(0.05)
    durations.clear()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = cpu_seconds(), time.monotonic()
    window = list(durations)
    snap = sampler.latest()
    assert snap is not None
    server = serve_metrics("127.0.0.1:0", agent_metrics.registry)
    try:
        scrape_times: list[float] = []
        size = lines = 0
        for _ in range(scrapes):
            start = time.perf_counter()
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(server.url, timeout=10).read())
            scrape_times.append(time.perf_counter() - start)
            size, lines = len(body), body.count(b"\n")
    finally:
        server.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {
        "containers_sampled": len(snap.containers),
        "samples": len(window),
        "cpu_share_of_one_core": (cpu1 - cpu0) / (wall1 - wall0),
        "rss_mib_before_sampler": rss_before,
        "rss_mib_end": rss_mib(),
        "sample_seconds_p50": percentile(window, 0.5),
        "sample_seconds_p99": percentile(window, 0.99),
        "sample_seconds_max": max(window),
        "scrape_seconds_p50": percentile(scrape_times, 0.5),
        "scrape_seconds_p99": percentile(scrape_times, 0.99),
        "scrape_bytes": size,
        "scrape_lines": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates cgroups and network namespaces")
    with tempfile.TemporaryDirectory(prefix="shoal-usage-bench-") as tmp:
        scratch = Path(tmp)
        fleet = Fleet(args.n, scratch / "containers")
        try:
            result = asyncio.run(measure(fleet, seconds=args.seconds, interval=args.interval,
                                         scrapes=args.scrapes, root=scratch / "root"))
        finally:
            problems = fleet.close()
        result.update(n=args.n, seconds=args.seconds, interval=args.interval, cpus=os.cpu_count(),
                      python=platform.python_version(), kernel=platform.release(),
                      revision=subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True).stdout.strip())
        print(json.dumps(result, indent=2))
        if problems:
            sys.exit("cleanup problems: " + "; ".join(problems))


if __name__ == "__main__":
    main()
