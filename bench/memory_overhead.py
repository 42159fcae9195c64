"""Per-container memory overhead outside the container's own processes: Shoal vs podman (conmon).

Starts N long-running ``sleep`` containers with each system and measures, before and after:

* the resident memory of every process *outside* the containers that the system keeps for them —
  Shoal: its supervisor and its daemon; podman: one ``conmon`` per container (podman itself exits);
* the host's used memory (``MemTotal - MemAvailable``) minus what the containers' own cgroups use, which
  also catches kernel memory (pipes, slab) the RSS figures miss.

Both are divided by N. Run as root with the project's venv:
``/opt/shoal-venv/bin/python bench/memory_overhead.py [--n 50]``. Write-up: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from start_latency import (
    CGROUP_ROOT,
    IMAGE_NAME,
    Agent,
    Podman,
    build_image,
    remove_cgroup_tree,
    run_checked,
)

from proto.agent.v1 import agent_pb2 as pb


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def host_used_kib() -> int:
    info = {k: int(v.split()[0]) for k, v in
            (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())}
    return info["MemTotal"] - info["MemAvailable"]


def cgroup_usage_kib(parent: str) -> int:
    """Memory charged to the containers' own cgroups under ``parent`` (v1 memory hierarchy)."""
    total = 0
    for f in (CGROUP_ROOT / "memory" / parent).glob("*/memory.usage_in_bytes"):
        with contextlib.suppress(OSError):
            total += int(f.read_text())
    return total // 1024


def settle() -> None:
    """Let page cache and lazy frees settle, so before/after compare like with like."""
    run_checked(["sync"])
    time.sleep(1.0)


@dataclass(frozen=True)
class Result:
    system: str
    n: int
    helper_rss_kib_per_container: float
    host_kib_per_container: float
    note: str


def measure_shoal(work: Path, image_tar: Path, n: int) -> Result:
    parent = f"shoal-bench-mem-{uuid.uuid4().hex[:6]}"
    agent = Agent(root=work / "agent", cgroup_parent=parent)
    try:
        agent.start()
        agent.import_image(image_tar)
        stub = agent.containers
        assert stub is not None
        # One container first so the supervisor exists and its fixed cost is in the baseline.
        stub.CreateContainer(pb.CreateContainerRequest(id="warm", start=True, spec=pb.ContainerSpec(
            image=IMAGE_NAME, command=["sleep", "3600"])))
        supervisor = agent.supervisor_pid()
        assert supervisor is not None
        settle()
        before = (rss_kib(supervisor) + rss_kib(agent.pid), host_used_kib() - cgroup_usage_kib(parent))
        for i in range(n):
            stub.CreateContainer(pb.CreateContainerRequest(id=f"mem-{i}", start=True, spec=pb.ContainerSpec(
                image=IMAGE_NAME, command=["sleep", "3600"])))
        settle()
        after = (rss_kib(supervisor) + rss_kib(agent.pid), host_used_kib() - cgroup_usage_kib(parent))
        for i in range(n):
            stub.RemoveContainer(pb.RemoveContainerRequest(id=f"mem-{i}", force=True))
        stub.RemoveContainer(pb.RemoveContainerRequest(id="warm", force=True))
        return Result("shoal (supervisor + daemon)", n, (after[0] - before[0]) / n,
                      (after[1] - before[1]) / n,
                      f"fixed: supervisor {rss_kib(supervisor)} KiB, daemon {rss_kib(agent.pid)} KiB")
    finally:
        agent.stop()


def measure_podman(work: Path, rootfs_tar: Path, n: int) -> Result:
    parent = f"shoal-bench-mem-podman-{uuid.uuid4().hex[:6]}"
    podman = Podman(base=work / "podman", cgroup_parent=parent)
    flags = podman.global_flags()
    run_checked([*flags, "import", str(rootfs_tar), "localhost/bench/busybox:v1"])
    names = [f"mem-{i}" for i in range(n)]
    try:
        settle()
        before_host = host_used_kib() - cgroup_usage_kib(parent)
        for name in names:
            run_checked([*flags, "run", "-d", "--name", name, "--network", "none",
                         "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                         "--cgroup-parent", f"/{parent}", "localhost/bench/busybox:v1", "sleep", "3600"])
        settle()
        conmons = subprocess.run(["pgrep", "-f", f"conmon.*{work}"], capture_output=True, text=True)
        pids = [int(p) for p in conmons.stdout.split()]
        rss = sum(rss_kib(p) for p in pids)
        after_host = host_used_kib() - cgroup_usage_kib(parent)
        return Result("podman (conmon per container)", n, rss / max(len(pids), 1),
                      (after_host - before_host) / n, f"{len(pids)} conmon processes")
    finally:
        subprocess.run([*flags, "rm", "-f", "-t", "0", *names], capture_output=True, check=False)
        podman.teardown()
        remove_cgroup_tree(parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="containers per system (default 50)")
    parser.add_argument("--no-podman", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-mem-") as tmp:
        work = Path(tmp)
        image = build_image(work)
        results = [measure_shoal(work, image.layout_tar, args.n)]
        if not args.no_podman:
            results.append(measure_podman(work, image.rootfs_tar, args.n))
    print(f"{'system':32} {'helper RSS/ctr':>15} {'host mem/ctr':>13}  note")
    for r in results:
        print(f"{r.system:32} {r.helper_rss_kib_per_container:12.1f} KiB {r.host_kib_per_container:10.1f} KiB"
              f"  {r.note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
