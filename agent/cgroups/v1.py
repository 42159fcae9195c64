"""cgroup v1: a container's group as one directory per controller hierarchy.

On a v1 host each controller is its own mount (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/pids``, ...;
``cpu`` and ``cpuacct`` are often co-mounted as ``cpu,cpuacct``) and a container's group is the same
relative path in each of them. This module implements ``agent.cgroups.manager``'s contract on that
layout: one small function per controller for limits, freezer-based ``kill_all`` and a device-cgroup
allow-list. Controllers the host does not mount are skipped; asking for a limit that needs one raises
``InvalidArgument``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from agent.cgroups import manager
from agent.cgroups.manager import CgroupBusy, CgroupFs, CgroupStats, DeviceRule, Limits
from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument

# What memory.limit_in_bytes reads back as when unlimited (PAGE_COUNTER_MAX pages); anything this
# large means "no limit".
_UNLIMITED_THRESHOLD = 1 << 62

KillFn = Callable[[int, int], None]


def _read_int(fs: CgroupFs, path: str) -> int:
    with manager.os_errors(op="read", path=path):
        return int(fs.read_text(path).strip())


def _write(fs: CgroupFs, path: str, value: str) -> None:
    with manager.os_errors(op=f"write {value!r} to", path=path):
        fs.write_text(path, value)


def _require(controller: str, dirs: Mapping[str, str], what: str) -> str:
    d = dirs.get(controller)
    if d is None:
        raise InvalidArgument(
            f"a {what} needs the cgroup v1 '{controller}' controller, which this host does not mount"
        )
    return d


def check_limits_supported(limits: Limits, controllers: Mapping[str, str] | set[str]) -> None:
    """``InvalidArgument`` if ``limits`` asks for something no mounted controller can enforce."""
    dirs = {c: "" for c in controllers}
    if limits.memory_bytes is not None:
        _require("memory", dirs, "memory limit")
    if limits.cpu_quota_us is not None:
        _require("cpu", dirs, "CPU limit")
    if limits.pids_max is not None:
        _require("pids", dirs, "process-count limit")


def apply_memory(fs: CgroupFs, d: str, memory_bytes: int | None) -> None:
    """memory.limit_in_bytes, and memory.memsw.limit_in_bytes = the same (no swap) if swap accounting
    exists. The kernel keeps memsw ≥ memory at every instant, so raise memsw first when growing and
    lower memory first when shrinking."""
    target = -1 if memory_bytes is None else memory_bytes
    limit_path = posixpath.join(d, "memory.limit_in_bytes")
    memsw_path = posixpath.join(d, "memory.memsw.limit_in_bytes")
    if not fs.exists(memsw_path):
        _write(fs, limit_path, str(target))
        return
    current = _read_int(fs, limit_path)
    growing = target == -1 or target >= current
    order = (memsw_path, limit_path) if growing else (limit_path, memsw_path)
    for path in order:
        _write(fs, path, str(target))


def apply_cpu(fs: CgroupFs, d: str, quota_us: int | None, period_us: int) -> None:
    """cpu.cfs_period_us then cpu.cfs_quota_us (-1 = unlimited)."""
    _write(fs, posixpath.join(d, "cpu.cfs_period_us"), str(period_us))
    _write(fs, posixpath.join(d, "cpu.cfs_quota_us"), str(-1 if quota_us is None else quota_us))


def apply_pids(fs: CgroupFs, d: str, pids_max: int | None) -> None:
    _write(fs, posixpath.join(d, "pids.max"), "max" if pids_max is None else str(pids_max))


def apply_devices(fs: CgroupFs, d: str, rules: Sequence[DeviceRule]) -> None:
    """Write each rule, in order, to devices.allow or devices.deny (a leading deny-all resets)."""
    for rule in rules:
        _write(fs, posixpath.join(d, "devices.allow" if rule.allow else "devices.deny"), rule.render())


def inherit_cpuset(fs: CgroupFs, d: str) -> None:
    """A new v1 cpuset group starts with empty cpus/mems, and joining it fails with ENOSPC until they
    are set (unless the root's cgroup.clone_children is on): copy them from the parent."""
    parent = posixpath.dirname(d)
    for name in ("cpuset.cpus", "cpuset.mems"):
        path = posixpath.join(d, name)
        current = manager.read_optional(fs, path)
        if current is not None and not current.strip():
            with manager.os_errors(op="read", path=posixpath.join(parent, name)):
                inherited = fs.read_text(posixpath.join(parent, name)).strip()
            _write(fs, path, inherited)


def read_oom_kills(fs: CgroupFs, d: str) -> int:
    """The ``oom_kill`` counter of memory.oom_control (Linux ≥ 4.13). Older kernels lack it; then a
    non-zero memory.failcnt is the best hint — it also counts limit hits that reclaim resolved, so it
    can report an OOM kill that did not happen."""
    text = manager.read_optional(fs, posixpath.join(d, "memory.oom_control")) or ""
    counters = manager.parse_flat_keyed(text)
    if "oom_kill" in counters:
        return counters["oom_kill"]
    failcnt = manager.read_optional(fs, posixpath.join(d, "memory.failcnt"))
    return 1 if failcnt is not None and failcnt.strip() not in ("", "0") else 0


class V1Cgroup:
    """One container's group on a v1 host: ``dirs`` maps each mounted controller to its directory."""

    def __init__(
        self,
        *,
        fs: CgroupFs,
        name: str,
        dirs: Mapping[str, str],
        kill_pid: KillFn,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self._fs = fs
        self._name = name
        self._dirs = dict(dirs)
        self._kill_pid = kill_pid
        self._clock = clock
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self._name

    def _unique_dirs(self) -> list[str]:
        # Co-mounted controllers (cpu,cpuacct) share one directory: act on it once.
        return sorted(set(self._dirs.values()))

    def procs_files(self) -> tuple[str, ...]:
        return tuple(posixpath.join(d, "cgroup.procs") for d in self._unique_dirs())

    def join_files(self) -> tuple[str, ...]:
        return tuple(posixpath.join(d, "tasks") for d in self._unique_dirs())

    def paths(self) -> dict[str, str]:
        return dict(self._dirs)

    def apply(self, limits: Limits) -> None:
        check_limits_supported(limits, set(self._dirs))
        if "memory" in self._dirs:
            apply_memory(self._fs, self._dirs["memory"], limits.memory_bytes)
        if "cpu" in self._dirs:
            apply_cpu(self._fs, self._dirs["cpu"], limits.cpu_quota_us, limits.cpu_period_us)
        if "pids" in self._dirs:
            apply_pids(self._fs, self._dirs["pids"], limits.pids_max)

    def set_devices(self, rules: Sequence[DeviceRule]) -> None:
        if not rules:
            return
        apply_devices(self._fs, _require("devices", self._dirs, "device rule"), rules)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files():
            with manager.os_errors(op="read", path=path):
                text = self._fs.read_text(path)
            found.update(int(line) for line in text.split())
        return sorted(found)

    def stats(self) -> CgroupStats:
        fs, dirs = self._fs, self._dirs
        usage_ns = 0
        if "cpuacct" in dirs:
            usage_ns = _read_int(fs, posixpath.join(dirs["cpuacct"], "cpuacct.usage"))
        cpu_stat: dict[str, int] = {}
        if "cpu" in dirs:
            cpu_stat = manager.parse_flat_keyed(
                manager.read_optional(fs, posixpath.join(dirs["cpu"], "cpu.stat")) or ""
            )
        mem_usage = mem_ws = mem_rss = oom_kills = 0
        mem_limit: int | None = None
        if "memory" in dirs:
            d = dirs["memory"]
            mem_usage = _read_int(fs, posixpath.join(d, "memory.usage_in_bytes"))
            with manager.os_errors(op="read", path=posixpath.join(d, "memory.stat")):
                mem_stat = manager.parse_flat_keyed(fs.read_text(posixpath.join(d, "memory.stat")))
            # total_* include descendants, like usage_in_bytes does.
            mem_ws = max(0, mem_usage - mem_stat.get("total_inactive_file", 0))
            mem_rss = mem_stat.get("total_rss", 0)
            raw_limit = _read_int(fs, posixpath.join(d, "memory.limit_in_bytes"))
            mem_limit = None if raw_limit >= _UNLIMITED_THRESHOLD else raw_limit
            oom_kills = read_oom_kills(fs, d)
        if "pids" in dirs:
            pids_current = _read_int(fs, posixpath.join(dirs["pids"], "pids.current"))
        else:
            pids_current = len(self.pids())
        return CgroupStats(
            cpu_usage_ns=usage_ns,
            cpu_throttled_ns=cpu_stat.get("throttled_time", 0),
            cpu_periods=cpu_stat.get("nr_periods", 0),
            cpu_throttled_periods=cpu_stat.get("nr_throttled", 0),
            memory_usage_bytes=mem_usage,
            memory_working_set_bytes=mem_ws,
            memory_rss_bytes=mem_rss,
            memory_limit_bytes=mem_limit,
            oom_kill_count=oom_kills,
            pids_current=pids_current,
        )

    def oom_killed(self) -> bool:
        d = self._dirs.get("memory")
        return d is not None and read_oom_kills(self._fs, d) > 0

    def _signal_all(self) -> None:
        for pid in self.pids():
            # A pid may exit between the read and the kill.
            with contextlib.suppress(ProcessLookupError):
                self._kill_pid(pid, signal.SIGKILL)

    def kill_all(self, *, timeout_s: float = manager.KILL_TIMEOUT_S) -> None:
        """Freeze, SIGKILL every pid, thaw, then poll until empty; blocking, ``timeout_s`` in all."""
        deadline = self._clock() + timeout_s
        freezer = self._dirs.get("freezer")
        if freezer is None:
            # Without a freezer a fork can slip between reading the pids and killing them: repeat.
            def killed_all() -> bool:
                self._signal_all()
                return not self.pids()
        else:
            state = posixpath.join(freezer, "freezer.state")
            _write(self._fs, state, "FROZEN")
            try:
                # FREEZING → FROZEN once every task stopped; if a task never stops (D state) kill anyway:
                # SIGKILL is delivered at thaw.
                def frozen() -> bool:
                    with manager.os_errors(op="read", path=state):
                        return self._fs.read_text(state).strip() == "FROZEN"

                manager.poll_until(frozen, timeout_s=min(manager.FREEZE_WAIT_S, timeout_s / 2),
                                   clock=self._clock, sleep=self._sleep)
                self._signal_all()
            finally:
                _write(self._fs, state, "THAWED")

            def killed_all() -> bool:
                return not self.pids()
        left = max(0.0, deadline - self._clock())
        if not manager.poll_until(killed_all, timeout_s=left, clock=self._clock, sleep=self._sleep):
            raise CgroupBusy(
                f"cgroup {self._name} still has processes {self.pids()} {timeout_s}s after SIGKILL "
                "(stuck in uninterruptible sleep?)"
            )

    def remove(self) -> None:
        first_error: Exception | None = None
        for d in self._unique_dirs():
            try:
                self._fs.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError as err:
                # Try every hierarchy before reporting, so a retry has less to do.
                first_error = first_error or manager.wrap_os_error(err, op="rmdir", path=d)
        if first_error is not None:
            raise first_error


class V1CgroupManager:
    """``CgroupManager`` for a v1 host; ``mounts`` maps controller → mount point (co-mounts repeat)."""

    version = 1

    def __init__(
        self,
        *,
        fs: CgroupFs,
        mounts: Mapping[str, str],
        kill_pid: KillFn = os.kill,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        root: str = "",
    ) -> None:
        self._fs = fs
        # Groups live under ``root`` in every hierarchy: "" (the top), or the cgroup systemd delegated
        # to the agent's unit, replicated in the hierarchies systemd does not manage (freezer, cpuset)
        # as systemd's documentation asks.
        self._root = manager.validate_name(root) if root else ""
        self._hierarchies = {c: m for c, m in mounts.items() if c in manager.V1_CONTROLLERS}
        # controller → the directory names are relative to (the mount point, or root inside it)
        self._mounts = {c: posixpath.join(m, self._root) if self._root else m
                        for c, m in self._hierarchies.items()}
        self._kill_pid = kill_pid
        self._clock = clock
        self._sleep = sleep

    @property
    def supports_device_rules(self) -> bool:
        return "devices" in self._mounts

    def _cgroup(self, name: str, dirs: Mapping[str, str]) -> V1Cgroup:
        return V1Cgroup(
            fs=self._fs, name=name, dirs=dirs, kill_pid=self._kill_pid, clock=self._clock, sleep=self._sleep
        )

    def _unique_mounts(self) -> list[str]:
        return sorted(set(self._mounts.values()))

    def create(self, name: str, *, limits: Limits, devices: Sequence[DeviceRule]) -> V1Cgroup:
        name = manager.validate_name(name)
        if devices and not self.supports_device_rules:
            raise FailedPrecondition("device rules need the v1 'devices' controller, not mounted here")
        check_limits_supported(limits, set(self._mounts))
        if self.open(name) is not None:
            raise AlreadyExists(f"cgroup {name} already exists")
        created: list[str] = []
        try:
            for mount in sorted(set(self._hierarchies.values())):
                is_cpuset = self._hierarchies.get("cpuset") == mount
                # From the mount point: root's own directories may be missing in hierarchies systemd
                # leaves alone (freezer, cpuset), and are made like any parent.
                self._make_dirs(mount, name, created=created, is_cpuset=is_cpuset)
            group = self._cgroup(name, {c: posixpath.join(m, name) for c, m in self._mounts.items()})
            group.set_devices(devices)
            group.apply(limits)
        except BaseException:
            # Undo only the leaf: parents are shared with other containers.
            for d in created:
                if d.endswith("/" + name):
                    with contextlib.suppress(OSError):
                        self._fs.rmdir(d)
            raise
        return group

    def _make_dirs(self, mount: str, name: str, *, created: list[str], is_cpuset: bool) -> None:
        parts = [*(self._root.split("/") if self._root else ()), *name.split("/")]
        for i in range(1, len(parts) + 1):
            d = posixpath.join(mount, *parts[:i])
            leaf = i == len(parts)
            try:
                self._fs.mkdir(d)
            except FileExistsError:
                if leaf:
                    raise AlreadyExists(f"cgroup {name} already exists ({d})") from None
                continue  # a shared parent, possibly made concurrently by another create
            except OSError as err:
                raise manager.wrap_os_error(err, op="mkdir", path=d) from err
            created.append(d)
            if is_cpuset:
                inherit_cpuset(self._fs, d)

    def open(self, name: str) -> V1Cgroup | None:
        name = manager.validate_name(name)
        dirs = {c: posixpath.join(m, name) for c, m in self._mounts.items()}
        present = {c: d for c, d in dirs.items() if self._fs.exists(d)}
        return self._cgroup(name, present) if present else None

    def list_children(self, parent: str) -> list[str]:
        parent = manager.validate_name(parent)
        names: set[str] = set()
        for mount in self._unique_mounts():
            d = posixpath.join(mount, parent)
            if self._fs.exists(d):
                with manager.os_errors(op="list", path=d):
                    names.update(self._fs.listdir(d))
        return sorted(f"{parent}/{child}" for child in names)

    def remove_parent_if_empty(self, parent: str) -> bool:
        parent = manager.validate_name(parent)
        gone = True
        for mount in self._unique_mounts():
            d = posixpath.join(mount, parent)
            try:
                self._fs.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise manager.wrap_os_error(err, op="rmdir", path=d) from err
                gone = False
        return gone
