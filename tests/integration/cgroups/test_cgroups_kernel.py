"""agent.cgroups against the real kernel: limits enforced on real processes, kill and remove.

v1 tests need the cpu, cpuacct, memory, pids, devices and freezer hierarchies (Shoal's build machines are
v1 hybrid); the v2 test uses the host's cgroup2 mount even when it has no controllers (the hybrid
``/sys/fs/cgroup/unified``), where only mkdir, join, ``cgroup.kill`` and ``cgroup.events`` work.
Processes are started first and then moved in by writing their pid into ``procs_files()``, as the
launcher does; each waits for a line on stdin before doing the interesting thing, so it is inside the
group when it does it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cgroups import manager, v1, v2
from agent.cgroups.manager import DEFAULT_DEVICE_RULES, Cgroup, CgroupManager, Limits, RealCgroupFs
from agent.errors import InvalidArgument

pytestmark = [pytest.mark.root, pytest.mark.integration]

MiB = 1024 * 1024
V1_NEEDED = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer")


@dataclass
class Host:
    manager: CgroupManager
    parent: str
    mountpoint: str = ""  # v2 only
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, group: Cgroup, code: str) -> subprocess.Popen[str]:
        """A Python child running ``code`` after it reads a line, moved into ``group`` meanwhile."""
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.stdin.readline()\n{code}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        for path in group.procs_files():
            Path(path).write_text(str(proc.pid))
        assert proc.pid in group.pids()
        return proc


def _cgroup_mounts() -> list[manager.CgroupMount]:
    return manager.parse_mountinfo(
        Path("/proc/self/mountinfo").read_text(), cgroup_root=Path("/sys/fs/cgroup")
    )


def _host(mgr: CgroupManager, *, mountpoint: str = "") -> Iterator[Host]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    host = Host(manager=mgr, parent=f"shoal-test-{secrets.token_hex(4)}", mountpoint=mountpoint)
    try:
        yield host
    finally:
        for proc in host.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.communicate()
        for name in mgr.list_children(host.parent):
            group = mgr.open(name)
            if group is not None:
                group.kill_all()
                group.remove()
        mgr.remove_parent_if_empty(host.parent)
        assert glob.glob(f"/sys/fs/cgroup/*/{host.parent}") + glob.glob(f"/sys/fs/cgroup/{host.parent}") == []


@pytest.fixture
def v1_host() -> Iterator[Host]:
    mounts = {c: m.mountpoint for m in _cgroup_mounts() if m.version == 1 for c in m.controllers}
    missing = [c for c in V1_NEEDED if c not in mounts]
    if missing:
        pytest.skip(f"no cgroup v1 hierarchy for {missing}")
    yield from _host(v1.V1CgroupManager(fs=RealCgroupFs(), mounts=mounts))


@pytest.fixture
def v2_host() -> Iterator[Host]:
    unified = sorted((m.mountpoint for m in _cgroup_mounts() if m.version == 2), key=len)
    if not unified:
        pytest.skip("no cgroup2 hierarchy mounted under /sys/fs/cgroup")
    yield from _host(v2.V2CgroupManager(fs=RealCgroupFs(), mountpoint=unified[0]), mountpoint=unified[0])


def test_v1_memory_limit_oom_kills_with_sigkill(v1_host: Host) -> None:
    group = v1_host.manager.create(
        f"{v1_host.parent}/oom", limits=Limits(memory_bytes=16 * MiB), devices=DEFAULT_DEVICE_RULES
    )
    # b"a" * n touches every page (a zeroed bytearray might not).
    proc = v1_host.start(group, "x = b'a' * (64 * 1024 * 1024)\nprint('survived')")
    out, _ = proc.communicate("go\n")
    assert proc.returncode == -signal.SIGKILL
    assert "survived" not in out
    assert group.oom_killed()
    assert group.stats().oom_kill_count >= 1
    assert group.stats().memory_limit_bytes == 16 * MiB


def test_v1_pids_limit_makes_fork_fail(v1_host: Host) -> None:
    group = v1_host.manager.create(
        f"{v1_host.parent}/pids", limits=Limits(pids_max=5), devices=DEFAULT_DEVICE_RULES
    )
    code = (
        "import os, time\n"
        "made = 0\n"
        "for _ in range(10):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600); os._exit(0)\n"
        "        made += 1\n"
        "    except OSError as e:\n"
        "        print('fork failed', e.errno, flush=True); break\n"
        "print('forked', made, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    proc = v1_host.start(group, code)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
    assert lines == [f"fork failed {errno.EAGAIN}", "forked 4"]  # EAGAIN; 4 children + the parent = 5
    assert group.stats().pids_current == 5
    group.kill_all()
    assert group.pids() == []
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_v1_cpu_quota_is_written_and_throttles(v1_host: Host) -> None:
    group = v1_host.manager.create(
        f"{v1_host.parent}/cpu", limits=Limits(cpu_quota_us=20_000), devices=DEFAULT_DEVICE_RULES
    )
    cpu_dir = group.paths()["cpu"]
    assert Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert Path(cpu_dir, "cpu.cfs_period_us").read_text().strip() == "100000"
    proc = v1_host.start(group, "while True: pass")
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    # A busy loop at 20% of a core is throttled in (nearly) every 100 ms period; poll for the counter.
    throttled = manager.poll_until(
        lambda: group.stats().cpu_throttled_periods > 0, timeout_s=10, clock=time.monotonic,
        sleep=time.sleep,
    )
    stats = group.stats()
    assert throttled and stats.cpu_throttled_ns > 0 and stats.cpu_usage_ns > 0
    group.kill_all()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_v1_device_rules_forbid_mknod_of_host_disks(v1_host: Host, tmp_path: Path) -> None:
    group = v1_host.manager.create(f"{v1_host.parent}/dev", limits=Limits(), devices=DEFAULT_DEVICE_RULES)
    code = (
        "import os, stat\n"
        "with open('/dev/null', 'w') as f: f.write('ok')\n"
        "print('null ok', flush=True)\n"
        "try:\n"
        f"    os.mknod({str(tmp_path / 'sda')!r}, stat.S_IFBLK | 0o600, os.makedev(8, 0))\n"
        "    print('mknod ok')\n"
        "except PermissionError:\n"
        "    print('mknod refused')\n"
    )
    proc = v1_host.start(group, code)
    out, err = proc.communicate("go\n")
    assert out.split("\n")[:2] == ["null ok", "mknod refused"], err
    assert not (tmp_path / "sda").exists()


def test_v2_unified_join_kill_and_remove(v2_host: Host) -> None:
    mgr = v2_host.manager
    group = mgr.create(f"{v2_host.parent}/k", limits=Limits(), devices=())
    events = Path(group.paths()["unified"], "cgroup.events")
    proc = v2_host.start(group, "")
    assert "populated 1" in events.read_text().split("\n")
    if not Path(group.paths()["unified"], "cgroup.kill").exists():
        pytest.skip("kernel without cgroup.kill (< 5.14)")
    group.kill_all()
    assert "populated 0" in events.read_text().split("\n")
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    group.remove()
    assert mgr.open(group.name) is None


def test_v2_limits_without_controllers_are_refused(v2_host: Host) -> None:
    mgr = v2_host.manager
    if "memory" in v2.read_controllers(RealCgroupFs(), v2_host.mountpoint):
        pytest.skip("this cgroup2 has a memory controller")
    with pytest.raises(InvalidArgument, match="memory"):
        mgr.create(f"{v2_host.parent}/m", limits=Limits(memory_bytes=32 * MiB), devices=())
    assert mgr.list_children(v2_host.parent) == []



@pytest.mark.parametrize("which", ["v1", "v2"])
def test_a_process_joins_itself_through_join_files(which: str, request: pytest.FixtureRequest) -> None:
    """What the launcher does: a single-threaded process writes "0" into every join file."""
    host: Host = request.getfixturevalue(f"{which}_host")
    group = host.manager.create(f"{host.parent}/self-join", limits=Limits(), devices=())
    files = repr(list(group.join_files()))
    proc = subprocess.run(
        [sys.executable, "-c",
         f"import os\nfor p in {files}:\n    open(p, 'w').write('0')\nprint(os.getpid())\n"
         "print(open('/proc/self/cgroup').read())"],
        capture_output=True, text=True, check=True)
    pid, cgroups = proc.stdout.split("\n", 1)
    lines = [line for line in cgroups.splitlines() if line]
    joined = [line for line in lines if line.endswith(f"/{host.parent}/self-join")]
    expected = len(group.join_files()) if which == "v1" else 1
    # co-mounted controllers (cpu,cpuacct) share one line and one join file
    assert len(joined) >= expected, (group.join_files(), lines)
    assert int(pid) > 0
