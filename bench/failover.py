"""Failover: a host dies (Shoal beside Docker Swarm), the scheduler leader is SIGKILLed (Shoal), repeated.

One invocation sets up, in a temp dir and in network namespaces it creates (``tests.fixtures.netns``, as
``bench.cluster_scale`` does; nothing in the root network namespace), each peer on ``--hosts`` hosts:

* **Shoal** (``bench.cluster_shoal``): a control host with etcd and **two** ``shoal-scheduler serve``
  instances (``s1``, ``s2``; ``--scheduler-arg`` passes flags such as a host grace period to both), and
  one ``shoal-agent serve`` per host joined to both, mutual TLS as in production;
* **Docker Swarm** (``bench.cluster_swarm``): one ``dockerd`` 20.10 per host, the first the manager
  (which also runs tasks), the others workers; stock settings (5 s restart delay).

Every replica is ``bench.cluster_scale``'s busybox workload (``sh -c "trap 'exit 0' TERM; sleep 3600 &
wait"``, cpu limit 0.5, request 0.01, 16 MiB), spread over the hosts.

Scenarios, each repeated ``--reps`` times, every wait bounded by ``--timeout`` seconds:

* **host-death** (both peers). A service of ``--per-host`` times ``--hosts`` replicas is created, waited for
  until it runs on every host (untimed). The victim host (Shoal: each agent host in turn; Swarm: each
  worker in turn, the manager being the only one) dies at once: Shoal's agent and supervisor SIGKILLed,
  then every process left in the agent's cgroup parent (the containers); Swarm's dockerd, containerd and
  shims SIGKILLed, then its cgroup parent's processes; for both, the host's port on the switch is set
  down (``ip link set pN down`` in the switch namespace). The clock starts just before the first kill
  and stops at the first poll (every ``--interval`` s, through the peer's API: the scheduler's
  ``ListReplicas`` / the manager's ``/tasks``) that counts the full
  number of replicas running — and ready, for Shoal — on the other hosts. Also recorded: when the peer
  first showed the host as not ready (Shoal's ``ListHosts``; Swarm's node ``down``), and the most
  replicas seen running at once (more than the count would be a duplicate). Then, untimed: the port up,
  the host started again on its old state (a new agent on the same root; dockerd on the same roots),
  waited for until ready, the service deleted and waited for until no container of it is left on any
  host (a dead container the peer did not remove is removed by hand and counted as ``leftovers``).
* **leader-kill** (Shoal). A service of ``--hosts`` replicas runs. The instance holding the election key
  (read from etcd) is SIGKILLed — no resign: its lease must expire — and at the same instant ``shoal
  scale`` (a whole CLI process) asks the surviving instance, through its own socket, for one replica
  more. The clock starts just before the kill and stops at the first poll of the survivor's API that
  counts the new replica running (the first action of the new leader); also recorded: when the
  election key first names the survivor. Then, untimed: the killed instance started again, the service
  scaled back and waited for.

Run as root, from the repository root, with the project's venv::

    .venv/bin/python bench/failover.py [--reps 20] [--hosts 3] [--peers shoal,swarm] \\
        [--scenarios host-death,leader-kill] [--leader-reps N] [--scheduler-arg=--host-grace=2] \\
        [--out bench/results/failover.json] [--plot docs/img/failover.png]

It prints a table (p50/p99/max per scenario and peer) and writes JSON (machine, load average, every
rep); ``--plot`` draws it (``bench.failover_plot``). Tear-down (also after an error or ^C) stops every
process it started and removes every container, mount, cgroup, namespace and file it created.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `proto` and `tests` importable
    sys.path.insert(0, str(REPO))

from bench.cluster_daemon import dispose, run_checked, wait_for  # noqa: E402
from bench.cluster_peer import Workload  # noqa: E402
from bench.cluster_scale import COMMAND, build_image, machine, write_result  # noqa: E402
from bench.cluster_shoal import BIN, ShoalCluster  # noqa: E402
from bench.cluster_swarm import SwarmCluster  # noqa: E402
from proto.scheduler.v1 import scheduler_pb2 as spb  # noqa: E402
from tests.fixtures.netns import NetWorld, TestHost  # noqa: E402

SCENARIOS = ("host-death", "leader-kill")
PEERS = ("shoal", "swarm")


@dataclass
class Rep:
    scenario: str
    peer: str
    rep: int
    victim: str  # the host (h2, ...) or scheduler instance (s1, s2) killed
    replicas: int  # the count waited for
    recovered_s: float | None = None  # kill → the full count running elsewhere (None: timed out)
    detected_s: float | None = None  # kill → host shown not ready / node down; leader-kill: new leader
    command_s: float | None = None  # leader-kill: the `shoal scale` process, start to exit
    most_running: int = 0  # most replicas seen running at once during the rep
    polls: int = 0
    restore_s: float = 0.0  # untimed part: host or instance back, service cleared
    leftovers: int = 0  # containers the peer left behind after restore, removed by hand
    error: str = ""


@dataclass
class Options:
    reps: int
    per_host: int
    interval: float
    timeout: float
    settle: float


# -- the network side -------------------------------------------------------------------------------------


def set_port(world: NetWorld, host: TestHost, *, up: bool) -> None:
    """The host's port on the switch up or down (its veth's peer in the switch namespace)."""
    port = f"p{world.hosts.index(host) + 1}"  # NetWorld.add_host's naming
    run_checked(["ip", "-n", world.switch, "link", "set", port, "up" if up else "down"])


def poll_until(
    done: Callable[[], tuple[bool, int]],
    *,
    start: float,
    options: Options,
    on_poll: Callable[[float], None] = lambda _: None,
) -> tuple[float | None, int, int, str]:
    """Poll ``done`` (→ finished?, replicas running) every interval until it is finished or the timeout
    passes; returns (seconds from ``start`` when finished or None, most running seen, polls, last error)."""
    most = polls = 0
    error = ""
    while True:
        before = time.perf_counter()
        try:
            finished, running = done()
            error = ""
        except Exception as err:  # a failed poll is a result too: keep polling until the timeout
            finished, running, error = False, -1, str(err)[:300]
        polls += 1
        elapsed = time.perf_counter() - start
        most = max(most, running)
        on_poll(elapsed)
        if finished:
            return elapsed, most, polls, ""
        if elapsed > options.timeout:
            return (
                None,
                most,
                polls,
                f"not recovered after {options.timeout:.0f} s"
                + (f" (last poll error: {error})" if error else ""),
            )
        time.sleep(max(0.0, options.interval - (time.perf_counter() - before)))


# -- Shoal ------------------------------------------------------------------------------------------------


def shoal_running(cluster: ShoalCluster, service: str, *, not_on: str = "") -> list[spb.Replica]:
    replicas = cluster.stub().ListReplicas(spb.ListReplicasRequest(service=service), timeout=5).replicas
    return [
        r
        for r in replicas
        if r.state == spb.REPLICA_STATE_RUNNING and r.ready and (not not_on or r.host != not_on)
    ]


def shoal_host_ready(cluster: ShoalCluster, host_id: str) -> bool:
    hosts = cluster.stub().ListHosts(spb.ListHostsRequest(), timeout=5).hosts
    return any(h.id == host_id and h.state == spb.HOST_STATE_READY for h in hosts)


def shoal_clear(cluster: ShoalCluster, service: str, options: Options) -> int:
    """Delete the service and wait until nothing of it is left; returns the containers removed by hand."""
    cluster.remove(service)
    stub = cluster.stub()
    wait_for(
        f"service {service} gone from the scheduler",
        lambda: (
            not stub.ListReplicas(spb.ListReplicasRequest(service=service), timeout=5).replicas
            and all(
                s.spec.name != service
                for s in stub.ListServices(spb.ListServicesRequest(), timeout=5).services
            )
        ),
        timeout=options.timeout,
        interval=0.2,
    )
    try:
        wait_for(
            "every container gone",
            lambda: all(not cluster.containers(i) for i in range(1, len(cluster.hosts) + 1)),
            timeout=min(30.0, options.timeout),
            interval=0.3,
        )
        return 0
    except RuntimeError:
        removed = 0
        for i in range(1, len(cluster.hosts) + 1):
            ids = cluster.containers(i)
            if ids:
                run_checked(
                    [str(BIN / "shoal"), "--agent", f"unix://{cluster.agent_socket(i)}", "rm", "-f", *ids]
                )
                removed += len(ids)
        return removed


def shoal_host_death(cluster: ShoalCluster, world: NetWorld, options: Options) -> list[Rep]:
    reps = []
    for r in range(1, options.reps + 1):
        reps.append(shoal_host_death_rep(cluster, world, options, r, (r - 1) % len(cluster.hosts) + 1))
        report(reps[-1])
    return reps


def shoal_host_death_rep(cluster: ShoalCluster, world: NetWorld, options: Options, r: int, i: int) -> Rep:
    """One rep: host ``i`` dies; then it comes back and the service is cleared."""
    n = options.per_host * len(cluster.hosts)
    service = f"hd{r}"
    rep = Rep("host-death", "shoal", r, f"h{i}", n)
    try:
        run_checked(cluster.create_argv(service, n))
        wait_for(
            f"{n} replicas of {service} running on every host",
            lambda: (
                len(running := shoal_running(cluster, service)) == n
                and len({x.host for x in running}) == len(cluster.hosts)
            ),
            timeout=options.timeout,
        )
        victim = cluster.host_id(i)
        time.sleep(options.settle)
        start = time.perf_counter()
        cluster.kill_host(i)
        set_port(world, cluster.hosts[i - 1], up=False)

        def seen(elapsed: float) -> None:
            if rep.detected_s is None and not shoal_host_ready(cluster, victim):
                rep.detected_s = elapsed

        def done() -> tuple[bool, int]:
            count = len(shoal_running(cluster, service, not_on=victim))
            return count >= n, count

        rep.recovered_s, rep.most_running, rep.polls, rep.error = poll_until(
            done, start=start, options=options, on_poll=seen
        )
    except Exception as err:
        rep.error = str(err)[:800]
    finally:
        began = time.perf_counter()
        set_port(world, cluster.hosts[i - 1], up=True)
        if not cluster.daemon(f"agent{i}").alive():
            cluster.start_agent(i)
        wait_for(
            f"host h{i} ready again",
            lambda: shoal_host_ready(cluster, cluster.host_id(i)),
            timeout=options.timeout,
            daemons=[cluster.daemon(f"agent{i}")],
        )
        rep.leftovers = shoal_clear(cluster, service, options)
        rep.restore_s = time.perf_counter() - began
    return rep


def shoal_leader_kill(cluster: ShoalCluster, options: Options) -> list[Rep]:
    service = "lk"
    base = len(cluster.hosts)
    run_checked(cluster.create_argv(service, base))
    wait_for(
        f"{base} replicas of {service}",
        lambda: len(shoal_running(cluster, service)) == base,
        timeout=options.timeout,
    )
    reps = []
    for r in range(1, options.reps + 1):
        reps.append(shoal_leader_kill_rep(cluster, options, r, service, base))
        report(reps[-1])
    cluster.remove(service)
    return reps


def shoal_leader_kill_rep(cluster: ShoalCluster, options: Options, r: int, service: str, base: int) -> Rep:
    """One rep: the leader SIGKILLed while the service is scaled to ``base + 1`` through the other
    instance; then the killed one restarted and the service scaled back to ``base``."""
    leader = cluster.leader()
    if leader not in ("s1", "s2"):
        raise RuntimeError(f"no leader to kill: the election key names {leader!r}")
    killed = int(leader[1:])
    survivor = 3 - killed
    cluster.use_scheduler(survivor)
    rep = Rep("leader-kill", "shoal", r, leader, base + 1)
    try:
        time.sleep(options.settle)
        start = time.perf_counter()
        cluster.kill_scheduler(killed)
        scale = subprocess.Popen(
            cluster.cli_at(survivor, "scale", service, "--replicas", str(base + 1)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def seen(elapsed: float) -> None:
            if rep.command_s is None and scale.poll() is not None:
                rep.command_s = elapsed
            if rep.detected_s is None and cluster.leader() == f"s{survivor}":
                rep.detected_s = elapsed

        def done() -> tuple[bool, int]:
            count = len(shoal_running(cluster, service))
            return count >= base + 1, count

        rep.recovered_s, rep.most_running, rep.polls, rep.error = poll_until(
            done, start=start, options=options, on_poll=seen
        )
        _, stderr = scale.communicate(timeout=options.timeout)
        if scale.returncode != 0:
            rep.error = f"shoal scale exited {scale.returncode}: {stderr.decode()[-300:]} {rep.error}"
    except Exception as err:
        rep.error = str(err)[:800]
    finally:
        began = time.perf_counter()
        cluster.start_scheduler(killed)
        wait_for(
            f"instance s{killed} answering again",
            lambda: cluster.answers(killed),
            timeout=options.timeout,
            daemons=[cluster.daemon(cluster.instance_name(killed))],
        )
        run_checked(cluster.cli_at(survivor, "scale", service, "--replicas", str(base)))
        stub = cluster.stub()
        wait_for(
            f"{service} back to {base} replicas",
            lambda: (
                len(stub.ListReplicas(spb.ListReplicasRequest(service=service), timeout=5).replicas) == base
                and len(shoal_running(cluster, service)) == base
            ),
            timeout=options.timeout,
        )
        rep.restore_s = time.perf_counter() - began
    return rep


# -- Swarm ------------------------------------------------------------------------------------------------


def swarm_running(swarm: SwarmCluster, service: str, *, not_on: str = "") -> list[dict[str, Any]]:
    return [
        t
        for t in swarm.tasks(service)
        if t["Status"]["State"] == "running" and (not not_on or t.get("NodeID") != not_on)
    ]


def swarm_host_death(swarm: SwarmCluster, world: NetWorld, options: Options) -> list[Rep]:
    workers = list(range(2, len(swarm.hosts) + 1))
    if not workers:
        raise ValueError("a swarm needs a worker to kill: --hosts 2 or more")
    reps = []
    for r in range(1, options.reps + 1):
        reps.append(swarm_host_death_rep(swarm, world, options, r, workers[(r - 1) % len(workers)]))
        report(reps[-1])
    return reps


def swarm_host_death_rep(swarm: SwarmCluster, world: NetWorld, options: Options, r: int, i: int) -> Rep:
    """One rep: worker ``i`` dies; then it comes back and the service is cleared."""
    n = options.per_host * len(swarm.hosts)
    service = f"hd{r}"
    rep = Rep("host-death", "swarm", r, f"h{i}", n)
    try:
        run_checked(swarm.create_argv(service, n))
        wait_for(
            f"{n} tasks of {service} running on every node",
            lambda: (
                len(running := swarm_running(swarm, service)) == n
                and len({t["NodeID"] for t in running}) == len(swarm.hosts)
            ),
            timeout=options.timeout,
        )
        victim = swarm.node_id(i)
        time.sleep(options.settle)
        start = time.perf_counter()
        swarm.kill_node(i)
        set_port(world, swarm.hosts[i - 1], up=False)

        def seen(elapsed: float) -> None:
            if rep.detected_s is None and swarm.node_state(victim) == "down":
                rep.detected_s = elapsed

        def done() -> tuple[bool, int]:
            count = len(swarm_running(swarm, service, not_on=victim))
            return count >= n, count

        rep.recovered_s, rep.most_running, rep.polls, rep.error = poll_until(
            done, start=start, options=options, on_poll=seen
        )
    except Exception as err:
        rep.error = str(err)[:800]
    finally:
        began = time.perf_counter()
        set_port(world, swarm.hosts[i - 1], up=True)
        if not swarm.daemons[i - 1].alive():
            swarm.start_node(i)
        wait_for(
            f"node h{i} ready again",
            lambda: swarm.ready_nodes() == len(swarm.hosts),
            timeout=options.timeout,
            daemons=swarm.daemons,
        )
        swarm.remove(service)
        try:
            wait_for(f"{service} gone", lambda: swarm.gone(service), timeout=options.timeout, interval=0.3)
        except RuntimeError:
            rep.leftovers = swarm_force_clear(swarm)
        rep.restore_s = time.perf_counter() - began
    return rep


def swarm_force_clear(swarm: SwarmCluster) -> int:
    removed = 0
    for i in range(1, len(swarm.hosts) + 1):
        ids = run_checked(swarm.docker(i, "ps", "-aq")).split()
        if ids:
            run_checked(swarm.docker(i, "rm", "-f", *ids))
            removed += len(ids)
    return removed


# -- results ----------------------------------------------------------------------------------------------


def report(rep: Rep) -> None:
    shown = f"{rep.recovered_s:.2f} s" if rep.recovered_s is not None else "timed out"
    detected = f"{rep.detected_s:.2f} s" if rep.detected_s is not None else "-"
    print(
        f"{rep.scenario} {rep.peer:5} rep {rep.rep:2} victim {rep.victim}: recovered {shown}, "
        f"detected {detected}, most running {rep.most_running}/{rep.replicas}, restore {rep.restore_s:.1f} s"
        + (f", {rep.leftovers} left over" if rep.leftovers else "")
        + (f" [{rep.error}]" if rep.error else ""),
        file=sys.stderr,
        flush=True,
    )


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p99_s": None, "max_s": None, "min_s": None}
    return {
        "p50_s": statistics.median(values),
        "p99_s": percentile(values, 99),
        "max_s": max(values),
        "min_s": min(values),
    }


def summarize(reps: list[Rep]) -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        for peer in PEERS:
            mine = [r for r in reps if r.scenario == scenario and r.peer == peer]
            if not mine:
                continue
            done = [r.recovered_s for r in mine if r.recovered_s is not None]
            detected = [r.detected_s for r in mine if r.detected_s is not None]
            rows.append(
                {
                    "scenario": scenario,
                    "peer": peer,
                    "reps": len(mine),
                    "timed_out": len(mine) - len(done),
                    "recovered": stats(done),
                    "detected": stats(detected),
                    "most_running": max(r.most_running for r in mine),
                    "replicas": mine[0].replicas,
                    "leftovers": sum(r.leftovers for r in mine),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def cell(value: float | None) -> str:
        return f"{value:7.2f}" if value is not None else f"{'-':>7}"

    print(
        f"{'scenario':11} {'peer':5} {'reps':>4} {'t/o':>3} {'p50 s':>7} {'p99 s':>7} {'max s':>7}"
        f"  {'detected p50':>12} {'p99':>7}  {'most running':>12}"
    )
    for row in rows:
        rec, det = row["recovered"], row["detected"]
        print(
            f"{row['scenario']:11} {row['peer']:5} {row['reps']:>4} {row['timed_out']:>3} "
            f"{cell(rec['p50_s'])} {cell(rec['p99_s'])} {cell(rec['max_s'])}  {cell(det['p50_s']):>12} "
            f"{cell(det['p99_s'])}  {row['most_running']:>5}/{row['replicas']:<6}",
            flush=True,
        )


# -- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="repetitions per scenario (default %(default)s)")
    parser.add_argument("--leader-reps", type=int, help="repetitions of leader-kill (default: --reps)")
    parser.add_argument("--hosts", type=int, default=3, help="hosts per peer (default %(default)s)")
    parser.add_argument("--per-host", type=int, default=2, help="host-death replicas per host (default 2)")
    parser.add_argument("--peers", default=",".join(PEERS), help="default %(default)s")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="default %(default)s")
    parser.add_argument(
        "--scheduler-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra flag for both shoal-scheduler instances, e.g. --scheduler-arg=--host-grace=2",
    )
    parser.add_argument("--interval", type=float, default=0.05, help="poll interval, s (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=90.0, help="every wait, s (default %(default)s)")
    parser.add_argument("--settle", type=float, default=1.0, help="quiet before each kill, s (default 1)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "failover.json")
    parser.add_argument("--plot", type=Path, help="also draw the results into this PNG")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs) at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (network namespaces, cgroups, dockerd)")
    peer_names = args.peers.split(",")
    scenarios = args.scenarios.split(",")
    unknown = [p for p in peer_names if p not in PEERS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown peers or scenarios: {', '.join(unknown)}")
    if args.reps < 1 or args.hosts < 2:
        parser.error("--reps must be at least 1 and --hosts at least 2")
    options = Options(
        reps=args.reps,
        per_host=args.per_host,
        interval=args.interval,
        timeout=args.timeout,
        settle=args.settle,
    )
    workload = Workload(command=COMMAND, cpus=0.5, cpus_request=0.01, memory_mib=16)
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"shoal-fo-{tag}-", dir="/tmp"))
    load_before = os.getloadavg()
    print(f"working in {work} (tag {tag})", file=sys.stderr, flush=True)
    problems: list[str] = []
    reps: list[Rep] = []
    setup: dict[str, dict[str, float]] = {}
    interrupted = False
    with NetWorld() as world:
        shoal: ShoalCluster | None = None
        swarm: SwarmCluster | None = None
        try:
            image = build_image(work)
            if "shoal" in peer_names:
                shoal = ShoalCluster(
                    work=work / "shoal",
                    control=world.add_host(),
                    hosts=[world.add_host() for _ in range(args.hosts)],
                    tag=tag,
                    workload=workload,
                    schedulers=2,
                    scheduler_args=tuple(args.scheduler_arg),
                )
                setup["shoal"] = shoal.start(image)
            if "swarm" in peer_names and "host-death" in scenarios:
                swarm = SwarmCluster(
                    work=work / "swarm",
                    hosts=[world.add_host() for _ in range(args.hosts)],
                    tag=tag,
                    workload=workload,
                )
                setup["swarm"] = swarm.start(image)
            for name, took in setup.items():
                print(f"{name} up: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), file=sys.stderr)
            if shoal is not None and "leader-kill" in scenarios:
                leader_options = replace(options, reps=args.leader_reps or options.reps)
                reps += shoal_leader_kill(shoal, leader_options)
            if "host-death" in scenarios:
                if swarm is not None:
                    reps += swarm_host_death(swarm, world, options)
                if shoal is not None:
                    reps += shoal_host_death(shoal, world, options)
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: tearing down", file=sys.stderr)
        except Exception as err:
            problems.append(f"run stopped: {str(err)[:2000]}")
        finally:
            for peer in (shoal, swarm):
                if peer is not None:
                    problems += [f"{peer.name}: {p}" for p in peer.stop()]
    dispose(work, keep=args.keep_temp, problems=problems)
    if interrupted or not reps:
        return 1

    rows = summarize(reps)
    print_table(rows)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "workload": asdict(workload),
        "hosts_per_peer": args.hosts,
        "setup_s": setup,
        "summary": rows,
        "reps": [asdict(r) for r in reps],
        "problems": problems,
    }
    from bench.failover_plot import plot

    write_result(result, args.out, plot_to=args.plot, draw=plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
