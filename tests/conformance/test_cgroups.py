"""Conformance suite for ``agent.cgroups``: the same behaviour checks against every implementation.

Parametrised over cgroup v1 and v2 on ``FakeCgroupFs`` and, marked ``root``, the real host (whatever
``detect()`` picks — v1 on Shoal's build machines) under a unique parent ``shoal-test-<random>`` that a
finalizer removes from every hierarchy. Checks that need to set kernel counters (or a process that
survives SIGKILL) run on the fakes only. ``collect_leftovers`` (``agent.cgroups.leftovers``) is part of
the contract and checked here too.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import posixpath
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from agent.cgroups import detect, leftovers, manager, v1, v2
from agent.cgroups.manager import (
    DEFAULT_DEVICE_RULES,
    Cgroup,
    CgroupBusy,
    CgroupFs,
    CgroupManager,
    DeviceRule,
    Limits,
)
from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tests.conformance.cgroupfs_fake import FakeCgroupFs, FakeDeviceFilter

MiB = 1024 * 1024


@dataclass
class Harness:
    """What a check needs: the manager, its fs, a fresh parent, a way to start processes."""

    manager: CgroupManager
    fs: CgroupFs
    parent: str
    spawn: Callable[[], int]
    fake: FakeCgroupFs | None = None  # set when counters can be forged
    popens: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def devices(self) -> tuple[DeviceRule, ...]:
        return DEFAULT_DEVICE_RULES if self.manager.supports_device_rules else ()

    def create(self, child: str, limits: Limits | None = None) -> Cgroup:
        return self.manager.create(
            f"{self.parent}/{child}", limits=limits or Limits(), devices=self.devices()
        )

    def join(self, group: Cgroup, pid: int) -> None:
        # What the launcher does: its pid into every procs file.
        for path in group.procs_files():
            self.fs.write_text(path, str(pid))


def _fake_v1() -> tuple[FakeCgroupFs, CgroupManager]:
    fake = FakeCgroupFs()
    mounts = {"cpu": "/fake/cpu,cpuacct", "cpuacct": "/fake/cpu,cpuacct"}
    for ctrl in ("memory", "pids", "devices", "freezer", "cpuset"):
        mounts[ctrl] = f"/fake/{ctrl}"
    for mount in sorted(set(mounts.values())):
        fake.mount_v1(mount, tuple(c for c, m in mounts.items() if m == mount))
    return fake, v1.V1CgroupManager(fs=fake, mounts=mounts, kill_pid=fake.kill)


def _fake_v2() -> tuple[FakeCgroupFs, CgroupManager]:
    fake = FakeCgroupFs()
    fake.mount_v2("/fake/unified", ("cpu", "memory", "pids", "io"))
    return fake, v2.V2CgroupManager(fs=fake, mountpoint="/fake/unified", kill_pid=fake.kill,
                                    device_filter=FakeDeviceFilter(fake))


def _cleanup_real(mgr: CgroupManager, parent: str) -> None:
    for name in mgr.list_children(parent):
        group = mgr.open(name)
        if group is not None:
            group.kill_all()
            group.remove()
    mgr.remove_parent_if_empty(parent)


@pytest.fixture(params=["v1-fake", "v2-fake", pytest.param("real-host", marks=pytest.mark.root)])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param != "real-host":
        fake, mgr = _fake_v1() if request.param == "v1-fake" else _fake_v2()
        yield Harness(manager=mgr, fs=fake, parent="shoal-test", spawn=fake.spawn, fake=fake)
        return
    if os.geteuid() != 0:
        pytest.skip("needs root to write cgroupfs")
    real = manager.RealCgroupFs()
    mgr = detect.detect(fs=real)
    parent = f"shoal-test-{secrets.token_hex(4)}"
    harness = Harness(manager=mgr, fs=real, parent=parent, spawn=lambda: 0)

    def spawn() -> int:
        proc = subprocess.Popen(["sleep", "600"])
        harness.popens[proc.pid] = proc
        return proc.pid

    harness.spawn = spawn
    try:
        yield harness
    finally:
        for proc in harness.popens.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        _cleanup_real(mgr, parent)
        assert glob.glob(f"/sys/fs/cgroup/*/{parent}") + glob.glob(f"/sys/fs/cgroup/{parent}") == []


def _read_back(h: Harness, group: Cgroup) -> Limits:
    """The limits as the kernel files say, parsed per version."""
    paths, fs = group.paths(), h.fs
    if h.manager.version == 1:
        quota = int(fs.read_text(posixpath.join(paths["cpu"], "cpu.cfs_quota_us")))
        period = int(fs.read_text(posixpath.join(paths["cpu"], "cpu.cfs_period_us")))
        pids = fs.read_text(posixpath.join(paths["pids"], "pids.max")).strip()
        memory = group.stats().memory_limit_bytes
        memsw = int(fs.read_text(posixpath.join(paths["memory"], "memory.memsw.limit_in_bytes")))
        assert memsw == (memory if memory is not None else memsw), "memory limit must forbid swap"
        return Limits(
            memory_bytes=memory, cpu_quota_us=None if quota == -1 else quota, cpu_period_us=period,
            pids_max=None if pids == "max" else int(pids),
        )
    d = paths["unified"]
    quota_s, period_s = fs.read_text(posixpath.join(d, "cpu.max")).split()
    mem = fs.read_text(posixpath.join(d, "memory.max")).strip()
    swap = fs.read_text(posixpath.join(d, "memory.swap.max")).strip()
    assert swap == ("max" if mem == "max" else "0"), "memory limit must forbid swap"
    pids = fs.read_text(posixpath.join(d, "pids.max")).strip()
    return Limits(
        memory_bytes=None if mem == "max" else int(mem),
        cpu_quota_us=None if quota_s == "max" else int(quota_s), cpu_period_us=int(period_s),
        pids_max=None if pids == "max" else int(pids),
    )


def _needs_limits(h: Harness) -> None:
    if h.manager.version == 2 and h.fake is None:
        pytest.skip("this host's cgroup2 has no cpu/memory/pids controllers")


# --- naming and lifecycle ----------------------------------------------------------------------------


def test_create_then_open_and_list(h: Harness) -> None:
    a = h.create("a")
    h.create("b")
    opened = h.manager.open(f"{h.parent}/a")
    assert opened is not None and opened.name == a.name == f"{h.parent}/a"
    assert h.manager.open(f"{h.parent}/missing") is None
    assert h.manager.list_children(h.parent) == [f"{h.parent}/a", f"{h.parent}/b"]
    assert h.manager.list_children(f"{h.parent}-absent") == []


def test_create_existing_is_refused(h: Harness) -> None:
    h.create("a")
    with pytest.raises(AlreadyExists):
        h.create("a")


@pytest.mark.parametrize("bad", ["", "/abs/x", "shoal/../x", "shoal//x", "shoal/cgroup.procs"])
def test_bad_names_are_refused(h: Harness, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        h.manager.create(bad, limits=Limits(), devices=())


def test_paths_and_procs_files_exist(h: Harness) -> None:
    group = h.create("a")
    for d in group.paths().values():
        assert d.endswith(f"/{h.parent}/a") and h.fs.exists(d)
    files = group.procs_files()
    assert files and all(f.endswith("/cgroup.procs") and h.fs.exists(f) for f in files)
    assert len(set(files)) == len(files) == len(set(group.paths().values()))


def test_joining_procs_files_puts_the_process_in_the_group(h: Harness) -> None:
    group = h.create("a")
    pid = h.spawn()
    h.join(group, pid)
    assert group.pids() == [pid]
    assert group.stats().pids_current == 1


def test_two_parents_do_not_see_each_other(h: Harness) -> None:
    other = f"{h.parent}-other"
    try:
        h.create("mine")
        h.manager.create(f"{other}/theirs", limits=Limits(), devices=h.devices())
        assert h.manager.list_children(h.parent) == [f"{h.parent}/mine"]
        assert h.manager.list_children(other) == [f"{other}/theirs"]
        assert h.manager.open(f"{h.parent}/theirs") is None
    finally:
        theirs = h.manager.open(f"{other}/theirs")
        if theirs is not None:
            theirs.remove()
        h.manager.remove_parent_if_empty(other)


# --- limits --------------------------------------------------------------------------------------------


def test_limits_are_written_and_read_back(h: Harness) -> None:
    _needs_limits(h)
    wanted = Limits(memory_bytes=32 * MiB, cpu_quota_us=50_000, cpu_period_us=100_000, pids_max=64)
    group = h.create("a", wanted)
    assert _read_back(h, group) == wanted


def test_memory_limit_can_be_raised_lowered_and_lifted(h: Harness) -> None:
    _needs_limits(h)
    group = h.create("a", Limits(memory_bytes=64 * MiB))
    for memory in (32 * MiB, 128 * MiB, 16 * MiB, None):
        group.apply(Limits(memory_bytes=memory))
        assert _read_back(h, group).memory_bytes == memory


def test_unlimited_lifts_everything(h: Harness) -> None:
    _needs_limits(h)
    group = h.create("a", Limits(memory_bytes=32 * MiB, cpu_quota_us=20_000, pids_max=5))
    group.apply(Limits())
    assert _read_back(h, group) == Limits()
    assert group.stats().memory_limit_bytes is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory_bytes": 1},
        {"cpu_quota_us": 500},
        {"cpu_period_us": 10},
        {"cpu_period_us": 2_000_000},
        {"pids_max": 0},
    ],
)
def test_out_of_range_limits_are_refused(h: Harness, kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        h.create("a", Limits(**kwargs))
    assert h.manager.open(f"{h.parent}/a") is None


def test_kernel_refusal_is_invalid_argument_and_undoes_create(h: Harness) -> None:
    if h.fake is None:
        pytest.skip("needs fault injection")
    group = h.create("probe")
    pids_dir = group.paths().get("pids") or group.paths()["unified"]
    h.fake.fail_next_write(f"{pids_dir}/pids.max", errno.EINVAL)
    with pytest.raises(InvalidArgument, match=r"pids\.max"):
        group.apply(Limits(pids_max=10))
    # The same refusal during create leaves no half-made group behind.
    h.fake.fail_next_write(f"{pids_dir.removesuffix('/probe')}/fresh/pids.max", errno.EINVAL)
    with pytest.raises(InvalidArgument):
        h.create("fresh", Limits(pids_max=10))
    assert h.manager.list_children(h.parent) == [f"{h.parent}/probe"]


def test_device_rules_deny_by_default_or_are_refused(h: Harness) -> None:
    if not h.manager.supports_device_rules:
        with pytest.raises(FailedPrecondition):
            h.manager.create(f"{h.parent}/a", limits=Limits(), devices=DEFAULT_DEVICE_RULES)
        assert h.manager.open(f"{h.parent}/a") is None
        return
    group = h.create("a")
    if h.fake is None:
        if "devices" not in group.paths():
            pytest.skip("v2: tests/integration/cgroups/test_device_bpf_kernel.py opens devices for real")
        listed = h.fs.read_text(posixpath.join(group.paths()["devices"], "devices.list")).split("\n")
        assert "c 1:3 rwm" in listed and "c 136:* rwm" in listed
        assert not any(rule.startswith(("a ", "b ")) for rule in listed)
        return
    d = group.paths().get("devices") or group.paths()["unified"]
    for kind, major, minor, access, allowed in [
        ("c", 1, 3, "rw", True), ("c", 1, 3, "m", True), ("c", 136, 7, "rw", True), ("c", 5, 2, "rwm", True),
        ("b", 8, 0, "r", False), ("b", 8, 0, "m", False),  # a host disk
        ("c", 1, 1, "r", False), ("c", 10, 200, "rw", False),  # /dev/mem, /dev/net/tun
    ]:
        got = h.fake.device_allowed(d, kind=kind, major=major, minor=minor, access=access)
        assert got is allowed, f"{kind} {major}:{minor} {access}"


def test_device_rules_are_read_in_order_from_deny_all(h: Harness) -> None:
    if h.fake is None or not h.manager.supports_device_rules:
        pytest.skip("reads the kernel's decision from the fake")
    rules = (
        DeviceRule(allow=False, kind="a"),
        DeviceRule(allow=True, kind="c", major=1, minor=3, access="rw"),
        DeviceRule(allow=True, kind="b", major=7, minor=None, access="r"),
        DeviceRule(allow=True, kind="c", major=None, minor=None, access="m"),
    )
    group = h.manager.create(f"{h.parent}/ordered", limits=Limits(), devices=rules)
    d = group.paths().get("devices") or group.paths()["unified"]
    for kind, major, minor, access, allowed in [
        ("c", 1, 3, "rw", True), ("c", 1, 3, "rwm", False), ("b", 7, 4, "r", True), ("b", 7, 4, "rw", False),
        ("c", 4, 1, "m", True), ("c", 4, 1, "r", False), ("b", 8, 0, "m", False), ("b", 8, 0, "r", False),
    ]:
        got = h.fake.device_allowed(d, kind=kind, major=major, minor=minor, access=access)
        assert got is allowed, f"{kind} {major}:{minor} {access}"


# --- stats ---------------------------------------------------------------------------------------------


def _memory_dir(group: Cgroup) -> str:
    return group.paths().get("memory") or group.paths()["unified"]


@pytest.mark.parametrize(
    ("usage", "inactive", "expected"), [(100 * MiB, 30 * MiB, 70 * MiB), (MiB, 2 * MiB, 0)]
)
def test_working_set_is_usage_minus_inactive_file(
    h: Harness, usage: int, inactive: int, expected: int
) -> None:
    if h.fake is None:
        pytest.skip("needs forged counters")
    group = h.create("a")
    d = _memory_dir(group)
    if h.manager.version == 1:
        h.fake.set_counter(f"{d}/memory.usage_in_bytes", str(usage))
        h.fake.set_counter(f"{d}/memory.stat", f"total_rss 4096\ntotal_inactive_file {inactive}\n")
    else:
        h.fake.set_counter(f"{d}/memory.current", str(usage))
        h.fake.set_counter(f"{d}/memory.stat", f"anon 4096\ninactive_file {inactive}\n")
    stats = group.stats()
    assert (stats.memory_usage_bytes, stats.memory_working_set_bytes) == (usage, expected)
    assert stats.memory_rss_bytes == 4096


def test_cpu_counters_are_nanoseconds(h: Harness) -> None:
    if h.fake is None:
        pytest.skip("needs forged counters")
    group = h.create("a")
    if h.manager.version == 1:
        h.fake.set_counter(f"{group.paths()['cpuacct']}/cpuacct.usage", "5000000")
        h.fake.set_counter(
            f"{group.paths()['cpu']}/cpu.stat", "nr_periods 10\nnr_throttled 3\nthrottled_time 2000000\n"
        )
    else:
        h.fake.set_counter(
            f"{group.paths()['unified']}/cpu.stat",
            "usage_usec 5000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 2000\n",
        )
    stats = group.stats()
    assert (stats.cpu_usage_ns, stats.cpu_throttled_ns) == (5_000_000, 2_000_000)
    assert (stats.cpu_periods, stats.cpu_throttled_periods) == (10, 3)


def test_oom_killed_follows_the_kernel_counter(h: Harness) -> None:
    group = h.create("a")
    assert not group.oom_killed()
    if h.fake is None:
        return
    d = _memory_dir(group)
    if h.manager.version == 1:
        h.fake.set_counter(f"{d}/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    else:
        h.fake.set_counter(f"{d}/memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert group.oom_killed()
    assert group.stats().oom_kill_count == 2


# --- kill and remove -----------------------------------------------------------------------------------


def test_kill_all_empties_the_group(h: Harness) -> None:
    group = h.create("a")
    pids = [h.spawn(), h.spawn()]
    for pid in pids:
        h.join(group, pid)
    assert group.pids() == sorted(pids)
    group.kill_all()
    assert group.pids() == []
    for pid in pids:
        if pid in h.popens:
            assert h.popens[pid].wait() == -signal.SIGKILL
    group.kill_all()  # an empty group is fine
    group.remove()


def test_remove_is_idempotent(h: Harness) -> None:
    group = h.create("a")
    group.remove()
    group.remove()
    assert h.manager.open(group.name) is None
    assert h.manager.list_children(h.parent) == []


def test_remove_of_populated_group_fails_and_keeps_it(h: Harness) -> None:
    group = h.create("a")
    h.join(group, h.spawn())
    with pytest.raises(CgroupBusy):
        group.remove()
    assert h.manager.open(group.name) is not None
    group.kill_all()
    group.remove()
    assert h.manager.open(group.name) is None


def test_remove_parent_only_when_empty(h: Harness) -> None:
    group = h.create("a")
    assert h.manager.remove_parent_if_empty(h.parent) is False
    group.remove()
    assert h.manager.remove_parent_if_empty(h.parent) is True
    assert h.manager.list_children(h.parent) == []


def test_join_files_are_tasks_on_v1_and_procs_on_v2(h: Harness) -> None:
    group = h.create("joiner")
    files = group.join_files()
    suffix = "/tasks" if h.manager.version == 1 else "/cgroup.procs"
    assert files and all(f.endswith(suffix) and h.fs.exists(f) for f in files)
    assert len(files) == len(group.procs_files())


# --- leftovers of a crash ------------------------------------------------------------------------------


def test_collect_leftovers_kills_and_removes_unknown_groups_only(h: Harness) -> None:
    known = h.create("known")
    h.join(known, h.spawn())
    h.create("idle")  # a create that died before its record was written
    busy = h.create("busy")  # a container whose supervisor died with it running
    nested = h.manager.create(f"{h.parent}/busy/inner", limits=Limits(), devices=h.devices())
    orphans = [h.spawn(), h.spawn()]
    # v2 allows no process in a group that hands controllers to children ("no internal processes").
    h.join(busy if h.manager.version == 1 else nested, orphans[0])
    h.join(nested, orphans[1])  # e.g. a group the container made itself

    result = leftovers.collect_leftovers(h.manager, h.parent, keep_ids=["known", "not-there"])

    assert result.removed == (f"{h.parent}/busy", f"{h.parent}/idle") and result.failed == ()
    assert h.manager.list_children(h.parent) == [f"{h.parent}/known"]
    assert h.manager.open(f"{h.parent}/busy/inner") is None
    assert len(known.pids()) == 1  # the known container was not touched
    for pid in orphans:
        if pid in h.popens:
            assert h.popens[pid].wait() == -signal.SIGKILL
        elif h.fake is not None:
            assert pid not in h.fake.live
    assert "removed 2 leftover cgroups" in result.summary()
    # Nothing left to do the second time.
    assert leftovers.collect_leftovers(h.manager, h.parent, keep_ids=["known"]) == leftovers.Collected()


def test_collect_leftovers_never_touches_anything_outside_the_parent(h: Harness) -> None:
    other = f"{h.parent}-other"
    try:
        theirs = h.manager.create(f"{other}/theirs", limits=Limits(), devices=h.devices())
        h.join(theirs, h.spawn())
        h.create("mine")
        # Same id under another parent, and the parent itself as a prefix of another name.
        h.manager.create(f"{other}/mine", limits=Limits(), devices=h.devices())
        result = leftovers.collect_leftovers(h.manager, h.parent, keep_ids=[])
        assert result.removed == (f"{h.parent}/mine",)
        assert h.manager.list_children(other) == [f"{other}/mine", f"{other}/theirs"]
        assert len(theirs.pids()) == 1
        absent = leftovers.collect_leftovers(h.manager, f"{h.parent}-absent", keep_ids=[])
        assert absent == leftovers.Collected()
        with pytest.raises(InvalidArgument):
            leftovers.collect_leftovers(h.manager, "../escape", keep_ids=[])
    finally:
        _cleanup_real(h.manager, other)


def test_collect_leftovers_reports_a_group_that_will_not_empty_and_goes_on(h: Harness) -> None:
    if h.fake is None:
        pytest.skip("needs a process that survives SIGKILL")
    stuck = h.create("stuck")
    pid = h.spawn()
    h.fake.unkillable.add(pid)  # in uninterruptible sleep
    h.join(stuck, pid)
    h.create("idle")
    result = leftovers.collect_leftovers(h.manager, h.parent, keep_ids=[], timeout_s=0.05)
    assert result.removed == (f"{h.parent}/idle",)
    [(name, why)] = result.failed
    assert name == f"{h.parent}/stuck" and str(pid) in why
    assert "could not remove" in result.summary()
    h.fake.unkillable.clear()
    stuck.kill_all()
    stuck.remove()
