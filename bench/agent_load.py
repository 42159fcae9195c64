"""The agent's own cost with many running containers: cpu and memory at 1 s sampling, and /metrics.

Starts a real ``shoal-agent`` (with ``--metrics-listen`` and the default 1 s sampling), runs N
``sleep`` containers, then over a measurement window reads the cpu time the daemon and the supervisor
used (``/proc/PID/stat`` utime + stime) and their RSS, and times ``GET /metrics`` scrapes.

Run as root with the project's venv: ``/opt/shoal-venv/bin/python bench/agent_load.py [--n 200]``.
Goals (issue 4): the agent under 5% of one core and under 150 MB RSS with 200 containers.
Write-up: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from start_latency import IMAGE_NAME, Agent, build_image, source_revision

from proto.agent.v1 import agent_pb2 as pb

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="running containers (default 200)")
    parser.add_argument("--window", type=float, default=30.0, help="measurement window, seconds")
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-load-") as tmp:
        work = Path(tmp)
        image = build_image(work)
        agent = Agent(root=work / "agent", cgroup_parent=f"shoal-bench-load-{uuid.uuid4().hex[:6]}",
                      extra_args=("--metrics-listen", f"127.0.0.1:{port}"))
        try:
            agent.start()
            agent.import_image(image.layout_tar)
            stub = agent.containers
            assert stub is not None
            spec = pb.ContainerSpec(image=IMAGE_NAME, command=["sleep", "3600"])
            for i in range(args.n):
                stub.CreateContainer(pb.CreateContainerRequest(id=f"load-{i}", start=True, spec=spec))
            supervisor = agent.supervisor_pid()
            assert supervisor is not None
            time.sleep(5)  # let the sampler see every container and settle (a measurement window)
            pids = {"daemon": agent.pid, "supervisor": supervisor}
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            start = time.monotonic()
            time.sleep(args.window)
            wall = time.monotonic() - start
            usage = {k: (cpu_seconds(p) - before[k]) / wall for k, p in pids.items()}
            rss = {k: rss_mib(p) for k, p in pids.items()}
            scrape_ms, size = [], 0
            for _ in range(args.scrapes):
                t = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                    size = len(resp.read())
                scrape_ms.append((time.perf_counter() - t) * 1000)
            scrape_ms.sort()
            result = {
                "n": args.n, "window_s": wall, "cpu_fraction_of_one_core": usage, "rss_mib": rss,
                "scrape_ms_p50": statistics.median(scrape_ms),
                "scrape_ms_p99": scrape_ms[min(len(scrape_ms) - 1, int(len(scrape_ms) * 0.99))],
                "scrape_bytes": size, "source": source_revision(), "loadavg": os.getloadavg(),
            }
            for i in range(args.n):
                stub.RemoveContainer(pb.RemoveContainerRequest(id=f"load-{i}", force=True))
        finally:
            agent.stop()
    print(f"{args.n} running containers, {wall:.0f} s window, load average {result['loadavg']}")
    for k in pids:
        print(f"  {k:10} cpu {usage[k] * 100:5.2f}% of one core   RSS {rss[k]:6.1f} MiB")
    print(f"  /metrics   p50 {result['scrape_ms_p50']:.1f} ms, p99 {result['scrape_ms_p99']:.1f} ms, "
          f"{size / 1024:.0f} KiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
