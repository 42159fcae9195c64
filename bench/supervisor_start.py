"""The supervisor's share of a container start, for one or more source trees side by side.

Each ``--tree NAME=PATH`` is a Shoal checkout whose supervisor is started (``python -P -S -m
agent.runtime.supervisor`` with PYTHONPATH=PATH) on a private root; the default is this checkout alone.
Every round starts a busybox ``/bin/true`` container (real launcher: namespaces, overlay, /proc, /dev,
/sys, pivot_root; no cgroups) through each tree's supervisor, in a shuffled order after a short quiet
pause, and times ``start`` (the reply: the process has exec'd) and ``exit`` (the exit event: run.json and
the log are complete). Both trees speak the same protocol, so one client drives them. Comparing two
trees in one run is what this is for: drift on a shared machine hits both alike.

Run as root from the repository root, e.g. before/after a supervisor change::

    git worktree add --detach /tmp/base main   # + a venv, or reuse this one: only the stdlib is needed
    /opt/shoal-venv/bin/python bench/supervisor_start.py --n 200 --tree before=/tmp/base --tree after=.

Write-up: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.runtime.plan import LaunchPlan, OverlayRootfs  # noqa: E402
from agent.runtime.supervisor_client import ExitEvent, SupervisorClient  # noqa: E402
from tests.integration.launch.busybox_rootfs import build_busybox_rootfs  # noqa: E402


class Tree:
    """One source tree's supervisor on a private root, and our connection to it."""

    def __init__(self, name: str, source: Path, work: Path) -> None:
        self.name = name
        self.source = source
        self.root = work / name
        self.root.mkdir()
        self.process: subprocess.Popen[bytes] | None = None
        self.client: SupervisorClient | None = None
        self.events: asyncio.Queue[ExitEvent] = asyncio.Queue()
        self.pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.source)}
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-S", "-m", "agent.runtime.supervisor", "--root", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, cwd="/", start_new_session=True)
        assert self.process.stdout is not None
        line = await asyncio.to_thread(self.process.stdout.readline)
        if line != b"ready\n":
            raise RuntimeError(f"{self.name}: supervisor did not start; see {self.root}/supervisor.log")
        reader, writer = await asyncio.open_unix_connection(str(self.root / "supervisor.sock"))
        self.client = SupervisorClient(reader, writer)
        await self.client.hello()
        client = self.client

        async def pump() -> None:
            async for event in client.events():
                self.events.put_nowait(event)

        self.pump = asyncio.create_task(pump())

    async def run_once(self, index: int, lower: Path) -> tuple[float, float]:
        """Seconds to the start reply, and to the exit event."""
        assert self.client is not None
        cid = f"c{index}"
        box = self.root / "boxes" / cid
        for d in ("upper", "work", "target"):
            (box / d).mkdir(parents=True)
        directory = self.root / "containers" / cid
        directory.mkdir(parents=True)
        plan = LaunchPlan(container_id=cid, argv=("/bin/true",), env=("PATH=/bin",), hostname=cid,
                          rootfs=OverlayRootfs(lower=(str(lower),), upper=str(box / "upper"),
                                               work=str(box / "work"), target=str(box / "target")))
        began = time.perf_counter()
        await self.client.start(cid, directory=directory, plan=plan, log_max_bytes=1 << 20, log_max_files=2)
        started = time.perf_counter()
        while (event := await asyncio.wait_for(self.events.get(), 30)).container_id != cid:
            pass
        ended = time.perf_counter()
        assert event.exit_code == 0, event
        shutil.rmtree(box)
        return started - began, ended - began

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.pump is not None:
            self.pump.cancel()
        if self.process is not None:
            # The supervisor exits once its last client has gone and nothing runs.
            await asyncio.to_thread(self.process.wait, 30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(trees: list[Tree], *, n: int, warmup: int, settle: float, lower: Path) -> dict[str, object]:
    for tree in trees:
        await tree.start()
    samples: dict[str, list[tuple[float, float]]] = {t.name: [] for t in trees}
    try:
        for index in range(warmup + n):
            order = trees[:]
            random.shuffle(order)
            for tree in order:
                await asyncio.sleep(settle)
                timing = await tree.run_once(index, lower)
                if index >= warmup:
                    samples[tree.name].append(timing)
    finally:
        for tree in trees:
            await tree.stop()
    summary: dict[str, object] = {}
    for name, values in samples.items():
        starts = [s for s, _ in values]
        totals = [t for _, t in values]
        summary[name] = {
            "start_p50_ms": round(statistics.median(starts) * 1000, 2),
            "start_p90_ms": round(percentile(starts, 0.9) * 1000, 2),
            "exit_p50_ms": round(statistics.median(totals) * 1000, 2),
            "exit_p90_ms": round(percentile(totals, 0.9) * 1000, 2),
            "samples_ms": [[round(s * 1000, 3), round(t * 1000, 3)] for s, t in values],
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree to measure (repeatable; default: this checkout)")
    parser.add_argument("--n", type=int, default=100, help="timed rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--settle-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("supervisor_start: must run as root")
    random.seed(args.seed)
    specs = [t.split("=", 1) for t in args.tree] or [["this", str(REPO)]]
    with tempfile.TemporaryDirectory(prefix="shoal-bench-supervisor-") as tmp:
        work = Path(tmp)
        lower = work / "lower"
        build_busybox_rootfs(lower)
        trees = [Tree(name, Path(path).resolve(), work) for name, path in specs]
        result = asyncio.run(bench(trees, n=args.n, warmup=args.warmup, settle=args.settle_ms / 1000,
                                   lower=lower))
    print(f"{'tree':12} {'start p50':>10} {'start p90':>10} {'exit p50':>10} {'exit p90':>10}"
          f"  (ms, N={args.n})")
    for name, row in result.items():
        assert isinstance(row, dict)
        print(f"{name:12} {row['start_p50_ms']:10.2f} {row['start_p90_ms']:10.2f} {row['exit_p50_ms']:10.2f} "
              f"{row['exit_p90_ms']:10.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"n": args.n, "trees": dict(specs), "results": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
