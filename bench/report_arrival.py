"""What a usage report costs its receiver by how the reports arrive: spread out, or together.

The process that follows hosts (the leader, or its session worker) receives one message per host per
report interval, each on its host's own connection. grpc.aio pays for a message partly per wakeup of its
pollers, so the same messages cost less when many arrive at once. This measures the receiver's cpu per
message for N streams, each on a connection of its own, each sending a pre-serialized ``UsageSnapshot``
of C containers once a second from a child process (a message built once, so that a burst leaves the
sender as tightly as it would leave N separate hosts; ``bench/usage_stream_cost.py`` measures the real
sessions against simulated hosts, whose sending spreads a burst out):

* ``spread, BDP probes``: each stream at its own moment of the second, the receiver's channels with
  gRPC's defaults (BDP probes on, as on the scheduler's agent channels);
* ``spread``: the same with the scheduler's agent channel options (``scheduler.agents.CHANNEL_OPTIONS``)
  and BDP probes off (``NO_BDP_PROBES``, tried in part 20 and not kept: at 5,000 hosts sessions broke
  for missed heartbeats), as are the two below;
* ``10 phases``: the streams in ten bursts a second, as agents reporting at ten phases of the wall
  clock would send them (tried in part 20 and not kept: on one shared machine the simulated hosts'
  bursts slowed everything else);
* ``1 phase``: every stream at the same moment.

Each scenario in a fresh receiver process, interleaved over ``--rounds`` rounds; reported as the median
(min-max) of messages a second and cpu µs per message. ``python bench/report_arrival.py [--streams 1000]
[--containers 20] [--rounds 3]``; prints a table and writes JSON to
``bench/results/report-arrival.json``. Write-up: docs/scaling.md ("Part 20"), docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rounds import child_role, interleaved, serving, window, write  # noqa: E402

SETTLE_S = 5.0   # after every stream is open, before the window
WINDOW_S = 10.0  # cpu and messages counted over this long
BOUND_S = 120.0  # every wait is bounded
METHOD = "/shoal.bench.Reports/Watch"
NO_BDP_PROBES = ("grpc.http2.bdp_probe", 0)
SCENARIOS = {  # name: (phases a second, 0 = each stream its own; the scheduler's options, no BDP probes)
    "spread, BDP probes": (0, False),
    "spread": (0, True),
    "10 phases": (10, True),
    "1 phase": (1, True),
}


def payload(containers: int) -> bytes:
    """A usage report of ``containers`` running containers, serialized."""
    from proto.agent.v1 import agent_pb2 as pb

    snap = pb.UsageSnapshot(sequence=1, sample_seconds=0.001)
    snap.host.host_id = "0" * 32
    snap.host.hostname = "host-00000"
    snap.time.GetCurrentTime()
    for j in range(containers):
        c = snap.containers.add(id=f"svc{j}-00000-{j:04x}", name=f"svc{j}-00000-{j:04x}",
                                image="registry.example/app:1", cpu_cores=0.05, memory_usage_bytes=48 << 20,
                                memory_working_set_bytes=48 << 20, memory_rss_bytes=40 << 20,
                                memory_limit_bytes=64 << 20, pids=1)
        c.labels.update({"shoal.service": f"svc{j}", "shoal.replica": f"svc{j}-00000-{j:04x}"})
        c.started_at.GetCurrentTime()
    return snap.SerializeToString()


async def serve(port: int, containers: int) -> None:
    """The child: one server whose ``Watch`` streams send the report once a second, at the phase the
    request asks for (its bytes: the stream's index and the phases a second), until stdin closes."""
    import grpc

    message = payload(containers)

    async def watch(request: bytes, context: Any) -> Any:
        index, phases = (int(x) for x in request.decode().split())
        phase = (index % phases) / phases if phases else (index * 0.618034) % 1.0
        while True:
            await asyncio.sleep((phase - time.time()) % 1.0)
            yield message
            await asyncio.sleep(0.01)  # past the moment, so that the next wait is a whole second

    handler = grpc.method_handlers_generic_handler(
        "shoal.bench.Reports", {"Watch": grpc.unary_stream_rpc_method_handler(watch)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)


async def measure(scenario: str, streams: int, port: int) -> dict[str, float]:
    """One scenario in this (fresh) process: ``streams`` channels, one stream each, drained as bytes."""
    import grpc

    from scheduler.agents import CHANNEL_OPTIONS

    phases, ours = SCENARIOS[scenario]
    # A pool of its own per channel: a connection per channel, as a session has to its own host.
    options = [("grpc.use_local_subchannel_pool", 1), *((*CHANNEL_OPTIONS, NO_BDP_PROBES) if ours else ())]
    received = 0
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(streams)]

    async def drain(channel: grpc.aio.Channel, index: int) -> None:
        nonlocal received
        async for _ in channel.unary_stream(METHOD)(f"{index} {phases}".encode()):
            received += 1

    tasks = [asyncio.create_task(drain(channel, i)) for i, channel in enumerate(channels)]
    deadline = time.monotonic() + BOUND_S
    while received < streams:  # every stream has sent once: all are open
        if time.monotonic() > deadline:
            raise SystemExit(f"report_arrival: {received} of {streams} streams sent within {BOUND_S:.0f} s")
        await asyncio.sleep(0.2)
    cpu, messages, elapsed = await window(lambda: received, SETTLE_S, WINDOW_S)
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()
    return {"messages_per_s": round(messages / elapsed, 1),
            "cpu_us_per_message": round(cpu / messages * 1e6) if messages else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3,
                        help="each scenario this often (the median is shown)")
    parser.add_argument("--port", type=int, default=31999)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench/results/report-arrival.json"))
    args = parser.parse_args()
    if args.streams < 1 or args.containers < 0 or args.rounds < 1 or not 0 < args.port < 65536:
        raise SystemExit("report_arrival: --streams and --rounds at least 1, --containers not negative, "
                         "--port a port")
    if child_role(args, lambda: serve(args.port, args.containers),
                  lambda scenario: measure(scenario, args.streams, args.port)):
        return
    me = [sys.executable, str(Path(__file__).resolve()), "--streams", str(args.streams),
          "--port", str(args.port)]
    with serving([*me, "--containers", str(args.containers), "--serve"],
                 "report_arrival: the sender did not start (port in use? choose --port)", BOUND_S):
        results = interleaved(me, list(SCENARIOS), args.rounds, timeout=2 * BOUND_S)
    print(f"{args.streams} streams, a report of {args.containers} containers each a second")
    print(f"{'arrival':>20} | {'messages/s':>10} | cpu µs per message (min-max)")
    for scenario in SCENARIOS:
        rate, cost = results[scenario]["messages_per_s"], results[scenario]["cpu_us_per_message"]
        print(f"{scenario:>20} | {rate['median']:>10g} | "
              f"{cost['median']:g} ({cost['min']:g}-{cost['max']:g})")
    write(args.out, {"streams": args.streams, "containers_per_report": args.containers, "rounds": args.rounds,
                     "scenarios": results})


if __name__ == "__main__":
    main()
