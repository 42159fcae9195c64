"""cgroup v2: a container's group as one directory of the unified hierarchy.

On a v2 host every controller lives in one tree; a controller is usable in a group only if each ancestor
lists it in ``cgroup.subtree_control``, so ``create`` enables ``cpu``, ``memory`` and ``pids`` from the
mount root down to the group's parent (only those the kernel offers in ``cgroup.controllers``).
Kill uses ``cgroup.kill`` (Linux ≥ 5.14), falling back to ``cgroup.freeze`` + SIGKILL per pid.

Device rules have no file on v2: ``create`` compiles them into a BPF device program and attaches it to
the new group before anything can join it (``agent.cgroups.device_bpf``, as runc and youki do). The
kernel keeps the program with the group, so it outlives the agent and goes when the group is removed; an
empty rule list attaches nothing (the group is as open as its parent, like a v1 group given no rules).
A host that cannot load device programs reports ``supports_device_rules = False`` and refuses rules; the
runtime then drops CAP_MKNOD, which stops mknod of host disks but not the use of device nodes
bind-mounted into a container.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import signal
import time
from collections.abc import Callable, Sequence

from agent.cgroups import device_bpf, manager
from agent.cgroups.manager import CgroupBusy, CgroupFs, CgroupStats, DeviceRule, Limits
from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ShoalError

KillFn = Callable[[int, int], None]


def read_controllers(fs: CgroupFs, d: str) -> set[str]:
    """The controllers available in group ``d`` (its ``cgroup.controllers``)."""
    return set((manager.read_optional(fs, posixpath.join(d, "cgroup.controllers")) or "").split())


def _write(fs: CgroupFs, path: str, value: str) -> None:
    with manager.os_errors(op=f"write {value!r} to", path=path):
        fs.write_text(path, value)


def _read_keyed(fs: CgroupFs, path: str) -> dict[str, int]:
    return manager.parse_flat_keyed(manager.read_optional(fs, path) or "")


def check_limits_supported(limits: Limits, available: set[str]) -> None:
    """``InvalidArgument`` if ``limits`` needs a controller the unified hierarchy does not offer."""
    needs = {
        "memory": limits.memory_bytes is not None,
        "cpu": limits.cpu_quota_us is not None,
        "pids": limits.pids_max is not None,
    }
    missing = sorted(c for c, needed in needs.items() if needed and c not in available)
    if missing:
        raise InvalidArgument(
            f"limits need the cgroup v2 controller(s) {', '.join(missing)}, which this host does not "
            f"offer (available: {', '.join(sorted(available)) or 'none'})"
        )


def enable_controllers(fs: CgroupFs, d: str, wanted: Sequence[str]) -> None:
    """Add each wanted controller that ``d`` offers to its ``cgroup.subtree_control``, one per write so
    that one refusal names its controller."""
    path = posixpath.join(d, "cgroup.subtree_control")
    enabled = set((manager.read_optional(fs, path) or "").split())
    offered = read_controllers(fs, d)
    for controller in wanted:
        if controller in offered and controller not in enabled:
            _write(fs, path, f"+{controller}")


def apply_cpu(fs: CgroupFs, d: str, quota_us: int | None, period_us: int) -> None:
    quota = "max" if quota_us is None else str(quota_us)
    _write(fs, posixpath.join(d, "cpu.max"), f"{quota} {period_us}")


def apply_memory(fs: CgroupFs, d: str, memory_bytes: int | None) -> None:
    """memory.max, and memory.swap.max = 0 when limited (no swap) if the kernel has swap accounting."""
    _write(fs, posixpath.join(d, "memory.max"), "max" if memory_bytes is None else str(memory_bytes))
    swap = posixpath.join(d, "memory.swap.max")
    if fs.exists(swap):
        _write(fs, swap, "max" if memory_bytes is None else "0")


def apply_pids(fs: CgroupFs, d: str, pids_max: int | None) -> None:
    _write(fs, posixpath.join(d, "pids.max"), "max" if pids_max is None else str(pids_max))


class V2Cgroup:
    """One container's group in the unified hierarchy."""

    def __init__(
        self,
        *,
        fs: CgroupFs,
        name: str,
        directory: str,
        kill_pid: KillFn,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self._fs = fs
        self._name = name
        self._dir = directory
        self._kill_pid = kill_pid
        self._clock = clock
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self._name

    def _path(self, file: str) -> str:
        return posixpath.join(self._dir, file)

    def procs_files(self) -> tuple[str, ...]:
        return (self._path("cgroup.procs"),)

    def join_files(self) -> tuple[str, ...]:
        return self.procs_files()

    def paths(self) -> dict[str, str]:
        return {"unified": self._dir}

    def apply(self, limits: Limits) -> None:
        available = read_controllers(self._fs, self._dir)
        check_limits_supported(limits, available)
        if "cpu" in available:
            apply_cpu(self._fs, self._dir, limits.cpu_quota_us, limits.cpu_period_us)
        if "memory" in available:
            apply_memory(self._fs, self._dir, limits.memory_bytes)
        if "pids" in available:
            apply_pids(self._fs, self._dir, limits.pids_max)

    def pids(self) -> list[int]:
        path = self._path("cgroup.procs")
        with manager.os_errors(op="read", path=path):
            text = self._fs.read_text(path)
        return sorted(int(line) for line in text.split())

    def stats(self) -> CgroupStats:
        fs = self._fs
        if not fs.exists(self._dir):
            raise manager.wrap_os_error(OSError(errno.ENOENT, "gone"), op="stats", path=self._dir)
        # cpu.stat's usage lines exist without the cpu controller; throttling lines need it.
        cpu = _read_keyed(fs, self._path("cpu.stat"))
        mem_stat = _read_keyed(fs, self._path("memory.stat"))
        current_text = manager.read_optional(fs, self._path("memory.current"))
        usage = int(current_text) if current_text is not None else 0
        max_text = (manager.read_optional(fs, self._path("memory.max")) or "max").strip()
        pids_text = manager.read_optional(fs, self._path("pids.current"))
        return CgroupStats(
            cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
            cpu_throttled_ns=cpu.get("throttled_usec", 0) * 1000,
            cpu_periods=cpu.get("nr_periods", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            memory_usage_bytes=usage,
            memory_working_set_bytes=max(0, usage - mem_stat.get("inactive_file", 0)),
            memory_rss_bytes=mem_stat.get("anon", 0),
            memory_limit_bytes=None if max_text == "max" else int(max_text),
            oom_kill_count=self._oom_kills(),
            pids_current=int(pids_text) if pids_text is not None else len(self.pids()),
        )

    def _oom_kills(self) -> int:
        # memory.events counts this group and its descendants, which is what a container means.
        return _read_keyed(self._fs, self._path("memory.events")).get("oom_kill", 0)

    def oom_killed(self) -> bool:
        return self._oom_kills() > 0

    def _populated(self) -> bool:
        events = _read_keyed(self._fs, self._path("cgroup.events"))
        return events.get("populated", 0) != 0

    def kill_all(self, *, timeout_s: float = manager.KILL_TIMEOUT_S) -> None:
        """``cgroup.kill`` (or freeze, SIGKILL, thaw), then poll until empty; blocking, ``timeout_s`` in
        all."""
        deadline = self._clock() + timeout_s
        kill_file = self._path("cgroup.kill")
        if self._fs.exists(kill_file):
            # The kernel kills the whole subtree and races no fork.
            _write(self._fs, kill_file, "1")
        else:
            freeze = self._path("cgroup.freeze")
            _write(self._fs, freeze, "1")
            try:
                manager.poll_until(
                    lambda: _read_keyed(self._fs, self._path("cgroup.events")).get("frozen", 0) == 1,
                    timeout_s=min(manager.FREEZE_WAIT_S, timeout_s / 2), clock=self._clock, sleep=self._sleep,
                )
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        self._kill_pid(pid, signal.SIGKILL)
            finally:
                _write(self._fs, freeze, "0")
        emptied = manager.poll_until(
            lambda: not self._populated(), timeout_s=max(0.0, deadline - self._clock()),
            clock=self._clock, sleep=self._sleep,
        )
        if not emptied:
            raise CgroupBusy(
                f"cgroup {self._name} still has processes {self.pids()} {timeout_s}s after SIGKILL "
                "(stuck in uninterruptible sleep?)"
            )

    def remove(self) -> None:
        try:
            self._fs.rmdir(self._dir)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise manager.wrap_os_error(err, op="rmdir", path=self._dir) from err


class V2CgroupManager:
    """``CgroupManager`` for the unified hierarchy mounted at ``mountpoint``."""

    version = 2

    def __init__(
        self,
        *,
        fs: CgroupFs,
        mountpoint: str,
        kill_pid: KillFn = os.kill,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        root: str = "",
        device_filter: device_bpf.DeviceFilter | None = None,
    ) -> None:
        self._fs = fs
        self._device_filter = device_filter if device_filter is not None else device_bpf.KernelDeviceFilter()
        # Groups live under ``root``: "" (the top of the hierarchy) or the cgroup systemd delegated to the
        # agent's unit (``agent.cgroups.delegation``). Controllers are enabled from there down, never
        # above: the ancestors belong to systemd.
        self._base = posixpath.join(mountpoint, manager.validate_name(root)) if root else mountpoint
        self._kill_pid = kill_pid
        self._clock = clock
        self._sleep = sleep

    @property
    def supports_device_rules(self) -> bool:
        return self._device_filter.available()

    def _cgroup(self, name: str) -> V2Cgroup:
        return V2Cgroup(
            fs=self._fs, name=name, directory=posixpath.join(self._base, name),
            kill_pid=self._kill_pid, clock=self._clock, sleep=self._sleep,
        )

    def create(self, name: str, *, limits: Limits, devices: Sequence[DeviceRule]) -> V2Cgroup:
        name = manager.validate_name(name)
        if devices and not self.supports_device_rules:
            raise FailedPrecondition(
                "device rules on cgroup v2 need a BPF device program, which this host cannot load; pass "
                "none and drop CAP_MKNOD instead (see CgroupManager.supports_device_rules)"
            )
        program = device_bpf.compile_rules(devices) if devices else None
        check_limits_supported(limits, read_controllers(self._fs, self._base))
        parts = name.split("/")
        current = self._base
        leaf = ""
        try:
            for i, part in enumerate(parts):
                enable_controllers(self._fs, current, manager.LIMIT_CONTROLLERS)
                current = posixpath.join(current, part)
                try:
                    self._fs.mkdir(current)
                except FileExistsError:
                    if i == len(parts) - 1:
                        raise AlreadyExists(f"cgroup {name} already exists ({current})") from None
                    continue  # a shared parent
                except OSError as err:
                    raise manager.wrap_os_error(err, op="mkdir", path=current) from err
                if i == len(parts) - 1:
                    leaf = current
            if program is not None:
                # Before the group is handed out: no process may join it unfiltered.
                try:
                    self._device_filter.attach(leaf, program)
                except OSError as err:
                    # err.strerror names the bpf(2) step and carries the verifier's log, if any.
                    detail = err.strerror or str(err)
                    raise ShoalError(f"cannot enforce device rules on cgroup {leaf}: {detail}") from err
            group = self._cgroup(name)
            group.apply(limits)
        except BaseException:
            if leaf:
                # If even this fails, list_children at the next start finds it.
                with contextlib.suppress(OSError):
                    self._fs.rmdir(leaf)
            raise
        return group

    def open(self, name: str) -> V2Cgroup | None:
        name = manager.validate_name(name)
        return self._cgroup(name) if self._fs.exists(posixpath.join(self._base, name)) else None

    def list_children(self, parent: str) -> list[str]:
        parent = manager.validate_name(parent)
        d = posixpath.join(self._base, parent)
        if not self._fs.exists(d):
            return []
        with manager.os_errors(op="list", path=d):
            return sorted(f"{parent}/{child}" for child in self._fs.listdir(d))

    def remove_parent_if_empty(self, parent: str) -> bool:
        parent = manager.validate_name(parent)
        d = posixpath.join(self._base, parent)
        try:
            self._fs.rmdir(d)
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return False
            raise manager.wrap_os_error(err, op="rmdir", path=d) from err
        return True

