"""Who this host is and what it has: its stable id, version, labels and capacity.

A host's identity is what a scheduler keys its records by, so it must survive agent restarts and host
renames: ``load_or_create_host_id`` keeps a random id in ``<root>/host-id`` (written once, atomically,
0600). Capacity is what *this agent* may hand out: the cpus in its own affinity mask (a cpuset or
``taskset`` narrows it) and the host's memory. Labels come from ``shoal-agent serve --label K=V`` and let
a scheduler place by zone or hardware; they are validated here so a typo fails at start-up with a message
naming the flag. The boot id (``/proc/sys/kernel/random/boot_id``) tells a scheduler a reboot (every
container gone) from an agent restart (every container still running).

Conditions are what a scheduler avoids placing on: ``MemoryPressure`` (available memory below the agent's
threshold, like the kubelet's ``memory.available<100Mi``), ``DiskPressure`` (free space of the agent's
root's filesystem below its threshold, like ``nodefs.available<10%``, or its free inodes below theirs,
like ``nodefs.inodesFree<5%``: a disk out of inodes refuses new files just as a full one does) and
whatever the runtime reports (``SupervisorDown``). ``ConditionTracker`` keeps when each began, so
``since`` is stable across samples.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import InvalidArgument, ShoalError

HOST_ID_FILE = "host-id"
# Same shape as Kubernetes label keys: an optional DNS prefix, then a name of at most 63 characters.
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_MAX = 256
_HOST_ID = re.compile(r"^[0-9a-f]{32}$")


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# platform.machine() → the OCI / Go architecture name images and schedulers use.
_OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
             "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class HostIdentity:
    """What never changes while an agent runs: reported with every host sample."""

    host_id: str
    hostname: str
    agent_version: str
    labels: dict[str, str] = field(hash=False)
    started_at: float  # unix time the agent process started
    boot_id: str = ""
    os: str = "linux"
    architecture: str = ""

    @classmethod
    def for_this_agent(cls, *, root: Path, labels: dict[str, str]) -> HostIdentity:
        return cls(host_id=load_or_create_host_id(root), hostname=socket.gethostname(),
                   agent_version=agent_version(), labels=dict(labels), started_at=time.time(),
                   boot_id=read_boot_id(), architecture=oci_architecture())


def read_boot_id(path: Path = BOOT_ID) -> str:
    """This boot's id; empty where the kernel does not offer one."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def oci_architecture(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    return _OCI_ARCH.get(machine, machine)


@dataclass(frozen=True)
class Condition:
    type: str
    message: str
    since: float  # unix time it began


@dataclass(frozen=True)
class PressureThresholds:
    """Below these the host is under pressure (``--memory-pressure-below``, ``--disk-pressure-below``)."""

    memory_available_bytes: int = 100 << 20
    disk_free_fraction: float = 0.10
    inodes_free_fraction: float = 0.05


@dataclass(frozen=True)
class DiskSpace:
    """The agent root's filesystem, as an unprivileged writer sees it (root's reserve is not free)."""

    total: int = 0  # bytes
    free: int = 0
    inodes_total: int = 0  # 0 where the filesystem has no fixed inode count (btrfs)
    inodes_free: int = 0


def pressure(*, memory_available: int, disk: DiskSpace, thresholds: PressureThresholds,
             ) -> list[tuple[str, str]]:
    """The pressure conditions these readings mean: ``[(type, message)]``."""
    found = []
    if memory_available < thresholds.memory_available_bytes:
        found.append(("MemoryPressure", f"{memory_available >> 20} MiB available, under the threshold of "
                                        f"{thresholds.memory_available_bytes >> 20} MiB"))
    why = []
    if disk.total > 0 and disk.free < disk.total * thresholds.disk_free_fraction:
        why.append(f"{disk.free >> 20} MiB free of {disk.total >> 20} MiB, under "
                   f"{thresholds.disk_free_fraction:.0%}")
    if disk.inodes_total > 0 and disk.inodes_free < disk.inodes_total * thresholds.inodes_free_fraction:
        why.append(f"{disk.inodes_free} inodes free of {disk.inodes_total}, under "
                   f"{thresholds.inodes_free_fraction:.0%}")
    if why:
        found.append(("DiskPressure", f"{' and '.join(why)} on the agent's root"))
    return found


class ConditionTracker:
    """Turns each sample's active conditions into ``Condition``s whose ``since`` is when they began."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def update(self, active: list[tuple[str, str]], *, now: float,
               since: dict[str, float] | None = None) -> tuple[Condition, ...]:
        """``since`` overrides the start of conditions whose reporter knows it (the runtime's)."""
        known = since or {}
        current = {kind for kind, _ in active}
        self._since = {kind: known.get(kind, self._since.get(kind, now)) for kind in current}
        return tuple(Condition(kind, message, self._since[kind]) for kind, message in sorted(active))


def disk_space(path: Path) -> DiskSpace:
    """Bytes and inodes of the filesystem holding ``path``, as an unprivileged writer sees it (root's
    reserved blocks are not counted as free)."""
    st = os.statvfs(path)
    return DiskSpace(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize,
                     inodes_total=st.f_files, inodes_free=st.f_favail)


def agent_version() -> str:
    """The installed ``shoal`` package's version, ``"unknown"`` when running from a bare checkout."""
    try:
        return importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_or_create_host_id(root: Path) -> str:
    """The id kept in ``<root>/host-id``; created (128 random bits, hex) on first use.

    Written to a temporary file, fsynced and hard-linked into place: ``link`` fails if the name exists,
    so two agents racing on one root agree on whichever id landed first, and a crash never leaves a
    half-written id. A file that does not hold an id is an error, not something to overwrite: another
    host's records may be keyed by it."""
    path = root / HOST_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_host_id(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{HOST_ID_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (secrets.token_hex(16) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise ShoalError(f"cannot create the host id in {path}: {err.strerror or err}") from err
    return _read_host_id(path)


def _read_host_id(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ShoalError(f"cannot read the host id {path}: {err.strerror or err}") from err
    if not _HOST_ID.match(text):
        raise ShoalError(f"{path} does not hold a host id (32 hex digits); fix or remove it by hand")
    return text


def read_host_capacity(*, meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """``(cpu_cores, memory_total_bytes)`` this agent can use.

    Cores are the cpus in the agent's affinity mask, which a cpuset or ``taskset`` narrows; a host
    with 8 cpus where the agent may run on 2 offers 2."""
    cores = len(os.sched_getaffinity(0))
    return cores, read_meminfo(meminfo)["MemTotal"]


def read_meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """``/proc/meminfo`` in bytes (the file says kB, meaning KiB)."""
    return parse_meminfo(path.read_text(encoding="ascii"))


def parse_meminfo(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        with contextlib.suppress(ValueError):
            value = int(parts[0])
            out[key] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``["zone=a", "disk=ssd"]`` → ``{"zone": "a", "disk": "ssd"}``; ``InvalidArgument`` naming the
    bad item (no ``=``, a malformed key, a key given twice, a value too long or with control chars)."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"--label {item!r}: expected KEY=VALUE")
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(
                f"--label {item!r}: key {key!r} must be letters, digits, '-', '_' or '.', start and end "
                "with a letter or digit, at most 63 characters, optionally after a 'domain/' prefix"
            )
        if key in labels:
            raise InvalidArgument(f"--label {item!r}: label {key!r} is given twice")
        if len(value) > _LABEL_VALUE_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise InvalidArgument(
                f"--label {item!r}: value must be at most {_LABEL_VALUE_MAX} printable characters"
            )
        labels[key] = value
    return labels
