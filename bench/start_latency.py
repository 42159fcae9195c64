"""Start latency of a ``/bin/true`` container: Shoal's agent side by side with runc, crun and podman.

One invocation sets up everything in a temp dir (agents with their own roots and cgroup parents, the
busybox image, an OCI bundle over the image's unpacked layer, a private podman store), warms every
contender up, then runs N rounds; each round runs every contender once in a shuffled order after a short
quiet pause (see ``measure``), so drift on the machine (page cache, CPU frequency, other tenants) hits all
of them alike. Teardown stops what it started and removes
the mounts, cgroups and files it created, also after an error or ^C.

Run as root with the project's venv (grpc and the generated stubs):
``/opt/shoal-venv/bin/python bench/start_latency.py [--n 200] [--out bench/results/start.json]``.
What each row measures is written up in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `proto` importable without installing
    sys.path.insert(0, str(REPO))

try:
    import grpc

    from proto.agent.v1 import agent_pb2 as pb
    from proto.agent.v1 import agent_pb2_grpc as pb_grpc
    from tests.fixtures.images import build_busybox_oci, tar_directory
except ImportError as exc:  # pragma: no cover - depends on the interpreter used
    raise SystemExit(f"start_latency: {exc}; run with /opt/shoal-venv/bin/python") from None

IMAGE_NAME = "bench/busybox:v1"
BALLAST_MIB = 2048
READY_TIMEOUT = 60.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
CRUN_WRAPPER = "umount /sys/fs/cgroup/unified && exec "


@dataclass(frozen=True)
class Sample:
    """One timed container: ``total`` seconds, plus optional named phases that sum to at most it."""

    total: float
    phases: tuple[tuple[str, float], ...] = ()


class Contender(Protocol):
    """One way of starting the container. ``run_once`` times one start-to-exit and cleans up after
    itself outside the timed region; it raises if the container did not exit 0."""

    name: str
    note: str

    def run_once(self) -> Sample: ...


@dataclass(frozen=True)
class Summary:
    name: str
    note: str
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    phases_p50_ms: dict[str, float]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported figure is an observed sample)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def summarize(contender: Contender, samples: Sequence[Sample]) -> Summary:
    totals = [s.total * 1000 for s in samples]
    phase_names = [name for name, _ in samples[0].phases] if samples else []
    phases = {
        name: round(statistics.median(dict(s.phases)[name] * 1000 for s in samples), 2)
        for name in phase_names
    }
    return Summary(
        name=contender.name, note=contender.note, n=len(samples),
        p50_ms=round(percentile(totals, 50), 2), p90_ms=round(percentile(totals, 90), 2),
        p99_ms=round(percentile(totals, 99), 2), mean_ms=round(statistics.fmean(totals), 2),
        phases_p50_ms=phases,
    )


# --- helpers for processes we start -------------------------------------------------------------------


def run_checked(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()[-800:]}")
    return result


def timed_process(argv: Sequence[str]) -> float:
    """Wall time of a whole process, stdio to /dev/null; raises unless it exits 0."""
    start = time.perf_counter()
    code = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if code != 0:
        # Re-run once with stderr captured so the failure is explained.
        detail = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {detail.stderr.decode(errors='replace')[-800:]}")
    return elapsed


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, check=False, timeout=10).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def remove_cgroup_tree(name: str) -> list[str]:
    """rmdir ``name`` (one path component under every hierarchy root) bottom-up; return leftovers."""
    leftovers = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError as exc:
            leftovers.append(f"{top}: {exc.strerror}")
    return leftovers


def unmount_under(directory: Path) -> None:
    """Unmount anything still mounted below ``directory`` (deepest first): a crashed run must not
    leave podman's overlay mounts behind."""
    prefix = str(directory.resolve()) + "/"
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target.startswith(prefix):
            targets.append(target)
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


# --- fixtures: the image, its unpacked rootfs, an OCI bundle ----------------------------------------


@dataclass(frozen=True)
class ImageFiles:
    layout_tar: Path   # OCI layout tar, imported by the agents
    rootfs: Path       # the image's single layer unpacked: runc/crun root.path, podman import source
    rootfs_tar: Path   # the same rootfs as a plain tar, for `podman import`


def build_image(work: Path) -> ImageFiles:
    layout = build_busybox_oci(work / "img")  # work/img/busybox (tag v1), the project's own builder
    tar_directory(layout, work / "img" / "busybox.tar")
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    layer_digest = manifest["layers"][0]["digest"].split(":", 1)[1]
    rootfs = work / "rootfs"
    rootfs.mkdir()
    # Our own layer with no whiteouts: GNU tar unpacks it exactly (the agent's careful unpacker is
    # for untrusted layers and is not what is being measured here).
    run_checked(["tar", "-xz", "-C", str(rootfs), "-f", str(layout / "blobs" / "sha256" / layer_digest)])
    rootfs_tar = work / "rootfs.tar"
    with tarfile.open(rootfs_tar, "w") as tf:
        for entry in sorted(rootfs.iterdir()):
            tf.add(entry, arcname=entry.name)
    return ImageFiles(layout_tar=work / "img" / "busybox.tar", rootfs=rootfs.resolve(),
                      rootfs_tar=rootfs_tar)


def write_bundle(bundle: Path, *, rootfs: Path) -> dict[str, Any]:
    """`runc spec` with the image's rootfs (a real, absolute path: runc rejects symlinks) and
    ``/bin/true``; returns the config so callers can set a per-run cgroupsPath."""
    bundle.mkdir(parents=True)
    run_checked(["runc", "spec", "--bundle", str(bundle)])
    config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(rootfs.resolve()), "readonly": True}
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    return config


# --- contenders ---------------------------------------------------------------------------------------


@dataclass
class Agent:
    """A private ``shoal-agent serve`` with its own root, socket and cgroup parent."""

    root: Path
    cgroup_parent: str
    ballast_mib: int = 0
    extra_args: tuple[str, ...] = ()
    agent_bin: str = ""  # another build's shoal-agent (default: the one beside this interpreter)
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    containers: pb_grpc.ContainersStub | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.root}/agent.sock"

    def start(self) -> None:
        self.root.mkdir(parents=True)
        argv = [self.agent_bin or str(Path(sys.executable).parent / "shoal-agent"), "serve",
                "--root", str(self.root / "state"),
                "--listen", self.address, "--cgroup-parent", self.cgroup_parent, "--log-level", "warning"]
        if self.ballast_mib:
            argv += ["--bench-ballast-mib", str(self.ballast_mib)]
        argv += self.extra_args
        log = open(self.root / "agent.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=READY_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise RuntimeError(f"agent did not come up; see {self.root / 'agent.log'}:\n"
                               + (self.root / "agent.log").read_text()[-2000:]) from None
        self.containers = pb_grpc.ContainersStub(self.channel)

    def import_image(self, archive: Path) -> None:
        assert self.channel is not None
        images = pb_grpc.ImagesStub(self.channel)
        request = pb.ImportImageRequest(path=str(archive), name=IMAGE_NAME)
        progress = list(images.ImportImage(iter([request])))
        last = progress[-1] if progress else None
        if last is None or last.phase != "done":
            raise RuntimeError(f"image import did not finish: {last}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.root / "state" / "supervisor.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> list[str]:
        """SIGTERM the daemon; its supervisor exits by itself once no client and no container is
        left. Returns problems found (never raises: teardown must go on)."""
        problems = []
        supervisor = self.supervisor_pid()
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append(f"agent {self.process.pid} ignored SIGTERM; killed")
                self.process.kill()
                self.process.wait()
        if supervisor is not None and _wait_gone(supervisor, timeout=10) is False:
            problems.append(f"supervisor {supervisor} still alive after the agent stopped; killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
        problems += remove_cgroup_tree(self.cgroup_parent)
        return problems


def _wait_gone(pid: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        with contextlib.suppress(OSError):
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # a zombie of some other parent: it has exited
        time.sleep(0.05)
    return False


@dataclass
class AgentApi:
    """gRPC over one persistent channel: CreateContainer sent → WaitContainer returned.

    ``one_call``: CreateContainer with ``start=true`` (what the CLI and a scheduler send), then Wait —
    two round trips. Otherwise Create, Start, Wait as three calls, timed separately.
    """

    name: str
    agent: Agent
    note: str = ""
    one_call: bool = True
    seccomp: pb.Seccomp | None = None  # None: the default profile

    def run_once(self) -> Sample:
        stub = self.agent.containers
        assert stub is not None
        spec = pb.ContainerSpec(image=IMAGE_NAME, command=["/bin/true"], network=pb.NETWORK_MODE_NONE,
                                seccomp=self.seccomp)
        t0 = time.perf_counter()
        created = stub.CreateContainer(pb.CreateContainerRequest(spec=spec, start=self.one_call))
        t1 = time.perf_counter()
        if not self.one_call:
            stub.StartContainer(pb.StartContainerRequest(id=created.id))
        t2 = time.perf_counter()
        status = stub.WaitContainer(pb.ContainerRef(id=created.id))
        t3 = time.perf_counter()
        stub.RemoveContainer(pb.RemoveContainerRequest(id=created.id))
        if status.exit_code != 0:
            raise RuntimeError(f"{self.name}: container exited {status.exit_code} ({status.reason}) "
                               f"{status.error}")
        if self.one_call:
            return Sample(total=t3 - t0, phases=(("create+start", t1 - t0), ("wait", t3 - t2)))
        return Sample(total=t3 - t0, phases=(("create", t1 - t0), ("start", t2 - t1), ("wait", t3 - t2)))


@dataclass
class OciRuntime:
    """``runc``/``crun`` ``run`` as a whole process over a bundle whose rootfs is the unpacked layer;
    each run gets a fresh id and cgroup (under a parent of our own), deleted outside the timed region."""

    name: str
    binary: str
    bundle: Path
    state_root: Path
    cgroup_parent: str
    config: dict[str, Any]
    wrap_for_hybrid: bool = False  # crun: private mount ns without the v2 mount (see NOTES.md)
    keep_then_delete: bool = True  # runc: --keep, then `runc delete` untimed
    note: str = ""
    _counter: int = field(default=0, init=False)

    def _argv(self, verb: Sequence[str]) -> list[str]:
        argv = [self.binary, "--root", str(self.state_root), *verb]
        if not self.wrap_for_hybrid:
            return argv
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                CRUN_WRAPPER + " ".join(argv)]

    def run_once(self) -> Sample:
        self._counter += 1
        cid = f"{self.name.split()[0]}-{os.getpid()}-{self._counter}"
        config = dict(self.config)
        config["linux"] = dict(config["linux"], cgroupsPath=f"/{self.cgroup_parent}/{cid}")
        (self.bundle / "config.json").write_text(json.dumps(config))
        keep = ["--keep"] if self.keep_then_delete else []
        elapsed = timed_process(self._argv(["run", *keep, "--bundle", str(self.bundle), cid]))
        if self.keep_then_delete:
            run_checked(self._argv(["delete", "--force", cid]))
        return Sample(total=elapsed)


@dataclass
class WholeProcess:
    """Any command as a whole process (the CLIs, the crun wrapper alone)."""

    name: str
    argv: list[str]
    note: str = ""
    after: Callable[[], None] | None = None

    def run_once(self) -> Sample:
        elapsed = timed_process(self.argv)
        if self.after is not None:
            self.after()
        return Sample(total=elapsed)


@dataclass
class Podman:
    """A podman with every path (storage, run root, tmp, events) under our temp dir."""

    base: Path
    cgroup_parent: str
    had_libpod_parent: bool = field(
        default_factory=lambda: (CGROUP_ROOT / "memory" / "libpod_parent").exists())

    def global_flags(self) -> list[str]:
        return ["podman", "--root", str(self.base / "storage"), "--runroot", str(self.base / "run"),
                "--tmpdir", str(self.base / "tmp"), "--storage-driver", "overlay",
                "--cgroup-manager", "cgroupfs", "--runtime", "runc", "--events-backend", "file"]

    def run_argv(self, image: str) -> list[str]:
        # --ulimit: podman asks for RLIMIT_NOFILE/RLIMIT_NPROC 1048576/4194304, above this host's hard
        # limits (we lack CAP_SYS_RESOURCE), and runc's setrlimit fails. Even the host's own hard values
        # are refused (podman's own limits end up lower), so ask for a modest 1024, Docker's soft default.
        return [*self.global_flags(), "run", "--rm", "--network", "none",
                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                "--cgroup-parent", f"/{self.cgroup_parent}", image,
                "/bin/true"]

    def teardown(self) -> list[str]:
        subprocess.run([*self.global_flags(), "system", "reset", "--force"], check=False,
                       capture_output=True, timeout=60)
        unmount_under(self.base)
        problems = []
        # With cgroupfs, podman 4.3 puts conmon in /libpod_parent/conmon whatever --cgroup-parent says:
        # remove it if this run created it. (containers/image also writes a blob-info cache to
        # /var/lib/containers/cache whatever --root says; skopeo shares it, so we leave that cache be.)
        if not self.had_libpod_parent:
            problems += remove_cgroup_tree("libpod_parent")
        return problems


# --- orchestration ------------------------------------------------------------------------------------


def source_revision() -> str:
    """HEAD, plus "+dirty" when agent/ or proto/ differ from it (others may be editing the checkout)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          check=False).stdout.decode().strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "agent", "proto"],
                           capture_output=True, check=False).stdout.strip()
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, str]:
    return {
        "source": source_revision(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "runc": tool_version(["runc", "--version"]),
        "crun": tool_version(["crun", "--version"]),
        "podman": tool_version(["podman", "--version"]),
    }


def measure(contenders: Sequence[Contender], *, n: int, warmup: int, settle: float,
            seed: int) -> dict[str, list[Sample]]:
    """Warm every contender up, then N rounds; each round runs every contender once, in a fresh random
    order, each after ``settle`` seconds of quiet.

    Why the order and the pause: joining a v1 cgroup (writing a pid to ``cgroup.procs``) takes a global
    percpu rwsem for writing, which waits for an RCU grace period unless another migration happened
    within the last one. Run back to back, a contender that follows another one's cgroup work gets it
    for free; with a fixed order that made the same agent look 10 ms faster or slower depending on its
    slot. A pause puts every sample in the "idle host" state, which is the case that matters (a start
    nobody else warmed up), and shuffling removes whatever position effect is left.
    """
    rng = random.Random(seed)
    for contender in contenders:
        for _ in range(warmup):
            contender.run_once()
    samples: dict[str, list[Sample]] = {c.name: [] for c in contenders}
    order = list(contenders)
    for round_no in range(n):
        rng.shuffle(order)
        for contender in order:
            if settle:
                time.sleep(settle)
            samples[contender.name].append(contender.run_once())
        if (round_no + 1) % 50 == 0:
            print(f"  {round_no + 1}/{n} rounds", file=sys.stderr, flush=True)
    return samples


def print_table(summaries: Sequence[Summary], *, runc_p50: float | None) -> None:
    header = f"{'contender':<34} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}  {'vs runc':>7}  phases (p50)"
    print(header)
    print("-" * len(header))
    for s in summaries:
        ratio = f"{s.p50_ms / runc_p50:.2f}x" if runc_p50 else "-"
        phases = " ".join(f"{k}={v:.2f}" for k, v in s.phases_p50_ms.items())
        print(f"{s.name:<34} {s.p50_ms:>8.2f} {s.p90_ms:>8.2f} {s.p99_ms:>8.2f} {s.mean_ms:>8.2f}  "
              f"{ratio:>7}  {phases}")
    print("(milliseconds)")
    for s in summaries:
        if s.note:
            print(f"* {s.name}: {s.note}")


@contextlib.contextmanager
def bench_environment(keep: bool) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    try:
        yield work
    finally:
        unmount_under(work)
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="timed rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per contender first")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result file (default bench/results/start_latency-<time>.json)")
    parser.add_argument("--ballast-mib", type=int, default=BALLAST_MIB,
                        help="daemon ballast of the second agent (default %(default)s)")
    parser.add_argument("--settle-ms", type=float, default=50.0,
                        help="quiet time before each timed sample (default %(default)s; 0 = back to back)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the per-round shuffle")
    parser.add_argument("--no-podman", action="store_true", help="skip the podman row")
    parser.add_argument("--agent-only", action="store_true",
                        help="only the plain agent's API rows (e.g. seccomp default vs unconfined)")
    parser.add_argument("--keep-temp", action="store_true", help="leave the temp dir for inspection")
    parser.add_argument("--compare-agent", metavar="SHOAL_AGENT", default=None,
                        help="another build's shoal-agent (e.g. an older checkout's .venv/bin/shoal-agent): "
                             "one more agent API row, run by that build")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("start_latency: must run as root")
    out = args.out or REPO / "bench" / "results" / f"start_latency-{time.strftime('%Y%m%dT%H%M%S')}.json"

    tag = f"shoal-bench-{uuid.uuid4().hex[:8]}"
    cgroup_names = {k: f"{tag}-{k}" for k in ("agent", "ballast", "other", "runc", "crun", "podman")}
    podman_available = not args.no_podman and shutil.which("podman") is not None
    problems: list[str] = []
    agents: list[Agent] = []
    podman: Podman | None = None
    with bench_environment(args.keep_temp) as work:
        try:
            print(f"setting up in {work} (cgroups {tag}-*)", file=sys.stderr, flush=True)
            image = build_image(work)
            plain = Agent(root=work / "agent", cgroup_parent=cgroup_names["agent"])
            heavy = Agent(root=work / "agent-ballast", cgroup_parent=cgroup_names["ballast"],
                          ballast_mib=args.ballast_mib)
            other = (Agent(root=work / "agent-other", cgroup_parent=cgroup_names["other"],
                           agent_bin=args.compare_agent) if args.compare_agent else None)
            for agent in (plain, heavy, other):
                if agent is None:
                    continue
                agents.append(agent)
                agent.start()
                agent.import_image(image.layout_tar)
            config = write_bundle(work / "bundle", rootfs=image.rootfs)
            contenders: list[Contender] = [
                AgentApi(name="agent API (gRPC)", agent=plain,
                         note="CreateContainer(start=true) + WaitContainer: 2 round trips"),
                AgentApi(name="agent API, seccomp=unconfined", agent=plain,
                         seccomp=pb.Seccomp(unconfined=True),
                         note="as the first row, without a seccomp filter: what the filter costs"),
                AgentApi(name=f"agent API, daemon +{args.ballast_mib} MiB", agent=heavy),
                AgentApi(name="agent API, 3 calls", agent=plain, one_call=False,
                         note="CreateContainer, StartContainer, WaitContainer as separate round trips"),
                OciRuntime(name="runc run", binary="runc", bundle=work / "bundle", config=config,
                           state_root=work / "runc-state", cgroup_parent=cgroup_names["runc"],
                           note="runc run --keep; runc delete untimed; plain rootfs dir, no overlay"),
                OciRuntime(name="crun run (unshare+sh wrapper)", binary="crun",
                           bundle=work / "bundle", config=config, state_root=work / "crun-state",
                           cgroup_parent=cgroup_names["crun"], wrap_for_hybrid=True,
                           keep_then_delete=False,
                           note="includes the hybrid-cgroup workaround (unshare -m + sh + umount) "
                                "and crun's own delete at exit; see the wrapper-only row"),
                WholeProcess(name="crun wrapper alone (no crun)",
                             argv=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   CRUN_WRAPPER + "true"],
                             note="what the wrapper costs by itself; subtract from the crun row"),
                WholeProcess(name="shoal run --rm (CLI process)",
                             argv=[str(Path(sys.executable).parent / "shoal"), "--agent", plain.address,
                                   "run", "--rm", IMAGE_NAME, "/bin/true"],
                             note="whole CLI process against the plain agent, remove included"),
            ]
            if args.agent_only:
                contenders = [c for c in contenders if isinstance(c, AgentApi) and c.agent is plain]
            if other is not None:
                contenders.insert(1, AgentApi(name="agent API (other build)", agent=other,
                                              note=f"as the first row, served by {args.compare_agent}"))
            if podman_available and not args.agent_only:
                podman = Podman(base=work / "podman", cgroup_parent=cgroup_names["podman"])
                run_checked([*podman.global_flags(), "import", str(image.rootfs_tar),
                             "localhost/bench/busybox:v1"])
                contenders.append(WholeProcess(
                    name="podman run --rm (runc)", argv=podman.run_argv("localhost/bench/busybox:v1"),
                    note="--network none --cgroup-manager cgroupfs --runtime runc; remove included"))
            rss = {"agent": rss_mib(plain.pid), "agent_ballast": rss_mib(heavy.pid)}
            print(f"daemon RSS: plain {rss['agent']:.0f} MiB, ballast {rss['agent_ballast']:.0f} MiB; "
                  f"{args.n} rounds x {len(contenders)} contenders", file=sys.stderr, flush=True)
            samples = measure(contenders, n=args.n, warmup=args.warmup, settle=args.settle_ms / 1000,
                              seed=args.seed)
            supervisors = {name: (rss_mib(pid) if pid else 0.0) for name, pid in
                           (("agent", plain.supervisor_pid()), ("agent_ballast", heavy.supervisor_pid()))}
        finally:
            if podman is not None:
                problems += podman.teardown()
            for agent in agents:
                problems += agent.stop()
            for name in cgroup_names.values():
                problems += remove_cgroup_tree(name)

    summaries = [summarize(c, samples[c.name]) for c in contenders]
    runc_p50 = next((s.p50_ms for s in summaries if s.name == "runc run"), None)
    info = machine_info()
    print(f"\nkernel {info['kernel']}, {info['cpus']} CPUs; {info['runc'].splitlines()[0]}; "
          f"{info['crun']}; {info['podman']}")
    print(f"daemon RSS at start: {rss['agent']:.0f} MiB / {rss['agent_ballast']:.0f} MiB (ballast); "
          f"supervisor RSS {supervisors['agent']:.1f} MiB\n")
    print_table(summaries, runc_p50=runc_p50)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([sys.executable, *sys.argv]),
        "n": args.n, "warmup": args.warmup, "settle_ms": args.settle_ms, "seed": args.seed,
        "machine": info,
        "daemon_rss_mib": rss, "supervisor_rss_mib": supervisors,
        "summaries": [s.__dict__ for s in summaries],
        "samples_ms": {name: [round(s.total * 1000, 3) for s in values] for name, values in samples.items()},
        "teardown_problems": problems,
    }, indent=1))
    print(f"\nwrote {out}")
    for problem in problems:
        print(f"teardown: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
