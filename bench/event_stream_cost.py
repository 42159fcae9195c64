"""What a host's container events cost to send and to follow, one to a message or in batches.

A scheduler follows every host on one ``WatchHost`` stream (docs/scaling.md, part 15). When a pass
launches replicas, each host gets one ``CreateContainers`` call and answers with two events per
container (created, started); at 5,000 hosts placing 100,000 replicas that is 200,000 events. Since
part 23 the follower asks for the events that wait together as one message (``batch_events``). This
measures, for N simulated hosts (``bench/sim``, served by a child process on 127.0.0.1) followed by a
real ``AgentSession`` each, the cpu of the follower and of the hosts' process from the launch of C
containers on every host (one ``CreateContainers`` call each, made by a process of its own, as the
scheduler's actuator would) until every session has seen every container running:

* ``one``: hosts that send one message per event (an agent from before ``batch_events``);
* ``batched``: hosts that send what waits together as one message, as agents do now.

Each scenario runs in a fresh follower process, interleaved over ``--rounds`` (median, min-max beside).
Reported: events, seconds until all were seen running, and cpu µs per event of the follower and of
the hosts' process.
``python bench/event_stream_cost.py [--hosts 200] [--containers 20] [--rounds 3]``; prints a table and
writes JSON to ``bench/results/event-stream-cost.json``. Write-up: docs/scaling.md ("Part 23"),
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds  # noqa: E402
from bench.rounds import child_role, interleaved, serving, write  # noqa: E402

SCENARIOS = ("one", "batched")
BOUND_S = 120.0  # every wait is bounded
QUIET_INTERVAL_S = 60.0  # usage reports this rarely: the window holds events, not reports


def _base(args: argparse.Namespace, scenario: str) -> int:
    """The hosts of a scenario: the first ``--hosts`` send one event a message, the next batch them."""
    return int(args.base_port) + (int(args.hosts) if scenario == "batched" else 0)


async def serve(args: argparse.Namespace) -> None:
    """The child: both scenarios' hosts, until stdin closes; its pid in ``--pid-file``."""
    from bench.sim.host import HostSpec, SimHost

    sims = [SimHost(HostSpec(name=f"ev-{i:05d}", port=args.base_port + i, batch_events=i >= args.hosts))
            for i in range(2 * args.hosts)]
    for sim in sims:
        await sim.start()
    Path(args.pid_file).write_text(str(os.getpid()))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for sim in sims:
        await sim.stop()


async def launch(args: argparse.Namespace) -> None:
    """The launching child: ``--containers`` started containers on each of the scenario's hosts, one
    ``CreateContainers`` call per host, ids unique to this launch (``--tag``)."""
    import grpc

    from proto.agent.v1 import agent_pb2 as pb
    from proto.agent.v1 import agent_pb2_grpc as pb_grpc
    from scheduler.model import LABEL_GENERATION, LABEL_REPLICA, LABEL_SERVICE

    base = _base(args, args.launch)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{base + i}") for i in range(args.hosts)]

    async def create(channel: grpc.aio.Channel, i: int) -> None:
        requests = []
        for j in range(args.containers):
            cid = f"{args.tag}-{i:05d}-{j:04x}"
            labels = {LABEL_SERVICE: f"svc{j}", LABEL_REPLICA: cid, LABEL_GENERATION: "1"}
            spec = pb.ContainerSpec(image="registry.example/app:1", command=["sleep", "1000"], labels=labels)
            requests.append(pb.CreateContainerRequest(id=cid, name=cid, start=True, spec=spec))
        answer = await pb_grpc.ContainersStub(channel).CreateContainers(
            pb.CreateContainersRequest(containers=requests), timeout=BOUND_S)
        if any(r.HasField("error") for r in answer.results):
            raise SystemExit(f"event_stream_cost: a create failed on host {i}")

    await asyncio.gather(*(create(channel, i) for i, channel in enumerate(channels)))
    for channel in channels:
        await channel.close()


async def measure(scenario: str, args: argparse.Namespace) -> dict[str, float]:
    """One scenario in this (fresh) process: follow the scenario's hosts, launch, time until all run."""
    from bench.session_memory import start_following
    from scheduler.agents import AgentSession
    from scheduler.loop_stalls import LoopStalls
    from scheduler.model import HostId
    from scheduler.observed import ContainerState

    base = _base(args, scenario)
    stalls = LoopStalls()
    stalls.start()
    sessions = [AgentSession(HostId(f"h{i}"), f"127.0.0.1:{base + i}", credentials=None,
                             on_change=lambda _h: None, heartbeat_timeout=2 * QUIET_INTERVAL_S,
                             usage_interval=QUIET_INTERVAL_S, stalls=stalls)
                for i in range(args.hosts)]
    await start_following(sessions, "event_stream_cost")
    tag = f"{scenario}-{os.getpid()}"
    server = int(Path(args.pid_file).read_text())
    await asyncio.sleep(1.0)  # the first reports and listings are read before the window
    mine, theirs, started = cpu_seconds(os.getpid()), cpu_seconds(server), time.monotonic()
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--hosts", str(args.hosts), "--containers",
        str(args.containers), "--base-port", str(args.base_port), "--pid-file", args.pid_file,
        "--launch", scenario, "--tag", tag)

    def running(session: AgentSession) -> int:
        return sum(1 for cid, c in session.observation.containers.items()
                   if cid.startswith(tag) and c.state is ContainerState.RUNNING)

    wanted = args.hosts * args.containers
    try:
        while sum(map(running, sessions)) < wanted:
            if launcher.returncode not in (None, 0):
                raise SystemExit("event_stream_cost: the launch failed (its error is above)")
            if time.monotonic() - started > BOUND_S:
                raise SystemExit("event_stream_cost: the containers were not all seen running in time")
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        follower, hosts = cpu_seconds(os.getpid()) - mine, cpu_seconds(server) - theirs
        if await asyncio.wait_for(launcher.wait(), BOUND_S) != 0:
            raise SystemExit("event_stream_cost: the launch failed (its error is above)")
    finally:
        if launcher.returncode is None:  # a failed round leaves no launcher behind
            launcher.kill()
            await launcher.wait()
    for session in sessions:
        await session.close()
    events = 2 * wanted  # created and started, each
    return {"events": events, "seconds": round(elapsed, 2),
            "follower_cpu_us_per_event": round(follower / events * 1e6, 1),
            "hosts_cpu_us_per_event": round(hosts / events * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--containers", type=int, default=20, help="launched on each host per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each scenario this often (the median is shown)")
    parser.add_argument("--base-port", type=int, default=34000, help="the hosts listen on this port and up")
    parser.add_argument("--out", default=str(ROOT / "bench/results/event-stream-cost.json"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--launch", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--pid-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.hosts < 1 or args.containers < 1 or args.rounds < 1
            or args.base_port + 2 * args.hosts > 65535):
        raise SystemExit("event_stream_cost: --hosts, --containers and --rounds at least 1, and "
                         "--base-port + 2 x --hosts at most 65535")
    if args.launch:
        asyncio.run(launch(args))
        return
    if child_role(args, lambda: serve(args), lambda scenario: measure(scenario, args)):
        return
    pid_file = Path(f"/tmp/event_stream_cost.{os.getpid()}.pid")
    me = [sys.executable, str(Path(__file__).resolve()), "--hosts", str(args.hosts), "--containers",
          str(args.containers), "--base-port", str(args.base_port), "--pid-file", str(pid_file)]
    try:
        with serving([*me, "--serve"], "event_stream_cost: the simulated hosts did not start (ports in "
                     "use? choose --base-port)", BOUND_S):
            print(f"{args.hosts} hosts a scenario, {args.containers} containers launched on each a round",
                  flush=True)
            results = interleaved(me, SCENARIOS, args.rounds, timeout=4 * BOUND_S)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"event_stream_cost: a scenario failed: {err.stderr or err}") from err
    finally:
        pid_file.unlink(missing_ok=True)
    for scenario in SCENARIOS:
        shown = ", ".join(f"{k} {v['median']:g} ({v['min']:g}-{v['max']:g})"
                          for k, v in results[scenario].items())
        print(f"{scenario:>8}: {shown}", flush=True)
    write(args.out, {"hosts": args.hosts, "containers_per_host": args.containers, "rounds": args.rounds,
                     "scenarios": results})


if __name__ == "__main__":
    main()
