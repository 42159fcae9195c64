"""LaunchPlan: everything needed to turn a prepared container into a running process.

The daemon builds a plan (image layers resolved, cgroups created, init layer written), the supervisor
receives it as JSON over its socket, and ``agent.runtime.launch`` carries it out in a forked child. A plan
is plain data so it can cross that process boundary and be logged; it holds no secrets beyond the
container's own environment.

Paths are absolute host paths. Nothing in a plan is trusted to be safe by the launcher's caller: the
launcher validates what it must (e.g. that ``rootfs`` is a directory it created) and fails with
``LaunchError``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.rootfs.overlay import OverlayRootfs as OverlayRootfs  # re-exported: it crosses with the plan

# Docker's default capability set (moby/oci/caps/defaults.go), by name without the CAP_ prefix.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)

# runc/Docker defaults: hidden (bind /dev/null or an empty read-only tmpfs over them) ...
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
# ... and visible but read-only.
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)


@dataclass(frozen=True)
class DeviceNode:
    """A device node created in the container's tmpfs /dev (and allowed by the devices cgroup)."""

    path: str  # inside the container, e.g. "/dev/null"
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o666


# The devices every container gets (as runc's default "allowed devices"; /dev/pts and /dev/ptmx come
# from a private devpts instance, /dev/shm and /dev/mqueue are mounts).
DEFAULT_DEVICES: tuple[DeviceNode, ...] = (
    DeviceNode("/dev/null", "c", 1, 3),
    DeviceNode("/dev/zero", "c", 1, 5),
    DeviceNode("/dev/full", "c", 1, 7),
    DeviceNode("/dev/random", "c", 1, 8),
    DeviceNode("/dev/urandom", "c", 1, 9),
    DeviceNode("/dev/tty", "c", 5, 0),
)


@dataclass(frozen=True)
class LaunchPlan:
    """One container process: its root, namespaces, cgroups, credentials and command."""

    container_id: str
    rootfs: OverlayRootfs
    argv: tuple[str, ...]
    env: tuple[str, ...]  # "K=V"
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    hostname: str = ""
    read_only: bool = False
    # Namespaces to create: subset of {"pid", "mount", "uts", "ipc", "net", "cgroup"}. "net" is absent
    # for --network host.
    namespaces: tuple[str, ...] = ("pid", "mount", "uts", "ipc", "net", "cgroup")
    # A persistent network namespace to join instead of creating one (``--network bridge``: the agent's
    # ``agent.network`` built and wired it, bind-mounted at this path). When set, "net" in
    # ``namespaces`` is ignored: joining and creating are mutually exclusive.
    netns_path: str = ""
    # Files the launcher writes "0" (itself) into before unsharing the cgroup namespace:
    # ``Cgroup.join_files()`` — each v1 hierarchy's ``tasks``, or v2's one ``cgroup.procs``.
    cgroup_procs: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    masked_paths: tuple[str, ...] = DEFAULT_MASKED_PATHS
    readonly_paths: tuple[str, ...] = DEFAULT_READONLY_PATHS
    devices: tuple[DeviceNode, ...] = DEFAULT_DEVICES
    no_new_privileges: bool = True
    # The container's seccomp filter, compiled by the daemon (``agent.security.seccomp_filter``): a BPF
    # program in base64 and its seccomp(2) flags. Empty: no filter (``seccomp=unconfined``).
    seccomp_program: str = ""
    seccomp_flags: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LaunchPlan:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LaunchPlan:
        raw = dict(raw)
        rootfs = raw.pop("rootfs")
        devices = raw.pop("devices", None)
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()
        }
        kwargs["rootfs"] = OverlayRootfs(
            lower=tuple(rootfs["lower"]), upper=rootfs["upper"], work=rootfs["work"],
            target=rootfs["target"],
        )
        if devices is not None:
            kwargs["devices"] = tuple(DeviceNode(**d) for d in devices)
        return cls(**kwargs)


@dataclass(frozen=True)
class ExecPlan:
    """A process to start inside a running container (``shoal exec``): joins all its namespaces and
    its cgroup, with the container's capabilities, credentials, no_new_privs and seccomp filter."""

    target_pid: int  # host pid of the container's pid 1
    argv: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    cgroup_procs: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    no_new_privileges: bool = True
    # The same filter as the container's init (see ``LaunchPlan``).
    seccomp_program: str = ""
    seccomp_flags: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ExecPlan:
        raw = json.loads(text)
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**kwargs)
