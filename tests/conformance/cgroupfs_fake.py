"""FakeCgroupFs: an in-memory cgroupfs that behaves like the kernel where Shoal depends on it.

Mounts are declared with ``mount_v1``/``mount_v2``. Creating a group creates its interface files with
kernel defaults; writing ``cgroup.procs`` moves a (fake) process; out-of-range values raise
``OSError(EINVAL)``; rmdir of a group with processes or children raises EBUSY; v1 memsw must stay ≥
memory; a new v1 cpuset group has empty cpus/mems and refuses tasks (ENOSPC) until they are set; v2
controllers appear in a child only when the parent enables them in ``cgroup.subtree_control``; SIGKILL
to a frozen process takes effect at thaw. Every write is recorded in ``writes``; ``fail_next_write``
injects an error and ``set_counter`` plays the kernel updating a statistic; ``set_xattr`` plays systemd
marking a group (``trusted.delegate``). ``FakeDeviceFilter`` stands in for bpf(2) on v2: it keeps the
assembled device program with the group (so rmdir drops it, as the kernel does) and ``device_allowed``
decides an access as the kernel would, running the programs of the group and its ancestors (v2) or
reading the group's device list (v1).
"""

from __future__ import annotations

import errno
import posixpath
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.linux import bpf_asm
from tests.fixtures import bpf_vm

UNLIMITED_V1 = 9223372036854771712  # what v1 memory limits read back as when unlimited
PAGE = 4096


def _err(code: int, path: str) -> OSError:
    return OSError(code, f"fake cgroupfs: {errno.errorcode[code]}", path)


@dataclass
class _Group:
    path: str
    mount: str
    version: int
    controllers: tuple[str, ...]  # v1: the hierarchy's; v2: those enabled by the parent
    files: dict[str, str] = field(default_factory=dict)
    procs: set[int] = field(default_factory=set)
    devices: list[str] = field(default_factory=list)
    device_program: bytes | None = None  # v2: the attached BPF device program, assembled


def _v1_files(controllers: tuple[str, ...], *, root: bool) -> dict[str, str]:
    files = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0", "cgroup.clone_children": "0"}
    if "cpu" in controllers:
        files |= {
            "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        }
    if "cpuacct" in controllers:
        files |= {"cpuacct.usage": "0"}
    if "memory" in controllers:
        files |= {
            "memory.limit_in_bytes": str(UNLIMITED_V1), "memory.memsw.limit_in_bytes": str(UNLIMITED_V1),
            "memory.usage_in_bytes": "0", "memory.failcnt": "0",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            "memory.stat": "cache 0\nrss 0\ntotal_rss 0\ntotal_inactive_file 0\n",
        }
    if "pids" in controllers and not root:
        files |= {"pids.max": "max", "pids.current": "0"}
    if "devices" in controllers:
        files |= {"devices.allow": "", "devices.deny": "", "devices.list": ""}
    if "freezer" in controllers and not root:
        files |= {"freezer.state": "THAWED"}
    if "cpuset" in controllers:
        files |= {"cpuset.cpus": "0-1" if root else "", "cpuset.mems": "0" if root else ""}
    return files


def _v2_files(controllers: tuple[str, ...], *, root: bool, offered: tuple[str, ...]) -> dict[str, str]:
    files = {
        "cgroup.procs": "", "cgroup.controllers": " ".join(offered), "cgroup.subtree_control": "",
        "cgroup.events": "", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    }
    if not root:
        files |= {"cgroup.kill": "", "cgroup.freeze": "0"}
    if "cpu" in controllers and not root:
        files |= {"cpu.max": "max 100000"}
        files["cpu.stat"] += "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
    if "memory" in controllers and not root:
        files |= {
            "memory.max": "max", "memory.swap.max": "max", "memory.current": "0",
            "memory.stat": "anon 0\nfile 0\ninactive_file 0\n",
            "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        }
    if "pids" in controllers and not root:
        files |= {"pids.max": "max", "pids.current": "0"}
    return files


def _parse_int(text: str, path: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _err(errno.EINVAL, path) from None


class FakeCgroupFs:
    """In-memory cgroupfs; see the module docstring for what it mimics."""

    def __init__(self, *, swap_accounting: bool = True) -> None:
        # Without swap accounting (no CONFIG_MEMCG_SWAP or swapaccount=0) v1 has no memory.memsw.* files.
        self.swap_accounting = swap_accounting
        self.groups: dict[str, _Group] = {}
        self.live: set[int] = set()
        self.pending_kill: set[int] = set()
        self.writes: list[tuple[str, str]] = []
        self._next_pid = 1000
        self._fail: dict[str, int] = {}
        self.xattrs: dict[tuple[str, str], bytes] = {}
        self.unkillable: set[int] = set()  # pids that survive SIGKILL and cgroup.kill (D state)

    # --- test controls -------------------------------------------------------------------------------

    def mount_v1(self, mountpoint: str, controllers: tuple[str, ...]) -> None:
        root = _Group(mountpoint, mountpoint, 1, controllers, self._v1_files(controllers, root=True))
        if "devices" in controllers:
            root.devices = ["a *:* rwm"]
        self.groups[mountpoint] = root

    def mount_v2(self, mountpoint: str, offered: tuple[str, ...]) -> None:
        self.groups[mountpoint] = _Group(
            mountpoint, mountpoint, 2, offered, _v2_files(offered, root=True, offered=offered)
        )

    def spawn(self) -> int:
        """A new live process, in no group yet (the root, as far as Shoal can tell)."""
        self._next_pid += 1
        self.live.add(self._next_pid)
        return self._next_pid

    def kill(self, pid: int, sig: int) -> None:
        """Stands in for ``os.kill``."""
        if pid not in self.live:
            raise ProcessLookupError(errno.ESRCH, "no such process")
        if sig != signal.SIGKILL:
            return
        if any(self._frozen(g) for g in self.groups.values() if pid in g.procs):
            self.pending_kill.add(pid)
        else:
            self._exit(pid)

    def _v1_files(self, controllers: tuple[str, ...], *, root: bool) -> dict[str, str]:
        files = _v1_files(controllers, root=root)
        if not self.swap_accounting:
            files = {k: v for k, v in files.items() if not k.startswith("memory.memsw.")}
        return files

    def set_counter(self, path: str, text: str) -> None:
        """Set a read-only statistic file as the kernel would."""
        directory, name = posixpath.split(path)
        self.groups[directory].files[name] = text

    def fail_next_write(self, path: str, code: int) -> None:
        self._fail[path] = code

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        if path not in self.groups:
            raise _err(errno.ENOENT, path)
        self.xattrs[(path, name)] = value

    # --- CgroupFs ------------------------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        parent = self.groups.get(posixpath.dirname(path))
        if path in self.groups:
            raise _err(errno.EEXIST, path)
        if parent is None:
            raise _err(errno.ENOENT, path)
        if parent.version == 1:
            files = self._v1_files(parent.controllers, root=False)
            group = _Group(path, parent.mount, 1, parent.controllers, files)
            group.devices = list(parent.devices)  # a v1 devices group starts with its parent's list
        else:
            enabled = tuple(parent.files["cgroup.subtree_control"].split())
            files = _v2_files(enabled, root=False, offered=enabled)
            group = _Group(path, parent.mount, 2, enabled, files)
        self.groups[path] = group

    def rmdir(self, path: str) -> None:
        group = self.groups.get(path)
        if group is None:
            raise _err(errno.ENOENT, path)
        if group.path == group.mount or group.procs or self._children(path):
            raise _err(errno.EBUSY, path)
        del self.groups[path]
        self.xattrs = {k: v for k, v in self.xattrs.items() if k[0] != path}

    def exists(self, path: str) -> bool:
        if path in self.groups:
            return True
        directory, name = posixpath.split(path)
        return directory in self.groups and name in self.groups[directory].files

    def listdir(self, path: str) -> list[str]:
        if path not in self.groups:
            raise _err(errno.ENOENT, path)
        return [posixpath.basename(c) for c in self._children(path)]

    def getxattr(self, path: str, name: str) -> bytes | None:
        if path not in self.groups:
            raise _err(errno.ENOENT, path)
        return self.xattrs.get((path, name))

    def read_text(self, path: str) -> str:
        group, name = self._file(path)
        if name == "cgroup.procs":
            return "".join(f"{pid}\n" for pid in sorted(group.procs))
        if name == "pids.current":
            return f"{len(self._subtree_procs(group.path))}\n"
        if name == "cgroup.events":
            populated = 1 if self._subtree_procs(group.path) else 0
            frozen = 1 if group.files.get("cgroup.freeze") == "1" else 0
            return f"populated {populated}\nfrozen {frozen}\n"
        if name == "devices.list":
            return "".join(f"{rule}\n" for rule in group.devices)
        if name == "memory.stat" and group.version == 1:
            return group.files[name]
        return group.files[name] if group.files[name].endswith("\n") else group.files[name] + "\n"

    def write_text(self, path: str, text: str) -> None:
        group, name = self._file(path)
        self.writes.append((path, text))
        if path in self._fail:
            raise _err(self._fail.pop(path), path)
        value = text.strip()
        handler = getattr(self, "_w_" + name.replace(".", "_"), None)
        if handler is None:
            raise _err(errno.EINVAL, path)  # read-only statistic
        handler(group, value, path)

    # --- kernel behaviour ------------------------------------------------------------------------------

    def _file(self, path: str) -> tuple[_Group, str]:
        directory, name = posixpath.split(path)
        group = self.groups.get(directory)
        if group is None or name not in group.files:
            raise _err(errno.ENOENT, path)
        return group, name

    def _children(self, path: str) -> list[str]:
        return sorted(p for p in self.groups if posixpath.dirname(p) == path)

    def _subtree_procs(self, path: str) -> set[int]:
        out: set[int] = set()
        for p, g in self.groups.items():
            if p == path or p.startswith(path + "/"):
                out |= g.procs
        return out

    def _frozen(self, group: _Group) -> bool:
        return group.files.get("freezer.state") == "FROZEN" or group.files.get("cgroup.freeze") == "1"

    def _exit(self, pid: int) -> None:
        if pid in self.unkillable:
            return  # stuck in uninterruptible sleep: SIGKILL waits
        self.live.discard(pid)
        self.pending_kill.discard(pid)
        for g in self.groups.values():
            g.procs.discard(pid)

    def _thawed(self) -> None:
        for pid in sorted(self.pending_kill):
            if not any(self._frozen(g) for g in self.groups.values() if pid in g.procs):
                self._exit(pid)

    def _w_cgroup_procs(self, group: _Group, value: str, path: str) -> None:
        pid = _parse_int(value, path)
        if pid not in self.live:
            raise _err(errno.ESRCH, path)
        if group.version == 1 and "cpuset" in group.controllers and group.path != group.mount and not (
            group.files["cpuset.cpus"].strip() and group.files["cpuset.mems"].strip()
        ):
            raise _err(errno.ENOSPC, path)
        if group.version == 2 and group.path != group.mount and group.files["cgroup.subtree_control"]:
            raise _err(errno.EBUSY, path)  # no internal processes
        for g in self.groups.values():
            if g.mount == group.mount:
                g.procs.discard(pid)
        group.procs.add(pid)

    # v1
    def _w_memory_limit_in_bytes(self, group: _Group, value: str, path: str) -> None:
        limit = _parse_int(value, path)
        limit = UNLIMITED_V1 if limit == -1 else (limit // PAGE) * PAGE
        memsw = group.files.get("memory.memsw.limit_in_bytes")
        if limit < 0 or (memsw is not None and limit > int(memsw)):
            raise _err(errno.EINVAL, path)
        group.files["memory.limit_in_bytes"] = str(limit)

    def _w_memory_memsw_limit_in_bytes(self, group: _Group, value: str, path: str) -> None:
        limit = _parse_int(value, path)
        limit = UNLIMITED_V1 if limit == -1 else (limit // PAGE) * PAGE
        if limit < 0 or limit < int(group.files["memory.limit_in_bytes"]):
            raise _err(errno.EINVAL, path)
        group.files["memory.memsw.limit_in_bytes"] = str(limit)

    def _w_cpu_cfs_period_us(self, group: _Group, value: str, path: str) -> None:
        period = _parse_int(value, path)
        if not 1000 <= period <= 1_000_000:
            raise _err(errno.EINVAL, path)
        group.files["cpu.cfs_period_us"] = str(period)

    def _w_cpu_cfs_quota_us(self, group: _Group, value: str, path: str) -> None:
        quota = _parse_int(value, path)
        if quota != -1 and quota < 1000:
            raise _err(errno.EINVAL, path)
        group.files["cpu.cfs_quota_us"] = str(quota)

    def _w_pids_max(self, group: _Group, value: str, path: str) -> None:
        if value != "max" and _parse_int(value, path) < 0:
            raise _err(errno.EINVAL, path)
        group.files["pids.max"] = value

    def _w_devices_allow(self, group: _Group, value: str, path: str) -> None:
        self._check_device_rule(value, path)
        if value.split()[0] == "a":
            group.devices = ["a *:* rwm"]
        elif value not in group.devices:
            group.devices.append(value)

    def _w_devices_deny(self, group: _Group, value: str, path: str) -> None:
        self._check_device_rule(value, path)
        if value.split()[0] == "a":
            group.devices = []
        else:
            group.devices = [r for r in group.devices if r != value]

    @staticmethod
    def _check_device_rule(value: str, path: str) -> None:
        parts = value.split()
        if parts and parts[0] == "a":
            return
        ok = (
            len(parts) == 3 and parts[0] in ("b", "c") and ":" in parts[1]
            and all(n == "*" or n.isdigit() for n in parts[1].split(":"))
            and bool(parts[2]) and not set(parts[2]) - set("rwm")
        )
        if not ok:
            raise _err(errno.EINVAL, path)

    def _w_freezer_state(self, group: _Group, value: str, path: str) -> None:
        if value not in ("FROZEN", "THAWED"):
            raise _err(errno.EINVAL, path)
        group.files["freezer.state"] = value
        if value == "THAWED":
            self._thawed()

    def _w_cpuset_cpus(self, group: _Group, value: str, path: str) -> None:
        group.files["cpuset.cpus"] = value

    def _w_cpuset_mems(self, group: _Group, value: str, path: str) -> None:
        group.files["cpuset.mems"] = value

    # v2
    def _w_cgroup_subtree_control(self, group: _Group, value: str, path: str) -> None:
        enabled = group.files["cgroup.subtree_control"].split()
        offered = group.files["cgroup.controllers"].split()
        if group.procs and group.path != group.mount:
            raise _err(errno.EBUSY, path)
        for token in value.split():
            op, ctrl = token[0], token[1:]
            if op not in "+-" or ctrl not in offered:
                raise _err(errno.ENOENT if op in "+-" else errno.EINVAL, path)
            if op == "+" and ctrl not in enabled:
                enabled.append(ctrl)
            elif op == "-" and ctrl in enabled:
                enabled.remove(ctrl)
        group.files["cgroup.subtree_control"] = " ".join(enabled)

    def _w_cpu_max(self, group: _Group, value: str, path: str) -> None:
        parts = value.split()
        period = _parse_int(parts[1], path) if len(parts) == 2 else 100_000
        quota = parts[0] if parts else ""
        if len(parts) not in (1, 2) or not 1000 <= period <= 1_000_000:
            raise _err(errno.EINVAL, path)
        if quota != "max" and _parse_int(quota, path) < 1000:
            raise _err(errno.EINVAL, path)
        group.files["cpu.max"] = f"{quota} {period}"

    def _w_memory_max(self, group: _Group, value: str, path: str) -> None:
        if value != "max":
            value = str((_parse_int(value, path) // PAGE) * PAGE)
        group.files["memory.max"] = value

    def _w_memory_swap_max(self, group: _Group, value: str, path: str) -> None:
        if value != "max" and _parse_int(value, path) < 0:
            raise _err(errno.EINVAL, path)
        group.files["memory.swap.max"] = value

    def _w_cgroup_kill(self, group: _Group, value: str, path: str) -> None:
        if value != "1":
            raise _err(errno.EINVAL, path)
        for pid in self._subtree_procs(group.path):
            self._exit(pid)  # cgroup.kill works on frozen groups too

    def _w_cgroup_freeze(self, group: _Group, value: str, path: str) -> None:
        if value not in ("0", "1"):
            raise _err(errno.EINVAL, path)
        group.files["cgroup.freeze"] = value
        if value == "0":
            self._thawed()


    # --- device access, as the kernel decides it -----------------------------------------------------

    def device_allowed(self, path: str, *, kind: str, major: int, minor: int, access: str) -> bool:
        """Whether a process in group ``path`` may ``access`` (subset of ``rwm``) ``kind major:minor``."""
        group = self.groups[path]
        if group.version == 1:
            return any(self._v1_rule_covers(rule, kind, major, minor, access) for rule in group.devices)
        d = path
        while True:  # every program from the group up to the root must allow (BPF_F_ALLOW_MULTI)
            program = self.groups[d].device_program
            if program is not None and not bpf_vm.run(program, kind=kind, major=major, minor=minor,
                                                       access=access):
                return False
            if d == group.mount:
                return True
            d = posixpath.dirname(d)

    @staticmethod
    def _v1_rule_covers(rule: str, kind: str, major: int, minor: int, access: str) -> bool:
        rule_kind, numbers, rule_access = rule.split()
        if rule_kind == "a":
            return True
        rule_major, rule_minor = numbers.split(":")
        return (
            rule_kind == kind and rule_major in ("*", str(major)) and rule_minor in ("*", str(minor))
            and set(access) <= set(rule_access)
        )


class FakeDeviceFilter:
    """``agent.cgroups.device_bpf.DeviceFilter`` on a ``FakeCgroupFs``: records instead of loading.

    ``attached`` lists ``(directory, listing)`` per attach; ``usable=False`` plays a host that cannot
    load device programs; ``fail_next_attach`` injects an ``OSError``."""

    def __init__(self, fs: FakeCgroupFs, *, usable: bool = True) -> None:
        self.fs = fs
        self.usable = usable
        self.attached: list[tuple[str, str]] = []
        self._fail: int | None = None

    def fail_next_attach(self, code: int) -> None:
        self._fail = code

    def available(self) -> bool:
        return self.usable

    def attach(self, directory: str, program: Sequence[bpf_asm.Item]) -> None:
        if not self.usable:
            raise _err(errno.EPERM, directory)
        if self._fail is not None:
            code, self._fail = self._fail, None
            raise _err(code, directory)
        group = self.fs.groups.get(directory)
        if group is None or group.version != 2:
            raise _err(errno.ENOENT if group is None else errno.EBADF, directory)
        group.device_program = bpf_asm.assemble(program)  # replaces the group's own program
        self.attached.append((directory, bpf_asm.listing(program)))
