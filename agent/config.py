"""``shoal-agent serve`` settings: command-line flags → one frozen dataclass.

Listen addresses are gRPC targets: ``unix:///run/shoal/agent.sock`` (the default, mode 0600) or
``HOST:PORT``. A TCP listener carries the whole API, so it requires mutual TLS (``--tls-dir`` holding
``ca.pem``, ``agent.pem`` and ``agent-key.pem``); plain TCP needs the explicit ``--insecure-tcp``, meant
for tests on loopback only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/shoal")
DEFAULT_LISTEN = "unix:///run/shoal/agent.sock"
DEFAULT_CGROUP_PARENT = "shoal"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class AgentSettings:
    root: Path
    listen: tuple[str, ...]
    cgroup_parent: str
    log_level: str
    log_max_bytes: int
    log_max_files: int
    tls: TlsFiles | None
    insecure_tcp: bool
    insecure_registries: tuple[str, ...] = ()
    registry_ca: Path | None = None
    pull_parallel: int = 3
    # What a registry or an image archive may make the agent do (issue 12): every blob download ends
    # within the deadline; declared and unpacked sizes are capped.
    pull_blob_deadline: float = 3600.0
    max_layer_size: int = 10 << 30
    max_unpacked_layer_size: int = 32 << 30
    max_compression_ratio: float = 100.0
    subnet: ipaddress.IPv4Network | None = None
    bridge: str = "shoal0"
    labels: tuple[tuple[str, str], ...] = ()
    metrics_listen: str = ""
    sample_interval: float = 1.0
    memory_reserve_bytes: int = 256 << 20
    cpu_reserve_millis: int = 0
    memory_pressure_bytes: int = 100 << 20
    disk_pressure_fraction: float = 0.10
    disk_pressure_inodes_fraction: float = 0.05
    # Pulls and imports refuse to start with less free space than this on the root's filesystem: the
    # smaller of the two when both are set (--min-free-space).
    min_free_bytes: int | None = 1 << 30
    min_free_fraction: float | None = 0.05
    ballast_mib: int = 0
    cgroup_delegate: bool = False
    join: tuple[str, ...] = ()        # schedulers to register with (HOST:PORT)
    advertise: str = ""               # where they reach this agent's API
    stop_replicas_after: float = 0.0  # self-fencing: seconds without any scheduler (0: off)


def unix_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address[len("unix://"):])
    if address.startswith("unix:"):
        return Path(address[len("unix:"):])
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal-agent", description="Shoal's per-host container agent")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the agent (gRPC API over a unix socket or mTLS TCP)")
    serve.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                       help=f"state directory (default {DEFAULT_ROOT})")
    serve.add_argument("--listen", action="append", default=[], metavar="ADDR",
                       help=f"unix:///PATH or HOST:PORT; repeatable (default {DEFAULT_LISTEN})")
    serve.add_argument("--cgroup-parent", default=DEFAULT_CGROUP_PARENT,
                       help="cgroup under which containers are created (default %(default)s)")
    serve.add_argument("--cgroup-delegate", action="store_true",
                       help="create the cgroup parent inside the cgroup systemd delegated to this "
                            "agent's unit (Delegate=yes) instead of at the top of each hierarchy; "
                            "refused outside a delegated unit")
    serve.add_argument("--log-level", default=os.environ.get("SHOAL_LOG_LEVEL", "info"),
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-max-size", default="10M",
                       help="rotate a container's log file at this size (default %(default)s)")
    serve.add_argument("--log-max-files", type=int, default=3,
                       help="log files kept per container, current one included (default %(default)s)")
    serve.add_argument("--tls-dir", type=Path, default=None,
                       help="directory with ca.pem, agent.pem, agent-key.pem for mTLS on TCP listeners")
    serve.add_argument("--insecure-tcp", action="store_true",
                       help="allow TCP listeners without TLS (testing on loopback only)")
    serve.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                       help="registry reachable over plain HTTP (loopback registries always are)")
    serve.add_argument("--registry-ca", type=Path, default=None,
                       help="extra CA bundle for registries' HTTPS (system CAs are always trusted)")
    serve.add_argument("--pull-parallel", type=int, default=3,
                       help="concurrent layer downloads per pull (default %(default)s)")
    serve.add_argument("--pull-blob-deadline", default="1h", metavar="DURATION",
                       help="longest one layer or config download may take, retries included, however the "
                            "registry behaves (default %(default)s)")
    serve.add_argument("--max-layer-size", default="10G", metavar="SIZE",
                       help="refuse an image whose manifest declares a compressed layer larger than this "
                            "(default %(default)s)")
    serve.add_argument("--max-unpacked-layer-size", default="32G", metavar="SIZE",
                       help="stop unpacking a layer (pulled or imported) past this many uncompressed bytes "
                            "(default %(default)s)")
    serve.add_argument("--max-compression-ratio", type=float, default=100.0, metavar="RATIO",
                       help="stop unpacking a layer that expands more than RATIO times its compressed "
                            "size, once past 256M (gzip bombs; default %(default)g)")
    serve.add_argument("--subnet", default=None, metavar="CIDR",
                       help="IPv4 subnet for bridge-networked containers, e.g. 10.88.0.0/24; with it, "
                            "--network bridge becomes the default")
    serve.add_argument("--bridge", default="shoal0", help="host bridge name (default %(default)s)")
    serve.add_argument("--join", action="append", default=[], metavar="SCHEDULER[,SCHEDULER...]",
                       help="register this host with a scheduler (HOST:PORT; several for failover)")
    serve.add_argument("--advertise", default="", metavar="HOST:PORT",
                       help="the address schedulers reach this agent's API at (default: its first TCP "
                            "--listen address)")
    serve.add_argument("--stop-replicas-after", type=float, default=0.0, metavar="SECONDS",
                       help="with --join: stop this host's scheduler-managed containers once no scheduler "
                            "has been reachable for this long, for services that must never run twice "
                            "(default 0: off; never set it below the scheduler's --host-grace)")
    serve.add_argument("--label", action="append", default=[], metavar="K=V",
                       help="label of this host, reported to the scheduler (repeatable)")
    serve.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                       help="serve Prometheus /metrics (cAdvisor names) here")
    serve.add_argument("--sample-interval", default="1s", metavar="DURATION",
                       help="how often container usage is sampled (default %(default)s)")
    serve.add_argument("--memory-reserve", default="256M",
                       help="memory kept for the system: allocatable = total - reserve (default %(default)s)")
    serve.add_argument("--cpu-reserve", default="0",
                       help="cpu kept for the system, in cores or millicores (250m): allocatable = "
                            "cores - reserve (default %(default)s)")
    serve.add_argument("--memory-pressure-below", default="100M", metavar="SIZE",
                       help="report MemoryPressure while available memory is below this "
                            "(default %(default)s)")
    serve.add_argument("--disk-pressure-below", default="10%", metavar="PERCENT",
                       help="report DiskPressure while free space on the root's filesystem is below this "
                            "share (default %(default)s)")
    serve.add_argument("--disk-pressure-inodes-below", default="5%", metavar="PERCENT",
                       help="report DiskPressure while free inodes on the root's filesystem are below "
                            "this share (default %(default)s)")
    serve.add_argument("--min-free-space", default="1G,5%", metavar="SIZE|PERCENT[,...]",
                       help="refuse to start an image pull or import while the root's filesystem has less "
                            "free space than this (a size, a share of the filesystem, or both: the smaller "
                            "applies; 0 turns it off; default %(default)s)")
    # Benchmarks only: grow the daemon's heap to show start latency does not depend on it.
    serve.add_argument("--bench-ballast-mib", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    from agent.errors import ShoalError
    from agent.runtime.spec import parse_size
    from agent.usage.host import parse_labels

    tls = None
    if args.tls_dir is not None:
        tls = TlsFiles(ca=args.tls_dir / "ca.pem", cert=args.tls_dir / "agent.pem",
                       key=args.tls_dir / "agent-key.pem")
    if not args.cgroup_parent or "/" in args.cgroup_parent.strip("/") or ".." in args.cgroup_parent:
        raise SystemExit(f"shoal-agent: invalid --cgroup-parent {args.cgroup_parent!r}: one path component")
    if args.cgroup_delegate and args.cgroup_parent.strip("/") == "agent":
        # agent.cgroups.delegation.AGENT_LEAF: the group the agent process itself moves into.
        raise SystemExit("shoal-agent: --cgroup-parent agent is taken by the agent itself under "
                         "--cgroup-delegate: choose another name")
    if args.log_max_files < 1:
        raise SystemExit("shoal-agent: --log-max-files must be at least 1")
    listen = tuple(args.listen or [DEFAULT_LISTEN])
    for address in listen:
        if unix_path(address) is None and tls is None and not args.insecure_tcp:
            raise SystemExit(
                f"shoal-agent: TCP listener {address} needs mutual TLS: pass --tls-dir DIR "
                "(with ca.pem, agent.pem, agent-key.pem), or --insecure-tcp for loopback tests"
            )
    if args.insecure_tcp:
        _insecure_only_on_loopback(a for a in listen if unix_path(a) is None)
    from agent.runtime.spec import parse_cpus, parse_duration

    subnet = None
    if args.subnet is not None:
        try:
            subnet = ipaddress.IPv4Network(args.subnet, strict=True)
        except ValueError as err:
            raise SystemExit(f"shoal-agent: invalid --subnet {args.subnet!r}: {err}") from None
        if subnet.num_addresses < 4:
            raise SystemExit(f"shoal-agent: --subnet {subnet} is too small: use /30 or larger")
    if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", args.bridge):
        raise SystemExit(f"shoal-agent: invalid --bridge {args.bridge!r}: 1-15 letters, digits, '_.-'")
    try:
        labels = tuple(parse_labels(args.label).items())
        interval = parse_duration(args.sample_interval, what="--sample-interval")
        reserve = parse_size(args.memory_reserve, what="--memory-reserve")
        cpu_reserve = 0 if args.cpu_reserve.strip() in ("0", "") else parse_cpus(args.cpu_reserve,
                                                                                 what="--cpu-reserve")
        memory_pressure = parse_size(args.memory_pressure_below, what="--memory-pressure-below")
        blob_deadline = parse_duration(args.pull_blob_deadline, what="--pull-blob-deadline")
        max_layer = parse_size(args.max_layer_size, what="--max-layer-size")
        max_unpacked = parse_size(args.max_unpacked_layer_size, what="--max-unpacked-layer-size")
    except ShoalError as err:
        raise SystemExit(f"shoal-agent: {err}") from None
    disk_pressure = _percentage(args.disk_pressure_below, flag="--disk-pressure-below", example="10%")
    inodes_pressure = _percentage(args.disk_pressure_inodes_below, flag="--disk-pressure-inodes-below",
                                  example="5%")
    min_free_bytes, min_free_fraction = _min_free_space(args.min_free_space)
    if interval < 0.1:
        raise SystemExit("shoal-agent: --sample-interval must be at least 100ms")
    if args.pull_parallel < 1:
        raise SystemExit("shoal-agent: --pull-parallel must be at least 1")
    if not 1 <= blob_deadline < float("inf"):
        raise SystemExit("shoal-agent: --pull-blob-deadline must be at least 1s")
    if max_layer < 1 or max_unpacked < 1:
        raise SystemExit("shoal-agent: --max-layer-size and --max-unpacked-layer-size must be positive")
    if not 1 <= args.max_compression_ratio < float("inf"):
        raise SystemExit("shoal-agent: --max-compression-ratio must be a number of at least 1")
    if args.registry_ca is not None and not args.registry_ca.is_file():
        raise SystemExit(f"shoal-agent: --registry-ca {args.registry_ca} is not a file")
    if tls is not None:
        missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.is_file()]
        if missing:
            raise SystemExit(f"shoal-agent: --tls-dir is missing {', '.join(missing)}")
    join, advertise = _join_settings(args, listen=listen, tls=tls)
    if args.stop_replicas_after < 0 or args.stop_replicas_after != args.stop_replicas_after:
        raise SystemExit("shoal-agent: --stop-replicas-after must be 0 (off) or a positive number of seconds")
    if args.stop_replicas_after and not join:
        raise SystemExit("shoal-agent: --stop-replicas-after only matters with --join")
    return AgentSettings(
        root=args.root.absolute(), listen=listen,
        cgroup_parent=args.cgroup_parent.strip("/"), log_level=args.log_level,
        log_max_bytes=parse_size(args.log_max_size, what="log size"), log_max_files=args.log_max_files,
        tls=tls, insecure_tcp=args.insecure_tcp, insecure_registries=tuple(args.insecure_registry),
        registry_ca=args.registry_ca.absolute() if args.registry_ca else None,
        pull_parallel=args.pull_parallel, pull_blob_deadline=blob_deadline, max_layer_size=max_layer,
        max_unpacked_layer_size=max_unpacked, max_compression_ratio=args.max_compression_ratio,
        subnet=subnet, bridge=args.bridge, labels=labels,
        metrics_listen=args.metrics_listen, sample_interval=interval, memory_reserve_bytes=reserve,
        cpu_reserve_millis=cpu_reserve, memory_pressure_bytes=memory_pressure,
        disk_pressure_fraction=disk_pressure, disk_pressure_inodes_fraction=inodes_pressure,
        min_free_bytes=min_free_bytes, min_free_fraction=min_free_fraction,
        ballast_mib=args.bench_ballast_mib,
        cgroup_delegate=args.cgroup_delegate, join=join, advertise=advertise,
        stop_replicas_after=args.stop_replicas_after,
    )


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _insecure_only_on_loopback(addresses: Iterable[str]) -> None:
    for address in addresses:
        if not is_loopback(address):
            raise SystemExit(f"shoal-agent: --insecure-tcp is for loopback only, and {address} is not: "
                             "use --tls-dir DIR (shoal certs init) for real addresses")


def _percentage(text: str, *, flag: str, example: str) -> float:
    try:
        value = float(text.strip().removesuffix("%")) / 100
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise SystemExit(f"shoal-agent: invalid {flag} {text!r}: a percentage from 0 to 99, e.g. {example}")
    return value


def _min_free_space(text: str) -> tuple[int | None, float | None]:
    """``--min-free-space``: ``1G``, ``5%`` or ``1G,5%`` (the smaller applies); ``0`` turns it off."""
    from agent.errors import ShoalError
    from agent.runtime.spec import parse_size

    size: int | None = None
    fraction: float | None = None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["0"]:
        return 0, None
    if not parts or len(parts) > 2:
        raise SystemExit(f"shoal-agent: invalid --min-free-space {text!r}: a size (1G), a percentage (5%) "
                         "or both (1G,5%)")
    for part in parts:
        if part.endswith("%"):
            if fraction is not None:
                raise SystemExit(f"shoal-agent: --min-free-space {text!r} gives two percentages")
            fraction = _percentage(part, flag="--min-free-space", example="5%")
        else:
            if size is not None:
                raise SystemExit(f"shoal-agent: --min-free-space {text!r} gives two sizes")
            try:
                size = parse_size(part, what="--min-free-space")
            except ShoalError as err:
                raise SystemExit(f"shoal-agent: {err}") from None
    return size, fraction


def _join_settings(args: argparse.Namespace, *, listen: tuple[str, ...],
                   tls: TlsFiles | None) -> tuple[tuple[str, ...], str]:
    """``--join``/``--advertise`` checked: the scheduler must be able to reach this agent over TCP, and
    the agent must be able to prove who it is (mTLS) unless TCP is explicitly insecure."""
    join = tuple(a.strip() for item in args.join for a in item.split(",") if a.strip())
    if not join:
        if args.advertise:
            raise SystemExit("shoal-agent: --advertise only matters with --join")
        return (), ""
    for address in join:
        if not re.fullmatch(r"[^\s/]+:\d{1,5}", address):
            raise SystemExit(f"shoal-agent: invalid --join address {address!r}: expected HOST:PORT")
    tcp = [a for a in listen if unix_path(a) is None]
    advertise = args.advertise or (tcp[0] if tcp else "")
    if not advertise:
        raise SystemExit("shoal-agent: --join needs a TCP listener the scheduler can reach: add "
                         "--listen HOST:PORT (with --tls-dir) or give --advertise HOST:PORT")
    host, _, port = advertise.rpartition(":")
    if not host or not port.isdigit() or host in ("0.0.0.0", "::", "[::]"):
        raise SystemExit(f"shoal-agent: cannot advertise {advertise!r}: give --advertise HOST:PORT with an "
                         "address the scheduler can reach")
    if tls is None and not args.insecure_tcp:
        raise SystemExit("shoal-agent: --join needs --tls-dir (the agent registers with its certificate)")
    if args.insecure_tcp:
        _insecure_only_on_loopback([*join, advertise])
    return join, advertise
