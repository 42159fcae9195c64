"""The ``shoal`` CLI as scripts use it, before and after the fast-CLI work, beside podman and docker.

One invocation sets up everything in a temp dir and runs, interleaved and in one run:
  * ``shoal --help`` and ``shoal ps`` (whole processes);
  * ``shoal run --rm IMAGE /bin/true`` (whole process) beside ``podman run --rm``;
  * a burst of 100 ``shoal run -d``, 20 at a time, beside 100 ``docker run -d`` (a private dockerd
    20.10 inside a network namespace the bench creates);
  * ``shoal image pull -q`` of the 74 MB ``big`` image through the agent beside the in-process pull
    (``Puller``, as bench/pull_unpack.py measures it), from a loopback registry.
"Before" is another revision (default ``main``), exported with ``git archive`` and installed the way
scripts/install.sh did there (setuptools' default editable finder) into its own venv, with its own
agent; "after" is this checkout and its venv. Both trees are byte-compiled first (a process that finds
no .pyc compiles what it imports, every time if PYTHONDONTWRITEBYTECODE is set).

Teardown stops every process it started and removes every container, cgroup, mount, network namespace
and file it created, also after an error or ^C. Run as root with the project's venv:
``.venv/bin/python bench/cli.py [--n 20] [--bursts 3] [--pulls 3] [--before main]``.
What each row measures is written up in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `agent`, `tests` and `bench` importable
    sys.path.insert(0, str(REPO))

from agent.images.pull import Puller, RegistrySettings  # noqa: E402
from agent.images.store import ImageStore  # noqa: E402
from bench import start_latency as sl  # noqa: E402
from tests.fixtures.registry import Registry  # noqa: E402
from tests.fixtures.registry_images import build_big_image  # noqa: E402

IMAGE = sl.IMAGE_NAME  # bench/busybox:v1
DOCKER = "/usr/bin/docker"  # /usr/local/bin/docker may be a newer client (NOTES.md)


# --- installations of the CLI ----------------------------------------------------------------------


@dataclass
class Install:
    """A source tree and the venv whose ``shoal``/``shoal-agent`` run it."""

    label: str
    tree: Path
    venv: Path
    revision: str

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _run(argv: Sequence[str]) -> str:
    return sl.run_checked(argv).stdout.decode()


def compile_tree(python: str, tree: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", str(tree / "agent"), str(tree / "proto")],
                   check=True, capture_output=True, env=env)


def install_before(work: Path, revision: str) -> Install:
    """``git archive REVISION`` + a venv with the project installed as that revision's install.sh did
    (default editable mode); third-party packages come from this venv through a .pth line."""
    sha = _run(["git", "-C", str(REPO), "rev-parse", "--short", revision]).strip()
    tree = work / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    venv = work / "before-venv"
    sl.run_checked([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    sl.run_checked([*pip, "setuptools>=68", "wheel"])
    sl.run_checked([*pip, "--no-deps", "--no-build-isolation", "-e", str(tree)])
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next((Path(sys.prefix) / "lib").glob("python3*/site-packages"))
    (site / "zz-shoal-bench-deps.pth").write_text(f"{ours}\n")
    compile_tree(str(venv / "bin" / "python"), tree)
    return Install(label=f"before ({sha})", tree=tree, venv=venv, revision=sha)


def install_after() -> Install:
    compile_tree(sys.executable, REPO)
    return Install(label=f"after ({sl.source_revision()})", tree=REPO, venv=Path(sys.prefix),
                   revision=sl.source_revision())


@dataclass
class BenchAgent:
    """``shoal-agent serve`` of one install, with its own root, socket and cgroup parent."""

    install: Install
    root: Path
    cgroup_parent: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.root}/agent.sock"

    def start(self) -> None:
        self.root.mkdir(parents=True)
        log = open(self.root / "agent.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [self.install.bin("shoal-agent"), "serve", "--root", str(self.root / "state"), "--listen",
             self.address, "--cgroup-parent", self.cgroup_parent, "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + sl.READY_TIMEOUT
        while self.shoal("ps", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent {self.install.label} did not come up:\n"
                                   + (self.root / "agent.log").read_text()[-2000:])
            time.sleep(0.1)

    def argv(self, *args: str) -> list[str]:
        return [self.install.bin("shoal"), "--agent", self.address, *args]

    def shoal(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"shoal {' '.join(args)}: {result.stderr.decode()[-500:]}")
        return result

    def remove_all(self) -> None:
        ids = self.shoal("ps", "-aq", "--no-trunc", check=False).stdout.decode().split()
        for start in range(0, len(ids), 50):
            self.shoal("rm", "-f", *ids[start:start + 50], check=False)

    def stop(self) -> list[str]:
        problems: list[str] = []
        supervisor = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            supervisor = int((self.root / "state" / "supervisor.pid").read_text().split()[0])
        if self.process is not None and self.process.poll() is None:
            self.remove_all()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append(f"agent {self.install.label} ignored SIGTERM; killed")
                self.process.kill()
                self.process.wait()
        if supervisor is not None and not sl._wait_gone(supervisor, timeout=10):
            problems.append(f"supervisor {supervisor} still alive; killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
        problems += sl.remove_cgroup_tree(self.cgroup_parent)
        return problems


class CallPhases:
    """``run --rm``'s four calls over Connect from this process, each timed: what the agent costs."""

    def __init__(self, agent: BenchAgent) -> None:
        from agent.cli.transport import ConnectTransport
        from proto.agent.v1 import agent_lite

        self.pb = agent_lite
        self.stub = agent_lite.ContainersStub(ConnectTransport(agent.address[len("unix://"):] + ".http"))
        self.samples: dict[str, list[float]] = {"create+start": [], "logs -f": [], "wait": [], "remove": []}

    def run_once(self) -> float:
        pb, stub = self.pb, self.stub
        cid = os.urandom(32).hex()
        t0 = time.perf_counter()
        stub.CreateContainer(pb.CreateContainerRequest(id=cid, start=True, spec=pb.ContainerSpec(
            image=IMAGE, command=["/bin/true"])))
        t1 = time.perf_counter()
        for _ in stub.ContainerLogs(pb.ContainerLogsRequest(id=cid, follow=True)):
            pass
        t2 = time.perf_counter()
        stub.WaitContainer(pb.ContainerRef(id=cid))
        t3 = time.perf_counter()
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))
        t4 = time.perf_counter()
        for name, value in zip(self.samples, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.samples[name].append(value)
        return t4 - t0

    def summary(self) -> dict[str, object]:
        return {name: round(statistics.median(v) * 1000, 2) for name, v in self.samples.items() if v}


# --- docker ------------------------------------------------------------------------------------------


@dataclass
class Dockerd:
    """A private dockerd 20.10 in a network namespace of its own (NOTES.md "Docker Swarm as a benchmark
    peer"), with its own roots and cgroup parent."""

    base: Path
    netns: str
    cgroup_parent: str
    process: subprocess.Popen[bytes] | None = None
    created_outside: list[Path] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    def docker(self, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.socket}", *args]

    def start(self, rootfs_tar: Path) -> None:
        # Files dockerd writes outside its roots: remove afterwards only those that were not there.
        for path in (Path("/etc/docker/key.json"), Path("/run/docker"), Path("/run/containerd"),
                     Path("/var/lib/docker")):
            if not path.exists():
                self.created_outside.append(path)
        self.base.mkdir(parents=True)
        (self.base / "daemon.json").write_text("{}")
        sl.run_checked(["ip", "netns", "add", self.netns])
        log = open(self.base / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "/usr/sbin/dockerd",
             "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
             "--pidfile", str(self.base / "docker.pid"), "-H", f"unix://{self.socket}",
             "--iptables=false", "--ip-masq=false", "--bridge=none", "--cgroup-parent", self.cgroup_parent,
             "--config-file", str(self.base / "daemon.json")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while subprocess.run(self.docker("version"), capture_output=True, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_tail = (self.base / "dockerd.log").read_text()[-2000:]
                raise RuntimeError(f"dockerd did not come up:\n{log_tail}")
            time.sleep(0.2)
        with rootfs_tar.open("rb") as f:
            subprocess.run(self.docker("import", "-", "bench/busybox:1"), stdin=f, capture_output=True,
                           check=True)

    def remove_all(self) -> None:
        listing = subprocess.run(self.docker("ps", "-aq"), capture_output=True, check=False)
        ids = listing.stdout.decode().split()
        if ids:
            subprocess.run(self.docker("rm", "-f", *ids), capture_output=True, check=False)

    def stop(self) -> list[str]:
        problems: list[str] = []
        if self.process is not None and self.process.poll() is None:
            self.remove_all()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                problems.append("dockerd ignored SIGTERM; killed")
                self.process.kill()
                self.process.wait()
        sl.unmount_under(self.base)
        problems += sl.remove_cgroup_tree(self.cgroup_parent)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        for path in self.created_outside:
            if path.is_dir():
                sl.unmount_under(path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return problems


# --- measurements ------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    note: str
    run: Callable[[], float]  # one timed sample, seconds
    samples: list[float] = field(default_factory=list)


def burst(argvs: Sequence[Sequence[str]], *, parallel: int) -> float:
    """Wall time of running every argv, ``parallel`` at a time; each must exit 0."""
    def one(argv: Sequence[str]) -> int:
        return subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(one, argvs))
    elapsed = time.perf_counter() - start
    failed = sum(1 for c in codes if c != 0)
    if failed:
        raise RuntimeError(f"{failed} of {len(argvs)} commands failed, e.g. {' '.join(argvs[0])}")
    return elapsed


def _burster(argvs: Sequence[Sequence[str]], parallel: int) -> Callable[[], float]:
    return lambda: burst(argvs, parallel=parallel)


def interleave(rows: Sequence[Row], *, n: int, warmup: int, settle: float, seed: int,
               before_each: Callable[[], None] | None = None) -> None:
    rng = random.Random(seed)
    for row in rows:
        for _ in range(warmup):
            row.run()
    order = list(rows)
    for _ in range(n):
        rng.shuffle(order)
        for row in order:
            if before_each is not None:
                before_each()
            time.sleep(settle)
            row.samples.append(row.run())


def summarize(row: Row, *, scale: float) -> dict[str, object]:
    values = [v * scale for v in row.samples]
    return {"name": row.name, "note": row.note, "n": len(values),
            "p50": round(statistics.median(values), 3), "p90": round(sl.percentile(values, 90), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def print_table(title: str, rows: Sequence[dict[str, object]], unit: str,
                peers: dict[str, str]) -> None:
    print(f"\n{title} ({unit})")
    by_name = {str(r["name"]): r for r in rows}
    print(f"{'contender':<44} {'p50':>9} {'p90':>9} {'min':>9} {'max':>9}  vs")
    for r in rows:
        peer = peers.get(str(r["name"]))
        vs = ""
        if peer is not None and peer in by_name:
            vs = f"{float(r['p50']) / float(by_name[peer]['p50']):.2f}x {peer}"  # type: ignore[arg-type]
        print(f"{r['name']!s:<44} {r['p50']:>9} {r['p90']:>9} {r['min']:>9} {r['max']:>9}  {vs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20, help="rounds of the per-process rows (default 20)")
    parser.add_argument("--bursts", type=int, default=3, help="rounds of the 100-container bursts")
    parser.add_argument("--burst-size", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--pulls", type=int, default=3, help="rounds of the pull rows (0 = none)")
    parser.add_argument("--before", default="main", help="revision to compare with (default main)")
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--no-podman", action="store_true")
    parser.add_argument("--settle-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--image-cache", type=Path, default=None,
                        help="where to build/reuse the 74 MB pull image (default: the temp dir)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("cli bench: must run as root")
    out = args.out or REPO / "bench" / "results" / f"cli-{time.strftime('%Y%m%dT%H%M%S')}.json"
    tag = f"shoal-bench-{uuid.uuid4().hex[:8]}"
    problems: list[str] = []
    agents: list[BenchAgent] = []
    podman: sl.Podman | None = None
    dockerd: Dockerd | None = None
    registry: Registry | None = None
    results: dict[str, list[dict[str, object]]] = {}
    load_before = os.getloadavg()
    with sl.bench_environment(args.keep_temp) as work:
        try:
            print(f"setting up in {work} (cgroups {tag}-*)", file=sys.stderr, flush=True)
            image = sl.build_image(work)
            before, after = install_before(work, args.before), install_after()
            old = BenchAgent(before, work / "agent-before", f"{tag}-before")
            new = BenchAgent(after, work / "agent-after", f"{tag}-after")
            for agent in (old, new):
                agents.append(agent)
                agent.start()
                agent.shoal("image", "import", str(image.layout_tar), "--name", IMAGE)

            def whole(argv: list[str]) -> Callable[[], float]:
                return lambda: sl.timed_process(argv)

            # 1. Start-up and a listing.
            rows = [Row(f"{a.install.label}: shoal --help", "", whole(a.argv("--help"))) for a in (old, new)]
            rows += [Row(f"{a.install.label}: shoal ps", "no containers", whole(a.argv("ps")))
                     for a in (old, new)]
            # 2. A foreground container, removed.
            run_rows = [Row(f"{a.install.label}: shoal run --rm", "own agent",
                            whole(a.argv("run", "--rm", IMAGE, "/bin/true"))) for a in (old, new)]
            if not args.no_podman and shutil.which("podman"):
                podman = sl.Podman(base=work / "podman", cgroup_parent=f"{tag}-podman")
                sl.run_checked([*podman.global_flags(), "import", str(image.rootfs_tar),
                                "localhost/bench/busybox:v1"])
                run_rows.append(Row("podman run --rm (runc)", "--network none --cgroup-manager cgroupfs",
                                    whole(podman.run_argv("localhost/bench/busybox:v1"))))
            print(f"{args.n} rounds of {len(rows) + len(run_rows)} per-process rows", file=sys.stderr,
                  flush=True)
            # Where a run --rm goes: the interpreter, the CLI's imports, and each call (in this process).
            python = str(after.venv / "bin" / "python")
            rows += [Row("after: python -c pass", "the venv's interpreter, site included",
                         whole([python, "-c", "pass"])),
                     Row("after: python -c 'import agent.cli.main'", "", whole(
                         [python, "-c", "import agent.cli.main"]))]
            phases = CallPhases(new)
            rows.append(Row("after: run --rm as 4 calls (in-process)", "create+start, logs -f, wait, remove",
                            phases.run_once))
            interleave(rows + run_rows, n=args.n, warmup=3, settle=args.settle_ms / 1000, seed=args.seed)
            results["processes"] = [summarize(r, scale=1000) for r in rows + run_rows]
            results["call_phases_ms"] = [phases.summary()]

            # 3. Bursts of detached containers.
            burst_rows = []
            for agent in (old, new):
                argvs = [agent.argv("run", "-d", IMAGE, "sleep", "600")] * args.burst_size
                burst_rows.append(Row(f"{agent.install.label}: {args.burst_size} x shoal run -d",
                                      f"{args.parallel} at a time", _burster(argvs, args.parallel)))
            if not args.no_docker and Path("/usr/sbin/dockerd").exists():
                dockerd = Dockerd(work / "docker", netns=f"{tag}-dk", cgroup_parent=f"{tag}-docker")
                dockerd.start(image.rootfs_tar)
                argvs = [dockerd.docker("run", "-d", "--network", "none", "bench/busybox:1", "sleep", "600")
                         ] * args.burst_size
                burst_rows.append(Row(f"dockerd 20.10: {args.burst_size} x docker run -d",
                                      f"{args.parallel} at a time, --network none",
                                      _burster(argvs, args.parallel)))

            def clear() -> None:
                for agent in (old, new):
                    agent.remove_all()
                if dockerd is not None:
                    dockerd.remove_all()

            print(f"{args.bursts} rounds of {len(burst_rows)} bursts", file=sys.stderr, flush=True)
            interleave(burst_rows, n=args.bursts, warmup=0, settle=1.0, seed=args.seed, before_each=clear)
            clear()
            results["bursts"] = [summarize(r, scale=1) for r in burst_rows]

            # 4. Pulls through the agent vs in-process.
            if args.pulls:
                big = build_big_image(args.image_cache or work / "images")
                registry = Registry(work / "registry").start()
                registry.push(big.layout, big.tag, "big:v1", format="oci")
                ref = f"{registry.host}/big:v1"
                auth = work / "auth.json"
                scratch = work / "pull-scratch"

                def in_process() -> float:
                    shutil.rmtree(scratch, ignore_errors=True)
                    store = ImageStore(scratch / "store")
                    puller = Puller(store, RegistrySettings(auth_file=auth))
                    try:
                        start = time.perf_counter()
                        puller.pull(ref)
                        return time.perf_counter() - start
                    finally:
                        puller.close()

                def through(agent: BenchAgent) -> Callable[[], float]:
                    def pull() -> float:
                        elapsed = sl.timed_process(agent.argv("image", "pull", "-q", ref))
                        agent.shoal("image", "rm", ref)
                        agent.shoal("image", "prune")
                        return elapsed
                    return pull

                def settle() -> None:
                    shutil.rmtree(scratch, ignore_errors=True)
                    subprocess.run(["sync"], check=False)

                pull_rows = [Row("shoal pull (in-process)", "Puller in this process", in_process)]
                pull_rows += [Row(f"{a.install.label}: shoal image pull -q", "CLI + agent", through(a))
                              for a in (old, new)]
                print(f"{args.pulls} rounds of {len(pull_rows)} pulls", file=sys.stderr, flush=True)
                interleave(pull_rows, n=args.pulls, warmup=1, settle=0.3, seed=args.seed, before_each=settle)
                results["pulls"] = [summarize(r, scale=1) for r in pull_rows]
        finally:
            if podman is not None:
                problems += podman.teardown()
                problems += sl.remove_cgroup_tree(podman.cgroup_parent)
            if dockerd is not None:
                problems += dockerd.stop()
            if registry is not None:
                registry.stop()
            for agent in agents:
                problems += agent.stop()
    load_after = os.getloadavg()

    info = sl.machine_info()
    info["docker"] = sl.tool_version([DOCKER, "--version"])
    print(f"\nkernel {info['kernel']}, {info['cpus']} CPUs, Python {info['python']}; {info['podman']}; "
          f"{info['docker']}; load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    labels = [a.install.label for a in agents]
    peers = {}
    if len(labels) == 2:
        b, a = labels
        docker_burst = f"dockerd 20.10: {args.burst_size} x docker run -d"
        peers = {f"{a}: shoal --help": f"{b}: shoal --help", f"{a}: shoal ps": f"{b}: shoal ps"}
        for label in (a, b):
            peers[f"{label}: shoal run --rm"] = "podman run --rm (runc)"
            peers[f"{label}: {args.burst_size} x shoal run -d"] = docker_burst
            peers[f"{label}: shoal image pull -q"] = "shoal pull (in-process)"
    print_table("whole processes", results.get("processes", []), "ms", peers)
    if "call_phases_ms" in results:
        print(f"run --rm's calls, p50 (ms): {results['call_phases_ms'][0]}")
    print_table("bursts", results.get("bursts", []), "s", peers)
    if "pulls" in results:
        print_table("pulls of the 74 MB image", results["pulls"], "s", peers)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join([sys.executable, *sys.argv]),
        "machine": info, "load_average": {"before": load_before, "after": load_after},
        "results": results, "teardown_problems": problems,
    }, indent=1))
    print(f"\nwrote {out}")
    for problem in problems:
        print(f"teardown: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
