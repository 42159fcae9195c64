"""What one host costs the leader in memory: a gRPC channel, its streams, an agent session, its containers.

The scheduler holds one ``AgentSession`` per host (``scheduler.agents``): a channel to the agent and one
``WatchHost`` stream of its events and usage (a usage stream and an event stream before part 15). This
measures, for N simulated hosts (``bench/sim``, served by a child process on 127.0.0.1), the leader
process's RSS growth per host in a fresh process per scenario:

* ``channel``: a connected channel (one ``GetHost`` call);
* ``usage``: a channel with a ``WatchUsage`` stream open;
* ``both``: a channel with ``WatchUsage`` and ``WatchEvents`` open;
* ``one``: a channel with ``WatchHost`` open (events and usage on one stream, as a session follows now);
* ``session``: a real ``AgentSession``, connected and complete;
* ``launched``: the same after ``--containers`` launches per host through the session (as the actuator
  makes them), the containers followed by the session;
* ``workers``: the same through ``--session-workers 1`` (``scheduler.session_workers``): the leader holds a
  remote session per host, the worker process the real one; both processes' RSS growth per host.

For ``launched`` and ``workers`` it also measures, over ``CPU_WINDOW_S`` of the steady state that follows
(every host reporting usage each second), the cpu each process spends per host per second.

RSS includes what gRPC's C core and protobuf allocate, which Python's allocation tracing does not see.
``python bench/session_memory.py [--hosts 300] [--containers 20]``; prints a table and writes JSON to
``bench/results/session-memory.json``. Write-up: docs/scaling.md ("Part 4"), docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds, rss_bytes  # noqa: E402

SCENARIOS = ("channel", "usage", "both", "one", "session", "launched", "workers")
SETTLE_S = 5.0      # after the last connection, for streams' buffers to reach their steady size
CPU_WINDOW_S = 10.0  # of steady state, for the cpu per host per second
BOUND_S = 120.0     # every wait is bounded


async def serve(hosts: int, base: int) -> None:
    """The child: ``hosts`` simulated hosts on consecutive ports, until stdin closes."""
    from bench.sim.host import HostSpec, SimHost

    sims = [SimHost(HostSpec(name=f"mem-{i:05d}", port=base + i)) for i in range(hosts)]
    for sim in sims:
        await sim.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for sim in sims:
        await sim.stop()


async def start_following(sessions: list[Any], who: str) -> None:
    """Starts the sessions and waits (bounded) until each follows its host: connected, listed, heard."""
    for session in sessions:
        session.start()
    deadline = time.monotonic() + BOUND_S
    while not all(s.observation.complete and s.info is not None for s in sessions):
        if time.monotonic() > deadline:
            raise SystemExit(f"{who}: sessions did not connect within {BOUND_S:.0f} s")
        await asyncio.sleep(0.2)


async def measure(scenario: str, hosts: int, base: int, containers: int) -> dict[str, float]:
    """One scenario in this (fresh) process: RSS per host."""
    import grpc

    from proto.agent.v1 import agent_pb2 as pb
    from proto.agent.v1 import agent_pb2_grpc as pb_grpc
    from scheduler.agents import HEARTBEAT_TIMEOUT, AgentSession
    from scheduler.loop_stalls import LoopStalls
    from scheduler.model import LABEL_GENERATION, LABEL_REPLICA, LABEL_SERVICE, HostId
    from scheduler.session_workers import SessionWorkers

    addresses = [f"127.0.0.1:{base + i}" for i in range(hosts)]
    before = rss_bytes()
    held: list[object] = []
    tasks: list[asyncio.Future[None]] = []

    async def drain(stream: object) -> None:
        async for _ in stream:  # type: ignore[attr-defined]
            pass

    if scenario in ("channel", "usage", "both", "one"):
        for address in addresses:
            channel = grpc.aio.insecure_channel(address)
            held.append(channel)
            await pb_grpc.HostStub(channel).GetHost(pb.GetHostRequest(), timeout=BOUND_S)
            if scenario == "one":
                tasks.append(asyncio.ensure_future(drain(pb_grpc.HostStub(channel).WatchHost(
                    pb.WatchHostRequest()))))
            elif scenario != "channel":
                tasks.append(asyncio.ensure_future(drain(pb_grpc.HostStub(channel).WatchUsage(
                    pb.WatchUsageRequest()))))
            if scenario == "both":
                tasks.append(asyncio.ensure_future(drain(pb_grpc.ContainersStub(channel).WatchEvents(
                    pb.WatchEventsRequest()))))
    else:
        pool = None
        if scenario == "workers":
            pool = SessionWorkers(1, credentials=None, heartbeat_timeout=HEARTBEAT_TIMEOUT)
            await pool.start()
            worker_pid = pool.pids()[0]
            await asyncio.sleep(SETTLE_S)  # the worker's imports: its baseline
            worker_before = rss_bytes(worker_pid)
            before = rss_bytes()
            sessions: list[Any] = [pool.session(HostId(f"h{i}"), a, on_change=lambda _h: None)
                                   for i, a in enumerate(addresses)]
        else:
            stalls = LoopStalls()  # one for all, as the leader's controller (and a worker) shares one
            stalls.start()
            sessions = [AgentSession(HostId(f"h{i}"), a, credentials=None, on_change=lambda _h: None,
                                     stalls=stalls) for i, a in enumerate(addresses)]
        await start_following(sessions, "session_memory")
        if scenario in ("launched", "workers"):
            async def launch(session: Any, j: int) -> None:
                cid = f"svc{j}-{session.host}-{j:08x}"
                spec = pb.ContainerSpec(image="registry.example/app:1", command=["sleep", "1000"],
                                        labels={LABEL_SERVICE: f"svc{j}", LABEL_REPLICA: cid,
                                                LABEL_GENERATION: "1"})
                session.apply(await session.containers.CreateContainer(pb.CreateContainerRequest(
                    id=cid, name=cid, start=True, spec=spec), timeout=BOUND_S))
            for j in range(containers):
                await asyncio.gather(*(launch(s, j) for s in sessions))
        held.extend(sessions)
        await asyncio.sleep(SETTLE_S)  # bounded settle: no event marks "buffers at steady size"
        result = {"kib_per_host": round((rss_bytes() - before) / hosts / 1024, 1)}
        pids = {"": os.getpid()}
        if pool is not None:
            pids["worker_"] = worker_pid
            result["worker_kib_per_host"] = round((rss_bytes(worker_pid) - worker_before) / hosts / 1024, 1)
        cpu = {k: cpu_seconds(p) for k, p in pids.items()}
        start = time.monotonic()
        await asyncio.sleep(CPU_WINDOW_S)
        elapsed = time.monotonic() - start
        for key, pid in pids.items():
            result[f"{key}cpu_us_per_host_s"] = round((cpu_seconds(pid) - cpu[key]) / elapsed / hosts * 1e6)
        if pool is not None:
            await pool.close()
        return result
    await asyncio.sleep(SETTLE_S)  # bounded settle: no event marks "buffers at steady size"
    after = rss_bytes()
    for task in tasks:
        task.cancel()
    return {"kib_per_host": round((after - before) / hosts / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--base-port", type=int, default=31000, help="the hosts listen on this port and up")
    parser.add_argument("--out", default=str(ROOT / "bench/results/session-memory.json"))
    args = parser.parse_args()
    if args.hosts < 1 or args.containers < 0 or args.base_port + args.hosts > 65535:
        raise SystemExit("session_memory: --hosts must be at least 1, --containers not negative, and "
                         "--base-port + --hosts at most 65535")
    if args.serve:
        asyncio.run(serve(args.hosts, args.base_port))
        return
    if args.scenario:
        print(json.dumps(asyncio.run(measure(args.scenario, args.hosts, args.base_port, args.containers))))
        return
    results: dict[str, float] = {}
    details: dict[str, dict[str, float]] = {}
    for scenario in SCENARIOS:
        me = [sys.executable, str(Path(__file__).resolve()), "--hosts", str(args.hosts),
              "--base-port", str(args.base_port)]
        with subprocess.Popen([*me, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) as hosts:
            assert hosts.stdin is not None and hosts.stdout is not None
            if hosts.stdout.readline().strip() != "ready":
                last = args.base_port + args.hosts - 1
                raise SystemExit(f"session_memory: the simulated hosts did not start (are ports "
                                 f"{args.base_port}-{last} in use? choose --base-port)")
            try:
                out = subprocess.run([*me, "--scenario", scenario, "--containers", str(args.containers)],
                                     capture_output=True, text=True, timeout=4 * BOUND_S, check=True)
            finally:
                hosts.stdin.close()
                hosts.wait(BOUND_S)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        results[scenario] = measured["kib_per_host"]
        extra = {k: v for k, v in measured.items() if k != "kib_per_host"}
        if extra:
            details[scenario] = extra
        shown = "".join(f", {k} {v}" for k, v in extra.items())
        print(f"{scenario:>9}: {results[scenario]:7.1f} KiB per host{shown}", flush=True)
    record = {"hosts": args.hosts, "containers_per_host": args.containers, "kib_per_host": results,
              "steady": details, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
