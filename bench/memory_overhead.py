"""Per-container memory overhead outside the container's own processes: Shoal vs podman (conmon).

Starts N long-running ``sleep`` containers with each system and measures, before and after:

the memory of every process *outside* the containers that the system keeps for them — Shoal: its
supervisor's keeper and worker and its daemon; podman: one ``conmon`` per container (podman itself
exits) — as RSS and as PSS (shared pages divided among the processes sharing them, the fair figure for
N conmons that share their libraries, and for Shoal's keeper, worker and daemon, which share one
interpreter), divided by N. It also prints Shoal's fixed cost per process. Run as root with the
project's venv: ``/opt/shoal-venv/bin/python bench/memory_overhead.py [--n 50]``. Write-up:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
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


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def supervisor_worker(keeper: int) -> int | None:
    """The keeper's worker: its child running ``agent.runtime.supervisor.worker`` (None for a
    single-process supervisor from before the split, so the script can measure that too)."""
    children = Path(f"/proc/{keeper}/task/{keeper}/children").read_text().split()
    for child in map(int, children):
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"agent.runtime.supervisor.worker" in argv:
            return child
    return None


def settle() -> None:
    """Let page cache and lazy frees settle, so before/after compare like with like."""
    run_checked(["sync"])
    time.sleep(1.0)


@dataclass(frozen=True)
class Result:
    system: str
    n: int
    rss_kib_per_container: float
    pss_kib_per_container: float
    note: str
    # Shoal only: process -> (RSS KiB, PSS KiB) with n containers running.
    fixed_kib: dict[str, tuple[int, int]] | None = None


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
        keeper = agent.supervisor_pid()
        assert keeper is not None
        worker = supervisor_worker(keeper)
        settle()
        helpers = ({"keeper": keeper, "worker": worker, "daemon": agent.pid} if worker is not None
                   else {"supervisor": keeper, "daemon": agent.pid})
        before = (sum(rss_kib(p) for p in helpers.values()), sum(pss_kib(p) for p in helpers.values()))
        idle = {name: (rss_kib(pid), pss_kib(pid)) for name, pid in helpers.items()}
        for i in range(n):
            stub.CreateContainer(pb.CreateContainerRequest(id=f"mem-{i}", start=True, spec=pb.ContainerSpec(
                image=IMAGE_NAME, command=["sleep", "3600"])))
        settle()
        after = (sum(rss_kib(p) for p in helpers.values()), sum(pss_kib(p) for p in helpers.values()))
        fixed = {name: (rss_kib(pid), pss_kib(pid)) for name, pid in helpers.items()}
        growth = {name: (fixed[name][0] - idle[name][0]) / n for name in helpers}
        for i in range(n):
            stub.RemoveContainer(pb.RemoveContainerRequest(id=f"mem-{i}", force=True))
        stub.RemoveContainer(pb.RemoveContainerRequest(id="warm", force=True))
        return Result(f"shoal ({' + '.join(helpers)})", n, (after[0] - before[0]) / n,
                      (after[1] - before[1]) / n,
                      "growth per container: " + ", ".join(f"{k} {v:.1f}" for k, v in growth.items())
                      + " KiB RSS", fixed_kib=fixed)
    finally:
        agent.stop()


def measure_podman(work: Path, rootfs_tar: Path, n: int) -> Result:
    parent = f"shoal-bench-mem-podman-{uuid.uuid4().hex[:6]}"
    podman = Podman(base=work / "podman", cgroup_parent=parent)
    flags = podman.global_flags()
    run_checked([*flags, "import", str(rootfs_tar), "localhost/bench/busybox:v1"])
    names = [f"mem-{i}" for i in range(n)]
    try:
        for name in names:
            run_checked([*flags, "run", "-d", "--name", name, "--network", "none",
                         "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                         "--cgroup-parent", f"/{parent}", "localhost/bench/busybox:v1", "sleep", "3600"])
        settle()
        conmons = subprocess.run(["pgrep", "-f", f"conmon.*{work}"], capture_output=True, text=True)
        pids = [int(p) for p in conmons.stdout.split()]
        count = max(len(pids), 1)
        return Result("podman (conmon per container)", n, sum(rss_kib(p) for p in pids) / count,
                      sum(pss_kib(p) for p in pids) / count, f"{len(pids)} conmon processes")
    finally:
        subprocess.run([*flags, "rm", "-f", "-t", "0", *names], capture_output=True, check=False)
        podman.teardown()
        # conmon processes (in <parent>/conmon) outlive `podman rm` by a moment: retry, bounded.
        deadline = time.monotonic() + 15
        while (left := remove_cgroup_tree(parent)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            print(f"could not remove {left}", file=sys.stderr)


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
    print(f"{'system':32} {'RSS/container':>14} {'PSS/container':>14}  note")
    for r in results:
        print(f"{r.system:32} {r.rss_kib_per_container:10.1f} KiB {r.pss_kib_per_container:10.1f} KiB"
              f"  {r.note}")
    for r in results:
        for name, (rss, pss) in (r.fixed_kib or {}).items():
            print(f"  {name:8} with {r.n} containers: RSS {rss / 1024:6.1f} MiB  PSS {pss / 1024:6.1f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
