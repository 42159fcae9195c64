"""What one usage report costs the process that follows a host, and what the usage interval saves.

Every host's agent sends a ``UsageSnapshot`` on its ``WatchUsage`` stream once a second: the heartbeat,
and the figures the autoscaler reads. The process that follows the hosts — the leader, or its session
worker — receives one message per host per second. This measures, for N simulated hosts with C
containers each (``bench/sim``, served by a child process on 127.0.0.1), the cpu that process spends,
each scenario in a fresh process:

* ``bytes``: the streams drained as raw bytes (grpc.aio's own cost per message, nothing decoded);
* ``decoded``: the same, each message decoded into a ``UsageSnapshot``;
* ``session``: a real ``AgentSession`` per host (scheduler/agents.py), as the leader or a worker runs it;
* ``session@I``: the same, the sessions asking for a report every I seconds (``--usage-interval``);
* ``session@I+keepaliveK`` (with ``--keepalive K``): the same with a keepalive ping once a connection has
  read nothing for K seconds (``--agent-keepalive``): what the pings add (docs/scaling.md, part 22).

Reported, as the median of ``--rounds`` rounds (min-max beside it): messages a second, cpu µs per
message, cpu µs per host per second (what N hosts cost: multiply), and the cpu µs per message of the
process serving the hosts (the sending side: what a simulator spends per report; docs/scaling.md, part
24).
``python bench/usage_stream_cost.py [--hosts 300] [--containers 20] [--interval 3] [--rounds 3]``; prints
a table and writes JSON to ``bench/results/usage-stream-cost.json``. Write-up: docs/scaling.md
("Part 9"), docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds  # noqa: E402
from bench.rounds import child_role, interleaved, serving, window, write  # noqa: E402
from bench.session_memory import serve, start_following  # noqa: E402

SETTLE_S = 5.0       # after every stream is open, before the window
WINDOW_S = 12.0      # cpu and messages counted over this long (four reports at a 3 s interval)
BOUND_S = 120.0      # every wait is bounded


async def create_containers(hosts: int, base: int, containers: int) -> None:
    """``containers`` running containers on each simulated host, labelled as the scheduler's replicas."""
    import grpc

    from proto.agent.v1 import agent_pb2 as pb
    from proto.agent.v1 import agent_pb2_grpc as pb_grpc
    from scheduler.model import LABEL_GENERATION, LABEL_REPLICA, LABEL_SERVICE

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{base + i}") for i in range(hosts)]

    async def create(channel: grpc.aio.Channel, i: int, j: int) -> None:
        cid = f"svc{j}-{i:05d}-{j:04x}"
        spec = pb.ContainerSpec(image="registry.example/app:1", command=["sleep", "1000"],
                                labels={LABEL_SERVICE: f"svc{j}", LABEL_REPLICA: cid, LABEL_GENERATION: "1"})
        await pb_grpc.ContainersStub(channel).CreateContainer(
            pb.CreateContainerRequest(id=cid, name=cid, start=True, spec=spec), timeout=BOUND_S)

    for j in range(containers):
        await asyncio.gather(*(create(channel, i, j) for i, channel in enumerate(channels)))
    for channel in channels:
        await channel.close()


async def measure(scenario: str, hosts: int, base: int, hosts_pid: int) -> dict[str, float]:
    """One scenario in this (fresh) process; ``hosts_pid`` is the process serving the hosts."""
    import grpc

    from proto.agent.v1 import agent_pb2 as pb
    from proto.agent.v1 import agent_pb2_grpc as pb_grpc
    from scheduler.agents import AgentSession
    from scheduler.loop_stalls import LoopStalls
    from scheduler.model import HostId

    addresses = [f"127.0.0.1:{base + i}" for i in range(hosts)]
    received = 0  # reports drained, or seen by the sessions
    tasks: list[asyncio.Task[None]] = []
    sessions: list[AgentSession] = []
    channels: list[grpc.aio.Channel] = []

    async def drain(channel: grpc.aio.Channel, decode: bool) -> None:
        nonlocal received
        deserializer = pb.UsageSnapshot.FromString if decode else None
        call = channel.unary_stream("/shoal.agent.v1.Host/WatchUsage",
                                    request_serializer=pb.WatchUsageRequest.SerializeToString,
                                    response_deserializer=deserializer)
        async for _ in call(pb.WatchUsageRequest()):
            received += 1

    async def count_reports() -> None:
        """Each report replaces its session's undecoded report (a new bytes object), looked for five
        times a second (reports come at most once a second per host)."""
        nonlocal received
        last: list[bytes | None] = [None] * len(sessions)
        while True:
            for i, session in enumerate(sessions):
                report = session._report  # the benchmark counts reports: a private read
                if report is not None and report is not last[i]:
                    last[i] = report
                    received += 1
            await asyncio.sleep(0.2)

    if scenario in ("bytes", "decoded"):
        for address in addresses:
            channel = grpc.aio.insecure_channel(address)
            channels.append(channel)
            await pb_grpc.HostStub(channel).GetHost(pb.GetHostRequest(), timeout=BOUND_S)
            tasks.append(asyncio.create_task(drain(channel, scenario == "decoded")))
    else:
        paced, _, keepalive = scenario.partition("@")[2].partition("+keepalive")
        interval = float(paced or 0)
        stalls = LoopStalls()  # one for all, as the leader's controller (and a worker) shares one
        stalls.start()
        sessions = [AgentSession(HostId(f"h{i}"), a, credentials=None, on_change=lambda _h: None,
                                 heartbeat_timeout=max(2.0, 2 * interval), usage_interval=interval,
                                 stalls=stalls, keepalive=float(keepalive or 0))
                    for i, a in enumerate(addresses)]
        await start_following(sessions, "usage_stream_cost")
        tasks.append(asyncio.create_task(count_reports()))
    await asyncio.sleep(SETTLE_S)
    theirs = cpu_seconds(hosts_pid)
    cpu, messages, elapsed = await window(lambda: received, 0.0, WINDOW_S)
    theirs = cpu_seconds(hosts_pid) - theirs
    for task in tasks:
        task.cancel()
    for session in sessions:
        await session.close()
    for channel in channels:
        await channel.close()
    return {"messages_per_s": round(messages / elapsed, 1),
            "cpu_us_per_message": round(cpu / messages * 1e6) if messages else 0,
            "cpu_us_per_host_s": round(cpu / elapsed / hosts * 1e6),
            "hosts_cpu_us_per_message": round(theirs / messages * 1e6) if messages else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=3.0, help="the session@I scenario's interval")
    parser.add_argument("--keepalive", type=float, default=0.0,
                        help="also the session@I scenario with keepalive pings this often (0: not)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each scenario this often (the median is shown)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--hosts-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--base-port", type=int, default=32000, help="the hosts listen on this port and up")
    parser.add_argument("--out", default=str(ROOT / "bench/results/usage-stream-cost.json"))
    args = parser.parse_args()
    if (args.hosts < 1 or args.containers < 0 or args.interval <= 0 or args.rounds < 1
            or args.base_port + args.hosts > 65535):
        raise SystemExit("usage_stream_cost: --hosts and --rounds at least 1, --containers not negative, "
                         "--interval positive, and --base-port + --hosts at most 65535")
    if child_role(args, lambda: serve(args.hosts, args.base_port),
                  lambda scenario: measure(scenario, args.hosts, args.base_port, args.hosts_pid)):
        return
    me = [sys.executable, str(Path(__file__).resolve()), "--hosts", str(args.hosts),
          "--base-port", str(args.base_port)]
    scenarios = ["bytes", "decoded", "session", f"session@{args.interval:g}"]
    if args.keepalive > 0:
        scenarios.append(f"session@{args.interval:g}+keepalive{args.keepalive:g}")
    with serving([*me, "--serve"], "usage_stream_cost: the simulated hosts did not start (ports in use? "
                 "choose --base-port)", BOUND_S) as hosts_pid:
        asyncio.run(create_containers(args.hosts, args.base_port, args.containers))
        print(f"{args.hosts} hosts with {args.containers} containers each", flush=True)
        results = interleaved([*me, "--hosts-pid", str(hosts_pid)], scenarios, args.rounds,
                              timeout=4 * BOUND_S)
    for scenario in scenarios:
        shown = ", ".join(f"{k} {v['median']:g} ({v['min']:g}-{v['max']:g})"
                          for k, v in results[scenario].items())
        print(f"{scenario:>22}: {shown}", flush=True)
    write(args.out, {"hosts": args.hosts, "containers_per_host": args.containers, "rounds": args.rounds,
                     "keepalive": args.keepalive, "scenarios": results})


if __name__ == "__main__":
    main()
