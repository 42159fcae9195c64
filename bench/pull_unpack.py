"""Pull + unpack of a ≈ 70 MB image from a local registry: Shoal side by side with skopeo + umoci, and
layer unpack alone against GNU tar.

One invocation sets up everything in a temp dir: two ≈ 70 MB gzip OCI images — ``big`` (4 layers of a few
large files, ``tests/fixtures/registry_images.build_big_image``: throughput) and ``files`` (one layer of
5,000 small files, ``build_files_image`` here: per-entry cost) — a loopback ``docker-registry`` holding
both (``tests/fixtures/registry.Registry``), and a private ``shoal-agent`` for the CLI rows. Each
contender is warmed up once, then N rounds run every contender once in a freshly shuffled order (so drift
on a shared machine hits all alike). Every sample is cold in the sense that its destination (image store,
OCI dir, bundle, rootfs dir) is new and empty; the page cache is *not* dropped, so the source blobs (the
registry's files, the layout's layer blobs) are read from memory, as they would be on a registry host
that just served them. Before each sample the previous contender's output is deleted and ``sync`` runs,
outside the timed region, so one contender's writeback does not land in the next one's sample. Every
sample's output is checked (file count and bytes) against what GNU tar produced, also outside the timed
region.

Run as root with the project's venv:
``/opt/shoal-venv/bin/python bench/pull_unpack.py [--n 5] [--out bench/results/pull_unpack.json]``.
What each row measures is written up in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `agent`, `tests` and `bench` importable
    sys.path.insert(0, str(REPO))

try:
    from agent.images.layers import unpack_layer
    from agent.images.pull import Puller, RegistrySettings
    from agent.images.store import ImageStore
    from bench import start_latency
    from tests.fixtures.registry import Registry
    from tests.fixtures.registry_images import build_big_image
except ImportError as exc:  # pragma: no cover - depends on the interpreter used
    raise SystemExit(f"pull_unpack: {exc}; run with /opt/shoal-venv/bin/python") from None

REPOSITORY_TAG = "big:v1"
SHOAL_UNPACK = "shoal unpack_layer x4"
TAR_UNPACK = "tar -xzf x4"
MB = 1_000_000


@dataclass(frozen=True)
class Content:
    """What an unpack produced, to check every contender wrote the same thing (directories are left out:
    per-layer directories repeat the parents that one merged rootfs has once)."""

    files: int
    symlinks: int
    bytes: int


@dataclass(frozen=True)
class Sample:
    """One timed run: ``total`` seconds, named phases (seconds) and the content it produced."""

    total: float
    content: Content
    phases: tuple[tuple[str, float], ...] = ()


class Contender(Protocol):
    """One way of getting the image (or its layers) onto disk.

    ``run_once`` times one cold run into ``scratch`` (an empty directory it owns) and returns the sample;
    it raises if the tool failed. The caller deletes ``scratch`` afterwards, outside the timed region."""

    name: str
    note: str
    peer: str | None  # the row this one is compared against
    image: BenchImage

    def run_once(self, scratch: Path) -> Sample: ...


@dataclass(frozen=True)
class Summary:
    name: str
    note: str
    peer: str | None
    n: int
    p50_s: float
    min_s: float
    max_s: float
    mb_per_s: float  # compressed MB / p50
    vs_peer_p50: float | None  # p50 / peer's p50
    vs_peer_paired: float | None  # median over rounds of (this sample / peer's sample in the same round)
    phases_p50_s: dict[str, float]


# --- the images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBlob:
    path: Path  # gzip blob in the OCI layout
    diff_id: str
    compressed_bytes: int
    uncompressed_bytes: int


@dataclass(frozen=True)
class BenchImage:
    """One image under test: its OCI layout on disk and the name it has in the registry."""

    label: str  # short name used in row names: "big", "files"
    layout: Path
    tag: str  # tag in the layout
    repo_tag: str  # REPOSITORY:TAG in the registry
    layers: tuple[LayerBlob, ...]

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.compressed_bytes for layer in self.layers)

    @property
    def uncompressed_bytes(self) -> int:
        return sum(layer.uncompressed_bytes for layer in self.layers)


def load_image(label: str, layout: Path, *, tag: str, repo_tag: str) -> BenchImage:
    """Reads the layout's manifest for ``tag`` and its config's diff_ids; measures uncompressed sizes."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest_desc = next(m for m in index["manifests"]
                         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads((blobs / manifest_desc["digest"].split(":", 1)[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":", 1)[1]).read_bytes())
    layers = []
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        path = blobs / desc["digest"].split(":", 1)[1]
        uncompressed = 0
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                uncompressed += len(chunk)
        layers.append(LayerBlob(path=path, diff_id=diff_id, compressed_bytes=path.stat().st_size,
                                uncompressed_bytes=uncompressed))
    return BenchImage(label=label, layout=layout, tag=tag, repo_tag=repo_tag, layers=tuple(layers))


def _file_data(rng: random.Random, size: int) -> bytes:
    # 4 KiB random blocks written twice: gzip halves it, like the big image's data (and unlike zeros,
    # inflating it is real work).
    out = bytearray()
    while len(out) < size:
        block = rng.randbytes(4096)
        out += block + block
    return bytes(out[:size])


def build_files_image(directory: Path, *, files: int, seed: int = 1) -> Path:
    """An OCI layout (tag ``v1``) with one gzip layer of ``files`` small files (log-normal sizes, median
    8 KiB, capped at 4 MiB) in nested directories, plus a symlink per 20 files: the many-entries shape
    of a real distribution layer, where per-entry cost shows. Deterministic for (files, seed); reused if
    already built in ``directory``. umoci builds the image (``raw add-layer`` compresses the tar)."""
    layout = directory / f"files-{files}-seed{seed}"
    if (layout / "index.json").exists() and (layout / ".complete").exists():
        return layout
    shutil.rmtree(layout, ignore_errors=True)
    layout.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    layer_tar = directory / f"files-{files}-seed{seed}.tar"
    with tarfile.open(layer_tar, "w", format=tarfile.PAX_FORMAT) as tf:
        made: set[str] = set()
        for n in range(files):
            parent = f"usr/lib/pkg{n // 150:03d}/mod{(n // 15) % 10}"
            for depth in range(1, parent.count("/") + 2):
                d = "/".join(parent.split("/")[:depth])
                if d not in made:
                    made.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
                    tf.addfile(info)
            data = _file_data(rng, min(4 << 20, int(rng.lognormvariate(9.0, 1.5))))
            info = tarfile.TarInfo(f"{parent}/f{n}.so")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
            if n % 20 == 0:
                link = tarfile.TarInfo(f"{parent}/l{n}")
                link.type, link.linkname, link.mtime = tarfile.SYMTYPE, f"f{n}.so", 1_600_000_000
                tf.addfile(link)
    try:
        for argv in (["umoci", "init", "--layout", str(layout)],
                     ["umoci", "new", "--image", f"{layout}:base"],
                     ["umoci", "raw", "add-layer", "--image", f"{layout}:base", "--tag", "v1",
                      str(layer_tar)]):
            run_tool(argv)
    finally:
        layer_tar.unlink()
    (layout / ".complete").touch()
    return layout


def tree_content(*roots: Path) -> Content:
    files = symlinks = size = 0
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            for name in names:
                st = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(st.st_mode):
                    files += 1
                    size += st.st_size
                elif stat.S_ISLNK(st.st_mode):
                    symlinks += 1
    return Content(files=files, symlinks=symlinks, bytes=size)


def run_tool(argv: Sequence[str]) -> float:
    """Wall time of a whole process, output captured; raises unless it exits 0."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()[-800:]}")
    return elapsed


# --- contenders: pull + unpack -----------------------------------------------------------------------


@dataclass
class ShoalPull:
    """``Puller(ImageStore(fresh)).pull(ref)`` in this process: a fresh store and a fresh puller
    (new connections) every run; default settings (up to 3 layers in parallel)."""

    name: str
    image: BenchImage
    host: str
    auth_file: Path
    peer: str | None = None
    note: str = ""

    def run_once(self, scratch: Path) -> Sample:
        store = ImageStore(scratch / "store")
        puller = Puller(store, RegistrySettings(auth_file=self.auth_file))
        try:
            start = time.perf_counter()
            image = puller.pull(f"{self.host}/{self.image.repo_tag}")
            elapsed = time.perf_counter() - start
        finally:
            puller.close()
        return Sample(total=elapsed, content=tree_content(*store.layer_paths(image)))


@dataclass
class ShoalCliPull:
    """``shoal image pull -q REF`` as a whole process against a private agent; the image is removed
    and the store pruned after each run (untimed), so the next pull finds nothing."""

    name: str
    image: BenchImage
    host: str
    agent: start_latency.Agent
    peer: str | None = None
    note: str = ""

    def _cli(self, *args: str) -> list[str]:
        return [str(Path(sys.executable).parent / "shoal"), "--agent", self.agent.address, *args]

    def run_once(self, scratch: Path) -> Sample:
        ref = f"{self.host}/{self.image.repo_tag}"
        layers = self.agent.root / "state" / "images" / "layers"
        if any(layers.iterdir()):
            raise RuntimeError(f"{self.name}: the agent's store is not empty before the pull")
        elapsed = run_tool(self._cli("image", "pull", "-q", ref))
        content = tree_content(layers)
        run_tool(self._cli("image", "rm", ref))
        run_tool(self._cli("image", "prune"))
        return Sample(total=elapsed, content=content)


@dataclass
class SkopeoUmoci:
    """``skopeo copy docker://… oci:DIR:v1`` then ``umoci unpack --image DIR:v1 BUNDLE``, each a whole
    process, timed together with each part as a phase."""

    name: str
    image: BenchImage
    host: str
    peer: str | None = None
    note: str = ""

    def run_once(self, scratch: Path) -> Sample:
        layout, bundle = scratch / "oci", scratch / "bundle"
        copy = run_tool(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                         f"docker://{self.host}/{self.image.repo_tag}", f"oci:{layout}:v1"])
        unpack = run_tool(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)])
        return Sample(total=copy + unpack, content=tree_content(bundle / "rootfs"),
                      phases=(("skopeo copy", copy), ("umoci unpack", unpack)))


# --- contenders: unpack alone ------------------------------------------------------------------------


@dataclass
class ShoalUnpack:
    """``unpack_layer`` on each gzip blob of the layout in turn (diff_id verified), each layer timed."""

    name: str
    image: BenchImage
    peer: str | None = None
    note: str = ""

    def run_once(self, scratch: Path) -> Sample:
        phases = []
        dests = []
        for number, layer in enumerate(self.image.layers, start=1):
            dest = scratch / f"layer{number}"
            start = time.perf_counter()
            with open(layer.path, "rb", buffering=0) as stream:  # as the puller opens its temp blob
                unpack_layer(stream, dest, expected_diff_id=layer.diff_id)
            phases.append((f"layer {number}", time.perf_counter() - start))
            dests.append(dest)
        return Sample(total=sum(t for _, t in phases), content=tree_content(*dests), phases=tuple(phases))


@dataclass
class TarUnpack:
    """``tar -xzf BLOB -C DIR`` (GNU tar, gzip as its child process) on each blob, each layer timed."""

    name: str
    image: BenchImage
    peer: str | None = None
    note: str = ""

    def run_once(self, scratch: Path) -> Sample:
        phases = []
        dests = []
        for number, layer in enumerate(self.image.layers, start=1):
            dest = scratch / f"layer{number}"
            dest.mkdir()
            phases.append((f"layer {number}", run_tool(["tar", "-xzf", str(layer.path), "-C", str(dest)])))
            dests.append(dest)
        return Sample(total=sum(t for _, t in phases), content=tree_content(*dests), phases=tuple(phases))


@dataclass
class UmociRawUnpack:
    """``umoci raw unpack --image LAYOUT:TAG ROOTFS``: all layers applied into one rootfs, no bundle
    config and no mtree manifest."""

    name: str
    image: BenchImage
    peer: str | None = None
    note: str = ""

    def run_once(self, scratch: Path) -> Sample:
        rootfs = scratch / "rootfs"
        elapsed = run_tool(["umoci", "raw", "unpack", "--image", f"{self.image.layout}:{self.image.tag}",
                            str(rootfs)])
        return Sample(total=elapsed, content=tree_content(rootfs))


def contenders_for(image: BenchImage, *, host: str, auth_file: Path,
                   agent: start_latency.Agent | None) -> list[Contender]:
    """The rows for one image; row names start with the image's label."""
    label = image.label
    skopeo_umoci, tar = f"{label}: skopeo copy + umoci unpack", f"{label}: tar -xzf per layer"
    rows: list[Contender] = [
        ShoalPull(name=f"{label}: shoal pull (in-process)", image=image, host=host, auth_file=auth_file,
                  peer=skopeo_umoci,
                  note="Puller: download to the store's tmp/, verify, unpack_layer; 3 layers in parallel"),
        SkopeoUmoci(name=skopeo_umoci, image=image, host=host,
                    note="two whole processes; umoci unpack also writes an mtree manifest of the rootfs"),
        ShoalUnpack(name=f"{label}: shoal unpack_layer per layer", image=image, peer=tar,
                    note="one layer after the other, from the layout's blobs, diff_id verified"),
        TarUnpack(name=tar, image=image, note="GNU tar, gzip as a child process; no digest check"),
        UmociRawUnpack(name=f"{label}: umoci raw unpack", image=image, peer=tar,
                       note="all layers into one rootfs, no config, no mtree"),
    ]
    if agent is not None:
        rows.insert(1, ShoalCliPull(name=f"{label}: shoal image pull (CLI+agent)", image=image, host=host,
                                    agent=agent, peer=skopeo_umoci,
                                    note="whole CLI process (Python start-up ≈ 0.15 s) + the agent's Puller"))
    return rows


# --- measuring ---------------------------------------------------------------------------------------


@dataclass
class Runner:
    """Runs samples in scratch dirs under ``base`` and checks each one's content against the first
    sample of the same image."""

    base: Path
    settle: float = 0.3
    expected: dict[str, Content] = field(default_factory=dict)
    _counter: int = field(default=0, init=False)

    def sample(self, contender: Contender) -> Sample:
        self._counter += 1
        scratch = self.base / f"s{self._counter}"
        scratch.mkdir()
        # Quiet start: the previous sample's output is gone and written back before the clock starts.
        os.sync()
        time.sleep(self.settle)
        try:
            result = contender.run_once(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        expected = self.expected.setdefault(contender.image.label, result.content)
        if result.content != expected:
            raise RuntimeError(f"{contender.name} produced {result.content}, expected {expected}")
        return result


def measure(contenders: Sequence[Contender], runner: Runner, *, n: int, warmup: int,
            seed: int) -> dict[str, list[Sample]]:
    """Warm-up runs first (untimed), then N rounds, each running every contender once in a fresh random
    order (fixed seed)."""
    for contender in contenders:
        for _ in range(warmup):
            runner.sample(contender)
    rng = random.Random(seed)
    samples: dict[str, list[Sample]] = {c.name: [] for c in contenders}
    order = list(contenders)
    for round_no in range(n):
        rng.shuffle(order)
        for contender in order:
            samples[contender.name].append(runner.sample(contender))
        print(f"  round {round_no + 1}/{n} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return samples


def summarize(contender: Contender, samples: dict[str, list[Sample]]) -> Summary:
    own = [s.total for s in samples[contender.name]]
    p50 = statistics.median(own)
    peer = samples.get(contender.peer) if contender.peer else None
    vs_p50 = vs_paired = None
    if peer:
        peer_totals = [s.total for s in peer]
        vs_p50 = p50 / statistics.median(peer_totals)
        vs_paired = statistics.median(a / b for a, b in zip(own, peer_totals, strict=True))
    runs = samples[contender.name]
    phases = {name: statistics.median(dict(s.phases)[name] for s in runs) for name, _ in runs[0].phases}
    return Summary(name=contender.name, note=contender.note, peer=contender.peer, n=len(own), p50_s=p50,
                   min_s=min(own), max_s=max(own), mb_per_s=contender.image.compressed_bytes / MB / p50,
                   vs_peer_p50=vs_p50, vs_peer_paired=vs_paired, phases_p50_s=phases)


def ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def print_tables(summaries: Sequence[Summary], images: Sequence[BenchImage]) -> None:
    header = (f"{'contender':<40} {'p50 s':>7} {'min s':>7} {'max s':>7} {'MB/s':>6}  {'vs peer':>7} "
              f"{'paired':>7}  peer")
    print(header)
    print("-" * len(header))
    for s in summaries:
        print(f"{s.name:<40} {s.p50_s:>7.3f} {s.min_s:>7.3f} {s.max_s:>7.3f} {s.mb_per_s:>6.1f}  "
              f"{ratio(s.vs_peer_p50):>7} {ratio(s.vs_peer_paired):>7}  {s.peer or ''}")
        if s.phases_p50_s and "per layer" not in s.name:  # per-layer phases: own table below
            print("    phases p50: " + ", ".join(f"{k} {v:.3f} s" for k, v in s.phases_p50_s.items()))
    print("(MB/s: compressed image bytes / p50; vs peer: p50 / peer p50; paired: median of per-round ratios)")
    by_name = {s.name: s for s in summaries}
    print(f"\n{'layer':<10} {'gzip MB':>8} {'tar MB':>8} {'unpack_layer p50':>17} {'tar -xzf p50':>13} "
          f"{'ratio':>6}")
    for image in images:
        mine = by_name[f"{image.label}: shoal unpack_layer per layer"].phases_p50_s
        theirs = by_name[f"{image.label}: tar -xzf per layer"].phases_p50_s
        for number, layer in enumerate(image.layers, start=1):
            key = f"layer {number}"
            print(f"{image.label + ' ' + str(number):<10} {layer.compressed_bytes / MB:>8.1f} "
                  f"{layer.uncompressed_bytes / MB:>8.1f} {mine[key]:>15.3f} s {theirs[key]:>11.3f} s "
                  f"{mine[key] / theirs[key]:>5.2f}x")
    seen = set()
    for s in summaries:
        note_key = s.name.split(": ", 1)[-1]
        if s.note and note_key not in seen:
            seen.add(note_key)
            print(f"* {note_key}: {s.note}")


def machine_info() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        return start_latency.tool_version(argv).splitlines()[0]

    return {
        "source": start_latency.source_revision(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "skopeo": first_line(["skopeo", "--version"]),
        "umoci": first_line(["umoci", "--version"]),
        "tar": first_line(["tar", "--version"]),
        "gzip": first_line(["gzip", "--version"]),
        "registry": first_line(["docker-registry", "--version"]),
    }



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=5, help="timed rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per contender first")
    parser.add_argument("--settle-ms", type=float, default=300.0,
                        help="quiet time (after sync) before each sample (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the per-round shuffle")
    parser.add_argument("--files", type=int, default=5000,
                        help="small files in the many-files image (default %(default)s; 0 = big image only)")
    parser.add_argument("--image-cache", type=Path, default=None,
                        help="directory to build/reuse the images in (default: inside the temp dir)")
    parser.add_argument("--no-cli", action="store_true", help="skip the shoal-agent + shoal CLI rows")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result file (default bench/results/pull_unpack-<time>.json)")
    parser.add_argument("--keep-temp", action="store_true", help="leave the temp dir for inspection")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("pull_unpack: must run as root (umoci unpack and GNU tar keep ownership)")
    out = args.out or REPO / "bench" / "results" / f"pull_unpack-{time.strftime('%Y%m%dT%H%M%S')}.json"

    cgroup_parent = f"shoal-bench-{uuid.uuid4().hex[:8]}-pull"
    problems: list[str] = []
    agent: start_latency.Agent | None = None
    registry: Registry | None = None
    load_before = os.getloadavg()
    with start_latency.bench_environment(args.keep_temp) as work:
        try:
            print(f"setting up in {work}", file=sys.stderr, flush=True)
            cache = args.image_cache or work / "images"
            big = build_big_image(cache)
            images = [load_image("big", big.layout, tag=big.tag, repo_tag="big:v1")]
            if args.files:
                files_layout = build_files_image(cache, files=args.files)
                images.append(load_image("files", files_layout, tag="v1", repo_tag="files:v1"))
            registry = Registry(work / "registry").start()
            for image in images:
                registry.push(image.layout, image.tag, image.repo_tag, format="oci")
            if not args.no_cli:
                agent = start_latency.Agent(root=work / "agent", cgroup_parent=cgroup_parent)
                agent.start()
            auth_file = work / "auth.json"  # never written: the registry is anonymous
            contenders = [row for image in images for row in
                          contenders_for(image, host=registry.host, auth_file=auth_file, agent=agent)]
            for image in images:
                print(f"image {image.label}: {image.compressed_bytes / MB:.1f} MB gzip in "
                      f"{len(image.layers)} layer(s), {image.uncompressed_bytes / MB:.1f} MB tar",
                      file=sys.stderr)
            print(f"{args.n} rounds x {len(contenders)} contenders", file=sys.stderr, flush=True)
            runner = Runner(base=work / "scratch", settle=args.settle_ms / 1000)
            runner.base.mkdir()
            # Each image's reference content comes from GNU tar; every other sample is checked against it.
            for row in contenders:
                if isinstance(row, TarUnpack):
                    runner.sample(row)
            samples = measure(contenders, runner, n=args.n, warmup=args.warmup, seed=args.seed)
        finally:
            if agent is not None:
                problems += agent.stop()
            if registry is not None:
                registry.stop()
            problems += start_latency.remove_cgroup_tree(cgroup_parent)
    load_after = os.getloadavg()

    summaries = [summarize(c, samples) for c in contenders]
    info = machine_info()
    print(f"\nkernel {info['kernel']}, {info['cpus']} CPUs, Python {info['python']} (zlib {info['zlib']}); "
          f"{info['skopeo']}; {info['umoci']}; {info['tar']}; {info['registry']}; source {info['source']}")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    for label, content in runner.expected.items():
        print(f"content {label}: {content.files} files, {content.symlinks} symlinks, "
              f"{content.bytes / MB:.1f} MB")
    print()
    print_tables(summaries, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([sys.executable, *sys.argv]),
        "n": args.n, "warmup": args.warmup, "settle_ms": args.settle_ms, "seed": args.seed,
        "machine": info,
        "load_average": {"before": load_before, "after": load_after},
        "images": {image.label: {
            "repo_tag": image.repo_tag, "content": runner.expected[image.label].__dict__,
            "layers": [{"diff_id": la.diff_id, "compressed_bytes": la.compressed_bytes,
                        "uncompressed_bytes": la.uncompressed_bytes} for la in image.layers],
        } for image in images},
        "summaries": [s.__dict__ for s in summaries],
        "samples_s": {name: [{"total": round(s.total, 4), **{k: round(v, 4) for k, v in s.phases}}
                             for s in values] for name, values in samples.items()},
        "teardown_problems": problems,
    }, indent=1))
    print(f"\nwrote {out}")
    for problem in problems:
        print(f"teardown: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
