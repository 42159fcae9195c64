"""The cgroup contract: what a container's control group must do, whatever the host's cgroup version.

Shoal puts every container in a control group of its own so that it can cap the container's memory, CPU
and process count, account what it used, find all of its processes and kill them together. Linux offers
two incompatible interfaces for that: cgroup v1 (one hierarchy per controller, e.g.
``/sys/fs/cgroup/memory/shoal/ID`` and ``/sys/fs/cgroup/cpu/shoal/ID``) and cgroup v2 (one unified
hierarchy, ``/sys/fs/cgroup/shoal/ID``). This module defines the values (``Limits``, ``DeviceRule``,
``CgroupStats``), the two protocols every implementation satisfies (``CgroupManager`` for a host,
``Cgroup`` for one container's group) and the parsing of the mount table. ``agent.cgroups.detect`` is the
single factory that reads the host's mount table and picks ``agent.cgroups.v1`` or ``agent.cgroups.v2``.
It is modelled on youki's ``libcgroups``.

Callers
    * The container runtime (``agent.runtime``) calls ``create()`` while preparing a container, puts
      ``procs_files()`` into the ``LaunchPlan`` (the launcher writes its own pid into each file *before*
      it unshares the cgroup namespace, so the container's cgroup namespace is rooted at its own group),
      calls ``kill_all()`` to stop a container and ``remove()`` when deleting it.
    * The usage sampler calls ``stats()`` about once a second per container; it must be cheap (a handful
      of small file reads) and must not raise just because a controller is missing on this host.
    * ``shoal inspect`` shows ``paths()``; the supervisor asks ``oom_killed()`` to explain an exit 137.
    * Agent start-up calls ``agent.cgroups.leftovers.collect_leftovers`` (built on ``list_children``)
      with the ids it knows, to kill and remove the groups a crash left behind; agent shutdown and tests
      call ``remove_parent_if_empty(parent)``.

Names
    A group is named by a relative path such as ``shoal/3f2a…``: the first part is the agent's
    ``--cgroup-parent`` (default ``shoal``), the last is the container id. Several agents on one host use
    different parents and never see each other's groups. The parent is created on demand and shared: a
    ``Cgroup.remove()`` never removes it. Names are relative to the manager's *root*: the top of each
    hierarchy by default, or, with ``agent.cgroups.detect.detect(delegate=True)``, the cgroup systemd
    delegated to the agent's unit (``agent.cgroups.delegation``), so the same name lands inside it.

Blocking
    Every method of ``CgroupManager`` and ``Cgroup`` reads or writes cgroupfs, and ``kill_all`` sleeps
    while it polls for the group to empty (at most ``timeout_s`` in all). Each is a blocking call: on the
    agent's event loop, call them through ``asyncio.to_thread``. The file operations are small and fast
    (the usage sampler's per-second ``stats()`` runs in its own thread for the same reason).

Failure meanings (all from ``agent.errors``)
    * ``InvalidArgument`` — a malformed name, an out-of-range limit, a limit this host cannot enforce
      (e.g. a memory limit when no memory controller is mounted), or a value the kernel refused (EINVAL).
    * ``AlreadyExists`` — ``create()`` of a group that already exists (in any hierarchy).
    * ``FailedPrecondition`` — the host cannot do what was asked (device rules where neither the v1
      devices controller nor BPF device programs are available, no cgroup filesystem mounted);
      ``CgroupBusy`` (a subclass) when a group still holds processes or children.
    * ``ShoalError`` — any other OS error, with the operation and the path in the message.

All file-system access goes through ``CgroupFs`` so that tests can substitute a fake kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent import limits
from agent.errors import FailedPrecondition, InvalidArgument, NotFound, ShoalError

# Kernel ranges (kernel/sched/core.c): a CFS period is 1 ms..1 s, a quota at least 1 ms.
MIN_CPU_PERIOD_US = 1_000
MAX_CPU_PERIOD_US = 1_000_000
MIN_CPU_QUOTA_US = 1_000
# Below this the container cannot even exec its first process; the kernel would accept it.
MIN_MEMORY_BYTES = limits.MIN_MEMORY_BYTES

# Controllers Shoal uses; each implementation maps them onto what the host offers.
LIMIT_CONTROLLERS: tuple[str, ...] = ("cpu", "memory", "pids")

# How long kill_all may take in all before a group that will not empty is reported as CgroupBusy.
KILL_TIMEOUT_S = 5.0
# Of that, how long to wait for a freezer to report FROZEN: a task in uninterruptible sleep never
# freezes, and SIGKILL reaches it at thaw anyway, so waiting longer only delays the report.
FREEZE_WAIT_S = 1.0


class CgroupBusy(FailedPrecondition):
    """A group still holds processes (or child groups) after it should have been emptied."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container; ``None`` means unlimited. ``Limits()`` lifts every limit.

    ``memory_bytes`` caps RAM *and* forbids swap: a container that would need more is OOM-killed rather
    than slowly swapped out (v1: ``memory.memsw.limit_in_bytes`` = memory when the host has swap
    accounting; v2: ``memory.swap.max`` = 0). ``cpu_quota_us`` per ``cpu_period_us`` is the share of one
    CPU (50_000/100_000 is half a core, 200_000/100_000 two cores). Out-of-range values raise
    ``InvalidArgument`` here, at construction, so that every implementation rejects the same values.
    """

    memory_bytes: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000
    pids_max: int | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes < MIN_MEMORY_BYTES:
            raise InvalidArgument(
                f"memory limit {self.memory_bytes} bytes is too small: use at least {MIN_MEMORY_BYTES}"
            )
        if not MIN_CPU_PERIOD_US <= self.cpu_period_us <= MAX_CPU_PERIOD_US:
            raise InvalidArgument(
                f"cpu period {self.cpu_period_us}us is out of range "
                f"{MIN_CPU_PERIOD_US}..{MAX_CPU_PERIOD_US}us"
            )
        if self.cpu_quota_us is not None and self.cpu_quota_us < MIN_CPU_QUOTA_US:
            raise InvalidArgument(
                f"cpu quota {self.cpu_quota_us}us is too small: use at least {MIN_CPU_QUOTA_US}us"
            )
        if self.pids_max is not None and self.pids_max < 1:
            raise InvalidArgument(f"pids limit {self.pids_max} is too small: use at least 1")


@dataclass(frozen=True)
class DeviceRule:
    """One line of a device-cgroup policy, as in the OCI spec's ``linux.resources.devices``.

    ``kind`` is ``"c"`` (character), ``"b"`` (block) or ``"a"`` (all); ``major``/``minor`` ``None``
    means any (``*``); ``access`` is a subset of ``"rwm"`` (read, write, mknod).
    """

    allow: bool
    kind: str = "a"
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def __post_init__(self) -> None:
        if self.kind not in ("a", "b", "c"):
            raise InvalidArgument(f"device kind {self.kind!r} must be 'a', 'b' or 'c'")
        if not self.access or set(self.access) - set("rwm"):
            raise InvalidArgument(f"device access {self.access!r} must be made of 'r', 'w', 'm'")
        for number in (self.major, self.minor):
            if number is not None and number < 0:
                raise InvalidArgument(f"device number {number} must not be negative")

    def render(self) -> str:
        """The rule as the v1 ``devices.allow``/``devices.deny`` files take it: ``c 1:3 rwm``."""
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor} {self.access}"


def _allow_char(major: int, minor: int | None) -> DeviceRule:
    return DeviceRule(allow=True, kind="c", major=major, minor=minor, access="rwm")


# runc's default allow-list minus its blanket ``c *:* m`` / ``b *:* m``: without those, mknod of a host
# disk inside a container fails even with CAP_MKNOD.
DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(allow=False, kind="a", access="rwm"),
    _allow_char(1, 3),  # /dev/null
    _allow_char(1, 5),  # /dev/zero
    _allow_char(1, 7),  # /dev/full
    _allow_char(1, 8),  # /dev/random
    _allow_char(1, 9),  # /dev/urandom
    _allow_char(5, 0),  # /dev/tty
    _allow_char(5, 2),  # /dev/ptmx
    _allow_char(136, None),  # /dev/pts/*
)


@dataclass(frozen=True)
class CgroupStats:
    """A point-in-time reading of one group's counters; counters only grow while the group lives.

    ``memory_working_set_bytes`` is cAdvisor's (and so the kubelet's) definition: usage minus inactive
    file cache, never negative — the memory the kernel could not reclaim without OOM-killing.
    ``memory_limit_bytes`` is ``None`` when unlimited. Counters a host cannot provide read as 0.
    """

    cpu_usage_ns: int
    cpu_throttled_ns: int
    cpu_periods: int
    cpu_throttled_periods: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_rss_bytes: int
    memory_limit_bytes: int | None
    oom_kill_count: int
    pids_current: int


class CgroupFs(Protocol):
    """The only door to cgroupfs. Paths are absolute strings; errors are ``OSError`` as the kernel
    reports them (EINVAL for a refused value, EBUSY for rmdir of a populated group, ENOENT ...)."""

    def mkdir(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def read_text(self, path: str) -> str: ...

    def write_text(self, path: str, text: str) -> None:
        """Write ``text`` in a single write(2): cgroup files act on each write separately."""
        ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]:
        """Names of the child groups (subdirectories) of ``path``; interface files are not listed."""
        ...

    def getxattr(self, path: str, name: str) -> bytes | None:
        """The extended attribute ``name`` of group ``path``, or ``None`` if it has none (or the
        hierarchy supports none). systemd marks the cgroups it delegates with ``trusted.delegate``."""
        ...


class RealCgroupFs:
    """``CgroupFs`` on the real cgroup mounts."""

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def read_text(self, path: str) -> str:
        # os.read rather than open(): the usage sampler reads ~9 of these per container per second,
        # and the buffered text-IO stack (fstat, isatty ioctl, decoder objects) was most of the cost.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while data := os.read(fd, 65536):
                chunks.append(data)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("ascii")

    def write_text(self, path: str, text: str) -> None:
        # No O_CREAT: a missing interface file must be ENOENT, not an attempt to create one.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]

    def getxattr(self, path: str, name: str) -> bytes | None:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno in (errno.ENODATA, errno.EOPNOTSUPP):
                return None
            raise


class Cgroup(Protocol):
    """One container's group, possibly spread over several v1 hierarchies. Every method is blocking
    (cgroupfs I/O; see the module docstring)."""

    @property
    def name(self) -> str:
        """The relative name given to ``create``/``open``, e.g. ``shoal/ID``."""
        ...

    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` file of every hierarchy the container must join (one on v2)."""
        ...

    def join_files(self) -> tuple[str, ...]:
        """Files a *single-threaded* process writes ``"0"`` into to move itself into this group.

        v1: each hierarchy's ``tasks``. Moving only the calling thread (``"0"``) lets the kernel skip
        the global ``cgroup_threadgroup_rwsem``, whose write side waits for an RCU grace period —
        measured 2 to 12 ms for the first join, against 0.1 ms this way. v2: ``cgroup.procs`` (no such
        shortcut there). The launcher and ``exec`` use these; other callers use ``procs_files``.
        """
        ...

    def paths(self) -> dict[str, str]:
        """Controller → directory (v2: ``{"unified": dir}``), for ``shoal inspect``."""
        ...

    def apply(self, limits: Limits) -> None:
        """Make the group's limits exactly ``limits`` (``None`` lifts a limit); may raise and lower.

        ``InvalidArgument`` if the host lacks the controller for a requested limit or the kernel
        refuses a value (e.g. a memory limit below what the group already uses)."""
        ...

    def pids(self) -> list[int]:
        """Host pids of the processes in the group, sorted."""
        ...

    def stats(self) -> CgroupStats: ...

    def oom_killed(self) -> bool:
        """Whether the kernel OOM killer has killed a process of this group since it was created."""
        ...

    def kill_all(self, *, timeout_s: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process of the group, atomically with respect to forks, and wait (polling)
        until the group is empty. Blocking: ``timeout_s`` bounds the whole call, freezing included, so a
        group that cannot be emptied (a process stuck in uninterruptible sleep) raises ``CgroupBusy``,
        naming its pids, about ``timeout_s`` after the call."""
        ...

    def remove(self) -> None:
        """Remove the group from every hierarchy. Idempotent; ``CgroupBusy`` if it still has
        processes. Never removes the (shared) parent."""
        ...


class CgroupManager(Protocol):
    """The host's cgroup interface: creates and finds containers' groups. Every method is blocking
    (cgroupfs I/O; see the module docstring)."""

    @property
    def version(self) -> int:
        """1 or 2."""
        ...

    @property
    def supports_device_rules(self) -> bool:
        """Whether ``create`` can enforce device rules: v1 with a devices hierarchy, v2 where BPF device
        programs load (the first call probes, once). When false, drop CAP_MKNOD instead."""
        ...

    def create(self, name: str, *, limits: Limits, devices: Sequence[DeviceRule]) -> Cgroup:
        """Create ``name`` (and missing parents) with ``limits`` and device rules applied.

        ``devices`` are read in order as v1's ``devices.allow``/``devices.deny`` writes (start the list
        with a deny-all ``a`` rule); ``()`` applies none, so the group is as open as its parent. They must
        be empty when ``supports_device_rules`` is false (``FailedPrecondition``).
        ``AlreadyExists`` if the group exists. On failure the leaf is removed again."""
        ...

    def open(self, name: str) -> Cgroup | None:
        """The existing group ``name``, or ``None`` if it exists in no hierarchy."""
        ...

    def list_children(self, parent: str) -> list[str]:
        """Names (``parent/child``) of the groups directly under ``parent`` (any relative name, so a
        group's own children too), sorted; ``[]`` if it does not exist. Includes groups present in only
        some v1 hierarchies (a crash mid-create), so they can be opened and removed."""
        ...

    def remove_parent_if_empty(self, parent: str) -> bool:
        """Remove the directory ``parent`` from every hierarchy if it holds no groups or processes;
        return whether it is gone everywhere."""
        ...


def validate_name(name: str) -> str:
    """Check a relative group name (``shoal/ID``) and return it without stray slashes."""
    parts = name.strip("/").split("/") if name else []
    if not name or name.startswith("/") or not parts:
        raise InvalidArgument(f"cgroup name {name!r} must be a relative path like 'shoal/ID'")
    for part in parts:
        if part in ("", ".", "..") or part.startswith("cgroup.") or "\0" in part:
            raise InvalidArgument(f"cgroup name {name!r} has an invalid component {part!r}")
    return "/".join(parts)


def read_optional(fs: CgroupFs, path: str) -> str | None:
    """The content of an interface file, or ``None`` if this kernel or controller lacks it."""
    try:
        return fs.read_text(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise wrap_os_error(err, op="read", path=path) from err


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse the ``key value`` per line files (``memory.stat``, ``cpu.stat``, ``memory.events``)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        # try/except rather than contextlib.suppress: this runs for every line of every container's
        # stat files every second, and entering a context manager per line was most of its cost.
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def wrap_os_error(err: OSError, *, op: str, path: str) -> ShoalError:
    """Translate a cgroupfs ``OSError`` into the Shoal error a caller can act on."""
    detail = f"{op} {path}: {os.strerror(err.errno) if err.errno else err}"
    if err.errno == errno.EINVAL:
        return InvalidArgument(f"the kernel refused the value: {detail}")
    if err.errno == errno.EBUSY:
        return CgroupBusy(f"cgroup still has processes or child groups: {detail}")
    if err.errno == errno.EEXIST:
        return FailedPrecondition(f"already exists: {detail}")
    if err.errno == errno.ENOENT:
        return NotFound(f"cgroup or interface file missing (removed, or controller absent): {detail}")
    return ShoalError(f"cgroup operation failed: {detail}")


@contextlib.contextmanager
def os_errors(*, op: str, path: str) -> Iterator[None]:
    """Re-raise ``OSError`` inside the block as a Shoal error naming ``op`` and ``path``."""
    try:
        yield
    except OSError as err:
        raise wrap_os_error(err, op=op, path=path) from err


def poll_until(
    done: Callable[[], bool], *, timeout_s: float, clock: Callable[[], float], sleep: Callable[[float], None]
) -> bool:
    """Call ``done`` until it is true or ``timeout_s`` passes; return its last answer. Blocking (sleeps).

    cgroupfs offers inotify on ``cgroup.events`` only on v2, so a bounded poll is the portable way to
    wait for a group to empty; the interval starts at 1 ms and backs off to 50 ms, and never sleeps past
    the deadline."""
    deadline = clock() + timeout_s
    interval = 0.001
    while True:
        if done():
            return True
        left = deadline - clock()
        if left <= 0:
            return done()
        sleep(min(interval, left))
        interval = min(interval * 2, 0.05)


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup file-system mount from mountinfo: where, which version, which v1 controllers."""

    mountpoint: str
    version: int
    controllers: tuple[str, ...]  # v1: from the super options (``cpu,cpuacct``); v2: empty
    name: str = ""  # a named v1 hierarchy without controllers: ``systemd`` for ``name=systemd``


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


# v1 controllers Shoal manages; other hierarchies (blkio, name=systemd, ...) are left alone.
V1_CONTROLLERS: tuple[str, ...] = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer", "cpuset")


def parse_mountinfo(text: str, *, cgroup_root: Path) -> list[CgroupMount]:
    """The cgroup mounts at or under ``cgroup_root`` in a ``/proc/PID/mountinfo`` text.

    Mounts elsewhere (a container's view bind-mounted somewhere, a second mount of a hierarchy) are
    ignored: Shoal manages the host's canonical tree only. Later mounts over the same mount point win,
    as they hide the earlier ones."""
    root = str(cgroup_root).rstrip("/") or "/"
    by_point: dict[str, CgroupMount] = {}
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or sep < 5:
            continue
        mountpoint = _unescape_mountinfo(fields[4])
        fstype, super_opts = fields[sep + 1], fields[sep + 3]
        if not (mountpoint == root or mountpoint.startswith(root + "/")):
            continue
        if fstype == "cgroup2":
            by_point[mountpoint] = CgroupMount(mountpoint, 2, ())
        elif fstype == "cgroup":
            options = super_opts.split(",")
            ctrls = tuple(o for o in options if o in V1_CONTROLLERS)
            named = next((o[len("name="):] for o in options if o.startswith("name=")), "")
            by_point[mountpoint] = CgroupMount(mountpoint, 1, ctrls, named)
        else:
            by_point.pop(mountpoint, None)
    return list(by_point.values())
