"""Time from ``apply`` (and from ``scale 0 → N``) to N replicas running: Shoal beside Docker Swarm, one run.

One invocation sets up, in a temp dir and in network namespaces it creates (``tests.fixtures.netns``:
a switch namespace with a bridge, one namespace per "host", joined by veth pairs; nothing in the root
network namespace), both peers side by side, each on ``--hosts`` hosts:

* **Shoal** (``bench.cluster_shoal``): a control host with etcd and ``shoal-scheduler serve``, and one
  ``shoal-agent serve --join`` per host, mutual TLS between them as in production;
* **Docker Swarm** (``bench.cluster_swarm``): one ``dockerd`` 20.10 per host, the first the swarm's
  manager (which also runs tasks), the others workers.

Every replica is the same busybox image (imported on every host beforehand: no pulls), running
``sh -c "trap 'exit 0' TERM; sleep 3600 & wait"`` with the same cpu limit (``--cpus``, default 0.5) and
cpu reservation (``--cpus-request``, 0.01: what placement counts, so 100 replicas fit on two hosts) and
memory limit and reservation (``--memory-mib``, 16), spread over the hosts, on each peer's default
bridge network.

A **trial** is one peer, one mode and one N. ``apply``: the peer's CLI creates a service of N replicas
(``shoal apply -f`` / ``docker service create --detach``). ``scale``: a service created at 0 replicas
(untimed), then the CLI scales it to N (``shoal scale`` / ``docker service scale --detach``). The clock
starts just before the CLI process is spawned; it stops at the first poll that counts N replicas
running — the scheduler's replicas in state running / the swarm's tasks running with desired state
running (see the peers' modules), polled every ``--interval`` seconds through each peer's API, or with
``--poll cli`` by running ``shoal get replicas -o json`` / ``docker service ps``; a trial that does not
get there within ``--timeout`` seconds is recorded as timed out. After each trial the service is removed
and the benchmark waits until no container of it is left on any host, then ``--settle`` seconds.
Each round runs every (peer, mode, N) once in a shuffled order (``--seed``), after one untimed warm-up
trial per peer.

Run as root, from the repository root, with the project's venv::

    .venv/bin/python bench/cluster_scale.py [--n 10,50,100] [--rounds 5] [--hosts 2] \\
        [--out bench/results/cluster_scale.json] [--plot docs/img/cluster_scale.png]

It prints a table and writes JSON (machine, load average, every trial with its poll samples and the cpu
time each peer's long-lived processes used); ``--plot`` draws it (``bench.cluster_plot``). With
``--profile DIR`` it records py-spy profiles of Shoal's processes during the round-1 apply of the
largest N. Tear-down (also after an error or ^C) stops every process it started and removes every
container, mount, cgroup, namespace and file it created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `proto` and `tests` importable
    sys.path.insert(0, str(REPO))

from bench.cluster_daemon import dispose, wait_for  # noqa: E402
from bench.cluster_peer import BenchImage, Peer, Workload  # noqa: E402
from bench.cluster_shoal import ShoalCluster  # noqa: E402
from bench.cluster_swarm import SwarmCluster  # noqa: E402
from tests.fixtures.images import build_oci_layout, busybox_layer, tar_directory  # noqa: E402
from tests.fixtures.netns import NetWorld  # noqa: E402

COMMAND = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")  # stops at once on SIGTERM (it is pid 1)
IMAGE_NAME = "bench/busybox:1"
MODES = ("apply", "scale")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Trial:
    peer: str
    mode: str
    n: int
    round: int
    service: str
    command_s: float = 0.0  # the CLI process, start to exit
    running_s: float | None = None  # start of the CLI process → first poll counting n running
    first_running_s: float | None = None
    half_running_s: float | None = None
    polls: int = 0
    poll_s_median: float = 0.0  # what one poll took (the peer's API answering)
    cleared_s: float = 0.0  # remove → nothing of it left (untimed for the result)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per long-lived process, command → running
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, running)
    error: str = ""


def build_image(work: Path) -> BenchImage:
    layer = busybox_layer()
    rootfs_tar = work / "busybox-rootfs.tar"
    rootfs_tar.write_bytes(layer)
    layout = build_oci_layout(work / "busybox-oci", [layer], ref_name="1")
    return BenchImage(
        name=IMAGE_NAME, layout_tar=tar_directory(layout, work / "busybox-oci.tar"), rootfs_tar=rootfs_tar
    )


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime of each process and of its reaped children (a supervisor reaps containers)."""
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
    return out


class Profiler:
    """py-spy record on some processes for the length of one trial (raw collapsed stacks)."""

    def __init__(self, out: Path, pids: dict[str, int], label: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        out.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            print("py-spy not found: no profile", file=sys.stderr)
            return
        for name, pid in pids.items():
            self.procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--output",
                        str(out / f"{label}-{name}.txt"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_trial(
    peer: Peer, trial: Trial, *, interval: float, timeout: float, settle: float, profile: Path | None
) -> None:
    if trial.mode == "scale":
        subprocess.run(peer.create_argv(trial.service, 0), capture_output=True, check=True, timeout=120)
    time.sleep(settle)
    profiler = (
        Profiler(profile, peer.processes(), f"{trial.peer}-{trial.mode}-{trial.n}") if profile else None
    )
    argv = (
        peer.create_argv(trial.service, trial.n)
        if trial.mode == "apply"
        else peer.scale_argv(trial.service, trial.n)
    )
    cpu_before = cpu_seconds(peer.processes())
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    trial.command_s = time.perf_counter() - start
    if result.returncode != 0:
        trial.error = f"{' '.join(argv[:4])}... exited {result.returncode}: {result.stderr.decode()[-500:]}"
    poll_times = []
    last_error = ""
    while not trial.error:
        before = time.perf_counter()
        try:
            count = peer.running(trial.service)
        except Exception as err:  # a poll that failed is a result too: keep polling until the timeout
            count = -1
            last_error = str(err)
        after = time.perf_counter()
        poll_times.append(after - before)
        elapsed = after - start
        trial.samples.append((round(elapsed, 4), count))
        if count > 0 and trial.first_running_s is None:
            trial.first_running_s = elapsed
        if count >= trial.n / 2 and trial.half_running_s is None:
            trial.half_running_s = elapsed
        if count >= trial.n:
            trial.running_s = elapsed
            break
        if elapsed > timeout:
            trial.error = f"{count}/{trial.n} running after {timeout:.0f} s" + (
                f" (last poll error: {last_error})" if count < 0 else ""
            )
            break
        time.sleep(max(0.0, interval - (time.perf_counter() - before)))
    cpu_after = cpu_seconds(peer.processes())
    trial.cpu_s = {k: round(cpu_after[k] - v, 3) for k, v in cpu_before.items() if k in cpu_after}
    if profiler is not None:
        profiler.stop()
    trial.polls = len(poll_times)
    trial.poll_s_median = statistics.median(poll_times) if poll_times else 0.0
    started = time.perf_counter()
    peer.remove(trial.service)
    wait_for(
        f"{trial.peer}'s service {trial.service} to be gone",
        lambda: peer.gone(trial.service),
        timeout=300,
        interval=0.25,
    )
    trial.cleared_s = time.perf_counter() - started


def summarize(trials: list[Trial], ns: list[int], peers: list[str]) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        for n in ns:
            row: dict[str, Any] = {"mode": mode, "n": n}
            for peer in peers:
                times = [t.running_s for t in trials if t.peer == peer and t.mode == mode and t.n == n]
                done = [s for s in times if s is not None]
                row[peer] = {
                    "median_s": statistics.median(done) if done else None,
                    "min_s": min(done) if done else None,
                    "max_s": max(done) if done else None,
                    "runs": len(times),
                    "timed_out": len(times) - len(done),
                    "per_second": n / statistics.median(done) if done else None,
                }
            if (
                "shoal" in peers
                and "swarm" in peers
                and row["shoal"]["median_s"]
                and row["swarm"]["median_s"]
            ):
                row["speedup"] = row["swarm"]["median_s"] / row["shoal"]["median_s"]
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], peers: list[str]) -> None:
    head = (
        f"{'mode':6} {'N':>4} "
        + " ".join(f"{p + ' s (min-max)':>26}" for p in peers)
        + f" {'swarm/shoal':>11}"
    )
    print(head)
    for row in rows:
        cells = []
        for peer in peers:
            c = row[peer]
            if c["median_s"] is None:
                cells.append(f"{'timed out':>26}")
            else:
                extra = f" [{c['timed_out']} t/o]" if c["timed_out"] else ""
                cells.append(f"{c['median_s']:>8.2f} ({c['min_s']:.2f}-{c['max_s']:.2f}){extra}".rjust(26))
        speedup = f"{row['speedup']:.1f}x" if row.get("speedup") else "-"
        print(f"{row['mode']:6} {row['n']:>4} " + " ".join(cells) + f" {speedup:>11}", flush=True)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])

    def version(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, timeout=10, check=False).stdout.decode()
            return out.strip().splitlines()[0] if out.strip() else ""
        return ""

    revision = version(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "source": revision,
        "docker": version(["/usr/sbin/dockerd", "--version"]),
        "etcd": version(["etcd", "--version"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", default="10,50,100", help="replica counts (default %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="trials per (peer, mode, N) (default %(default)s)"
    )
    parser.add_argument("--hosts", type=int, default=2, help="hosts per peer (default %(default)s)")
    parser.add_argument("--peers", default="shoal,swarm", help="default %(default)s")
    parser.add_argument("--modes", default=",".join(MODES), help="default %(default)s")
    parser.add_argument("--poll", choices=("api", "cli"), default="api", help="default %(default)s")
    parser.add_argument("--interval", type=float, default=0.05, help="poll interval, s (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per trial, s (default %(default)s)")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="quiet before each trial, s (default %(default)s)"
    )
    parser.add_argument("--cpus", type=float, default=0.5, help="cpu limit per replica (default %(default)s)")
    parser.add_argument(
        "--cpus-request",
        type=float,
        default=0.01,
        help="cpu reserved for placement per replica (default %(default)s)",
    )
    parser.add_argument(
        "--memory-mib", type=int, default=16, help="memory limit and reservation (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster_scale.json")
    parser.add_argument("--plot", type=Path, help="also draw the results into this PNG")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of Shoal's processes into this dir")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs) at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (network namespaces, cgroups, dockerd)")
    ns = sorted(int(x) for x in args.n.split(","))
    peer_names = args.peers.split(",")
    modes = args.modes.split(",")
    unknown = [p for p in peer_names if p not in ("shoal", "swarm")] + [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown peers or modes: {', '.join(unknown)}")

    workload = Workload(
        command=COMMAND, cpus=args.cpus, cpus_request=args.cpus_request, memory_mib=args.memory_mib
    )
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"shoal-cs-{tag}-", dir="/tmp"))
    load_before = os.getloadavg()
    print(f"working in {work} (tag {tag})", file=sys.stderr, flush=True)
    peers: dict[str, Peer] = {}
    problems: list[str] = []
    trials: list[Trial] = []
    setup: dict[str, dict[str, float]] = {}
    interrupted = False
    with NetWorld() as world:
        try:
            image = build_image(work)
            if "shoal" in peer_names:
                control = world.add_host()
                peers["shoal"] = ShoalCluster(
                    work=work / "shoal",
                    control=control,
                    hosts=[world.add_host() for _ in range(args.hosts)],
                    tag=tag,
                    workload=workload,
                    poll=args.poll,
                )
            if "swarm" in peer_names:
                peers["swarm"] = SwarmCluster(
                    work=work / "swarm",
                    hosts=[world.add_host() for _ in range(args.hosts)],
                    tag=tag,
                    workload=workload,
                    poll=args.poll,
                )
            for name, peer in peers.items():
                setup[name] = peer.start(image)
                print(
                    f"{name} up: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup[name].items()),
                    file=sys.stderr,
                    flush=True,
                )
            for name, peer in peers.items():  # first-time costs (networks, caches) out of the results
                warm = Trial(name, "apply", ns[0], -1, f"warmup-{name}")
                run_trial(
                    peer, warm, interval=args.interval, timeout=args.timeout, settle=args.settle, profile=None
                )
                print(
                    f"warm-up {name}: {ns[0]} running in {warm.running_s or float('nan'):.2f} s {warm.error}",
                    file=sys.stderr,
                    flush=True,
                )
            rng = random.Random(args.seed)
            for r in range(1, args.rounds + 1):
                cells = [(p, m, n) for p in peers for m in modes for n in ns]
                rng.shuffle(cells)
                for name, mode, n in cells:
                    trial = Trial(name, mode, n, r, f"{mode[0]}{n}-r{r}")
                    profile = (
                        args.profile
                        if (args.profile and name == "shoal" and mode == "apply" and n == ns[-1] and r == 1)
                        else None
                    )
                    run_trial(
                        peers[name],
                        trial,
                        interval=args.interval,
                        timeout=args.timeout,
                        settle=args.settle,
                        profile=profile,
                    )
                    trials.append(trial)
                    shown = f"{trial.running_s:.2f} s" if trial.running_s is not None else trial.error
                    print(
                        f"round {r} {name:5} {mode:5} N={n:<4} {shown} (command {trial.command_s:.2f} s, "
                        f"{trial.polls} polls, cleared in {trial.cleared_s:.1f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: tearing down", file=sys.stderr)
        finally:
            for name, peer in peers.items():
                found = peer.stop()
                problems += [f"{name}: {p}" for p in found]
    dispose(work, keep=args.keep_temp, problems=problems, label="tear-down")
    if interrupted or not trials:
        return 1

    rows = summarize(trials, ns, list(peers))
    print_table(rows, list(peers))
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
        "trials": [asdict(t) for t in trials],
        "teardown_problems": problems,
    }
    from bench.cluster_plot import plot

    write_result(result, args.out, plot_to=args.plot, draw=plot)
    return 0


def write_result(result: dict[str, Any], out: Path, *, plot_to: Path | None,
                 draw: Callable[[dict[str, Any], Path], None]) -> None:
    """Write a cluster benchmark's JSON to ``out`` and, with ``plot_to``, ``draw`` its plot there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    if plot_to is not None:
        draw(result, plot_to)
        print(f"drew {plot_to}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
