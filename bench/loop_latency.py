"""Does a burst of lifecycle work stall the agent for its other clients?

Starts a real ``shoal-agent`` with N running containers, then, while a *separate process* calls
``GetHost`` every 10 ms (and ``ListContainers`` every 100 ms) and records each latency, a third process
(one asyncio client, so the load generator itself stays light) fires a storm: N concurrent stop(timeout
1 s)+rm of the running containers (busybox ``sleep`` as pid 1 ignores SIGTERM, so each stop waits out its
grace and SIGKILLs, and each rm kills and removes a cgroup) and N concurrent create+start of new ones.
Reports the poller's latencies idle (before the storm) and during it.

A daemon that does blocking work on its event loop (cgroup kill loops, file writes, record reads) shows it
here as GetHost latency in the tens or hundreds of milliseconds; one that does not stays near its idle
figure. On a 2-core machine the storm itself (launches, forks, mounts) competes with the agent for the
cpus, so compare builds run by run: ``--compare BIN`` measures another build's ``shoal-agent`` (an older
checkout's venv), interleaved with this one, ``--runs`` times.

Run as root with the project's venv: ``.venv/bin/python bench/loop_latency.py [--n 50]``.
Write-up: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from start_latency import IMAGE_NAME, Agent, build_image, machine_info

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc


def poll(address: str, stop: Any, out: Any) -> None:
    """In its own process: GetHost every 10 ms, ListContainers every 100 ms, until ``stop`` is set."""
    import grpc

    channel = grpc.insecure_channel(address)
    host, containers = pb_grpc.HostStub(channel), pb_grpc.ContainersStub(channel)
    samples: list[tuple[float, str, float]] = []
    tick = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        host.GetHost(pb.GetHostRequest(), timeout=30)
        samples.append((time.time(), "GetHost", time.perf_counter() - t0))
        if tick % 10 == 0:
            t0 = time.perf_counter()
            containers.ListContainers(pb.ListContainersRequest(all=True), timeout=30)
            samples.append((time.time(), "ListContainers", time.perf_counter() - t0))
        tick += 1
        time.sleep(0.01)
    out.put(samples)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(samples: list[tuple[float, str, float]], since: float, until: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in ("GetHost", "ListContainers"):
        values = [lat * 1000 for at, m, lat in samples if m == method and since <= at <= until]
        out[method] = {"n": len(values), "p50_ms": round(pct(values, 0.5), 2),
                       "p99_ms": round(pct(values, 0.99), 2), "max_ms": round(max(values, default=0.0), 2),
                       "mean_ms": round(statistics.fmean(values), 2) if values else None}
    return out


async def _storm(address: str, n: int) -> float:
    """N stop+rm and N create+start at once, from one asyncio client (a light load generator)."""
    import grpc.aio

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ContainersStub(channel)
        spec = pb.ContainerSpec(image=IMAGE_NAME, command=["sleep", "3600"])

        async def retire(i: int) -> None:
            await stub.StopContainer(pb.StopContainerRequest(id=f"old-{i}", timeout_seconds=1), timeout=60)
            await stub.RemoveContainer(pb.RemoveContainerRequest(id=f"old-{i}", force=True), timeout=60)

        async def hire(i: int) -> None:
            await stub.CreateContainer(pb.CreateContainerRequest(id=f"new-{i}", start=True, spec=spec),
                                       timeout=60)

        started = time.time()
        await asyncio.gather(*(retire(i) for i in range(n)), *(hire(i) for i in range(n)))
        return started


def storm_process(address: str, n: int, out: Any) -> None:
    started = asyncio.run(_storm(address, n))
    out.put((started, time.time()))


def measure(agent_bin: str | None, *, n: int, work: Path, image: Any) -> dict[str, Any]:
    agent = Agent(root=work / f"agent-{uuid.uuid4().hex[:6]}",
                  cgroup_parent=f"shoal-bench-loop-{uuid.uuid4().hex[:6]}", agent_bin=agent_bin or "")
    try:
        agent.start()
        agent.import_image(image.layout_tar)
        stub = agent.containers
        assert stub is not None
        spec = pb.ContainerSpec(image=IMAGE_NAME, command=["sleep", "3600"])
        for i in range(n):
            stub.CreateContainer(pb.CreateContainerRequest(id=f"old-{i}", start=True, spec=spec))
        stop, out, window = multiprocessing.Event(), multiprocessing.Queue(), multiprocessing.Queue()
        poller = multiprocessing.Process(target=poll, args=(agent.address, stop, out))
        poller.start()
        time.sleep(3)  # the poller's idle baseline
        storm = multiprocessing.Process(target=storm_process, args=(agent.address, n, window))
        storm.start()
        storm_start, storm_end = window.get(timeout=300)
        storm.join(timeout=30)
        time.sleep(0.5)
        stop.set()
        samples = out.get(timeout=30)
        poller.join(timeout=30)
        return {"agent_bin": agent_bin or "this venv", "storm_seconds": round(storm_end - storm_start, 2),
                "idle": summarize(samples, storm_start - 3, storm_start),
                "storm": summarize(samples, storm_start, storm_end)}
    finally:
        with ThreadPoolExecutor(max_workers=16) as pool:
            for i in range(n):
                for cid in (f"old-{i}", f"new-{i}"):
                    pool.submit(_remove_quietly, agent, cid)
        for problem in agent.stop():
            print(f"cleanup: {problem}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="containers stopped and created (default 50)")
    parser.add_argument("--agent-bin", default=None, help="shoal-agent to run (default: this venv's)")
    parser.add_argument("--compare", default=None, metavar="BIN",
                        help="also measure this other shoal-agent, interleaved run by run")
    parser.add_argument("--runs", type=int, default=1, help="runs per build (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    builds = [args.agent_bin] + ([args.compare] if args.compare else [])
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-loop-") as tmp:
        work = Path(tmp)
        image = build_image(work)
        for run in range(args.runs):
            for build in builds:
                result = measure(build, n=args.n, work=work, image=image)
                result["run"] = run + 1
                results.append(result)
                print_result(result, n=args.n)
    if args.out:
        report = {"machine": machine_info(), "n": args.n, "results": results}
        args.out.write_text(json.dumps(report, indent=1))


def print_result(result: dict[str, Any], *, n: int) -> None:
    print(f"run {result['run']}: {result['agent_bin']}: {n} stop+rm and {n} create+start in "
          f"{result['storm_seconds']} s")
    print(f"  {'':16} {'window':6} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for method in ("GetHost", "ListContainers"):
        for window in ("idle", "storm"):
            r = result[window][method]
            print(f"  {method:16} {window:6} {r['n']:>5} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}")


def _remove_quietly(agent: Agent, cid: str) -> None:
    stub = agent.containers
    if stub is None:
        return
    # Best effort: agent.stop() reports whatever is left.
    with contextlib.suppress(grpc.RpcError):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True), timeout=60)


if __name__ == "__main__":
    main()
