"""What SIGKILLing part of the supervisor costs: the time until a new worker serves, and the container
output lost.

A private supervisor (no agent; the host-process launcher of the test suite, so no image is needed)
runs one container that writes numbered lines, at ``--interval`` seconds between lines (0: as fast as
the pipe takes them). Then ``--kills`` times, at a random moment 1.2-1.6 s apart (a worker that dies
within 1 s of starting counts towards the keeper's restart backoff, which is not what is measured
here): SIGKILL the worker and time how long until a new connection's ``hello`` is answered by the
keeper's next worker. Then the same
with the keeper (its worker re-executes itself as the keeper and starts a new worker). At the end the
container's log is read back and its numbers checked for gaps and repeats.

A worker killed between its read(2) of a pipe and its write(2) to the log loses what it had read; the
line counts say how often that happens at a given output rate. Run as root from the repository root:
``/opt/shoal-venv/bin/python bench/supervisor_failover.py [--kills 30] [--interval 0.001]``.
Write-up: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.errors import ShoalError  # noqa: E402
from agent.runtime import logs  # noqa: E402
from agent.runtime.supervisor_client import SupervisorClient, connect_or_spawn  # noqa: E402
from tests.integration.supervisor.supervisor_harness import (  # noqa: E402
    FAKE_LAUNCHER,
    host_plan,
    process_gone,
    supervisor_pid,
    worker_pids,
)

WRITER = ("import itertools, sys, time\n"
          "for i in itertools.count():\n"
          "    sys.stdout.write(f'{{i}}\\n'); sys.stdout.flush(); time.sleep({interval})\n")


async def connect(root: Path) -> SupervisorClient:
    return await connect_or_spawn(root, launcher=FAKE_LAUNCHER)


async def kill_and_time(root: Path, client: SupervisorClient, *,
                        keeper: bool) -> tuple[float, SupervisorClient]:
    """SIGKILL the worker (or the keeper); seconds until a fresh connection is served by a new worker."""
    worker = await client.hello()
    victim = supervisor_pid(root) if keeper else worker
    assert victim is not None
    start = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    await client.close()
    while True:  # the keeper's listener holds our connection until the next worker accepts it
        client = await connect(root)
        try:
            if await client.hello() != worker:
                return time.perf_counter() - start, client
        except ShoalError:
            pass  # reached the old worker just before it exec'd into the keeper
        await client.close()


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


GAP = (1.2, 1.6)


async def scenario(root: Path, *, kills: int, keeper_kills: int, interval: float) -> dict[str, object]:
    directory = root / "containers" / "writer"
    directory.mkdir(parents=True)
    client = await connect(root)
    started = await client.start("writer", directory=directory, log_max_bytes=1 << 30, log_max_files=2,
                                 plan=host_plan("writer", sys.executable, "-u", "-c",
                                                WRITER.format(interval=interval)))
    worker_times: list[float] = []
    for _ in range(kills):
        await asyncio.sleep(random.uniform(*GAP))
        elapsed, client = await kill_and_time(root, client, keeper=False)
        worker_times.append(elapsed)
    keeper_times: list[float] = []
    for _ in range(keeper_kills):
        await asyncio.sleep(random.uniform(*GAP))
        elapsed, client = await kill_and_time(root, client, keeper=True)
        keeper_times.append(elapsed)
    assert len(worker_pids(root)) == 1
    await client.kill("writer", signal.SIGKILL)
    while "writer" in await client.list_running():
        await asyncio.sleep(0.01)
    await client.close()
    numbers = [int(e.text) for e in logs.read_entries(directory) if e.stream == "stdout"]
    expected = set(range(numbers[-1] + 1)) if numbers else set()
    return {
        "kills": kills, "keeper_kills": keeper_kills, "interval_s": interval, "writer_pid": started.pid,
        "lines": len(numbers), "missing": len(expected - set(numbers)),
        "repeated": len(numbers) - len(set(numbers)),
        "worker_kill_to_served": summary(worker_times) if worker_times else None,
        "keeper_kill_to_served": summary(keeper_times) if keeper_times else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="worker SIGKILLs (default 30)")
    parser.add_argument("--keeper-kills", type=int, default=5, help="keeper SIGKILLs after them (default 5)")
    parser.add_argument("--interval", type=float, default=0.001,
                        help="seconds between the container's lines; 0 = as fast as possible")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    random.seed(args.seed)
    # Containers orphaned by a killed keeper come to us (this is their subreaper) and are reaped below.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        raise SystemExit("cannot become a child subreaper")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-failover-") as tmp:
        root = Path(tmp) / "root"
        result = asyncio.run(scenario(root, kills=args.kills, keeper_kills=args.keeper_kills,
                                      interval=args.interval))
        keeper = supervisor_pid(root)
        deadline = time.monotonic() + 30
        while keeper is not None and not process_gone(keeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        while True:  # reap whatever was orphaned to us
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
