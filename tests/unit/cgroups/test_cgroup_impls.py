"""Implementation-specific behaviour of agent.cgroups.v1/v2 on FakeCgroupFs (the shared behaviour is
in tests/conformance/test_cgroups.py): write ordering, fallbacks, timeouts, and the value types."""

from __future__ import annotations

import errno
import re

import pytest

from agent.cgroups import manager, v1, v2
from agent.cgroups.manager import DEFAULT_DEVICE_RULES, CgroupBusy, DeviceRule, Limits
from agent.errors import InvalidArgument
from tests.conformance.cgroupfs_fake import FakeCgroupFs

MiB = 1 << 20


class FakeClock:
    """A clock that only moves when slept on, so timeouts cost no wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _v1(controllers: tuple[str, ...] = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer"),
        *, kill: bool = True) -> tuple[FakeCgroupFs, v1.V1CgroupManager, FakeClock]:
    fake, clock = FakeCgroupFs(), FakeClock()
    for c in controllers:
        fake.mount_v1(f"/cg/{c}", (c,))
    mgr = v1.V1CgroupManager(
        fs=fake, mounts={c: f"/cg/{c}" for c in controllers},
        kill_pid=fake.kill if kill else (lambda pid, sig: None), clock=clock, sleep=clock.sleep,
    )
    return fake, mgr, clock


def _memory_writes(fake: FakeCgroupFs) -> list[str]:
    return [p.rsplit("/", 1)[1] for p, _ in fake.writes if "memory." in p and "limit" in p]


def test_v1_memsw_is_raised_before_memory_and_lowered_after() -> None:
    fake, mgr, _ = _v1()
    group = mgr.create("shoal/a", limits=Limits(memory_bytes=32 * MiB), devices=())
    # Fresh group: memory is unlimited, so 32 MiB is a decrease: memory first.
    assert _memory_writes(fake) == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    fake.writes.clear()
    group.apply(Limits(memory_bytes=64 * MiB))
    assert _memory_writes(fake) == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    assert fake.read_text("/cg/memory/shoal/a/memory.memsw.limit_in_bytes").strip() == str(64 * MiB)


def test_v1_without_swap_accounting_writes_memory_only() -> None:
    fake = FakeCgroupFs(swap_accounting=False)
    fake.mount_v1("/cg/memory", ("memory",))
    mgr = v1.V1CgroupManager(fs=fake, mounts={"memory": "/cg/memory"}, kill_pid=fake.kill)
    group = mgr.create("shoal/a", limits=Limits(memory_bytes=32 * MiB), devices=())
    group.apply(Limits(memory_bytes=64 * MiB))
    assert _memory_writes(fake) == ["memory.limit_in_bytes", "memory.limit_in_bytes"]
    assert group.stats().memory_limit_bytes == 64 * MiB


def test_v1_memory_limit_without_memory_controller_is_invalid_argument() -> None:
    _, mgr, _ = _v1(("cpu", "cpuacct", "pids"))
    with pytest.raises(InvalidArgument, match="'memory' controller"):
        mgr.create("shoal/a", limits=Limits(memory_bytes=32 * MiB), devices=())
    assert mgr.open("shoal/a") is None
    group = mgr.create("shoal/b", limits=Limits(pids_max=3), devices=())
    assert group.stats().memory_limit_bytes is None and not group.oom_killed()
    assert mgr.supports_device_rules is False


def test_v1_cpuset_group_inherits_cpus_and_mems_so_tasks_can_join() -> None:
    fake, mgr, _ = _v1(("cpuset", "memory"))
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    for d in ("/cg/cpuset/shoal", "/cg/cpuset/shoal/a"):
        assert fake.read_text(f"{d}/cpuset.cpus").strip() == "0-1"
        assert fake.read_text(f"{d}/cpuset.mems").strip() == "0"
    pid = fake.spawn()
    for path in group.procs_files():
        fake.write_text(path, str(pid))
    assert group.pids() == [pid]


def test_v1_oom_falls_back_to_failcnt_on_old_kernels() -> None:
    fake, mgr, _ = _v1(("memory",))
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    fake.set_counter("/cg/memory/shoal/a/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")
    assert not group.oom_killed()
    fake.set_counter("/cg/memory/shoal/a/memory.failcnt", "3")
    assert group.oom_killed()


def test_v1_kill_all_freezes_kills_then_thaws() -> None:
    fake, mgr, _ = _v1()
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    pid = fake.spawn()
    for path in group.procs_files():
        fake.write_text(path, str(pid))
    fake.writes.clear()
    group.kill_all()
    states = [text for path, text in fake.writes if path.endswith("freezer.state")]
    assert states == ["FROZEN", "THAWED"]
    assert pid not in fake.live and group.pids() == []


def test_v1_kill_all_without_freezer_still_empties() -> None:
    fake, mgr, _ = _v1(("memory", "pids"))
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    pids = [fake.spawn(), fake.spawn()]
    for pid in pids:
        for path in group.procs_files():
            fake.write_text(path, str(pid))
    group.kill_all()
    assert group.pids() == []


def test_kill_all_that_cannot_empty_raises_cgroup_busy_within_the_deadline() -> None:
    fake, mgr, clock = _v1(kill=False)  # processes survive SIGKILL (e.g. stuck in D state)
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    pid = fake.spawn()
    for path in group.procs_files():
        fake.write_text(path, str(pid))
    with pytest.raises(CgroupBusy, match=str(pid)):
        group.kill_all(timeout_s=2.0)
    # Bounded by the one deadline, freeze wait included: a caller can report it that soon.
    assert clock.now == pytest.approx(2.0)
    # The group was thawed again even though the kill failed.
    assert fake.read_text("/cg/freezer/shoal/a/freezer.state").strip() == "THAWED"


def test_v2_kill_all_that_cannot_empty_raises_cgroup_busy_at_the_deadline() -> None:
    fake, clock = FakeCgroupFs(), FakeClock()
    fake.mount_v2("/cg", ("cpu", "memory", "pids"))
    mgr = v2.V2CgroupManager(fs=fake, mountpoint="/cg", kill_pid=fake.kill, clock=clock, sleep=clock.sleep)
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    pid = fake.spawn()
    fake.unkillable.add(pid)
    fake.write_text(group.procs_files()[0], str(pid))
    with pytest.raises(CgroupBusy, match=str(pid)):
        group.kill_all(timeout_s=1.5)
    assert clock.now == pytest.approx(1.5)


def test_v2_kill_all_falls_back_to_freeze_without_cgroup_kill() -> None:
    fake, clock = FakeCgroupFs(), FakeClock()
    fake.mount_v2("/cg", ("cpu", "memory", "pids"))
    mgr = v2.V2CgroupManager(fs=fake, mountpoint="/cg", kill_pid=fake.kill, clock=clock, sleep=clock.sleep)
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    fake.groups["/cg/shoal/a"].files.pop("cgroup.kill")  # a kernel before 5.14
    pid = fake.spawn()
    fake.write_text(group.procs_files()[0], str(pid))
    fake.writes.clear()
    group.kill_all()
    assert [t for p, t in fake.writes if p.endswith("cgroup.freeze")] == ["1", "0"]
    assert group.pids() == [] and pid not in fake.live


def test_v2_create_of_a_limit_the_host_lacks_names_the_controller() -> None:
    fake = FakeCgroupFs()
    fake.mount_v2("/cg", ("cpu", "memory"))
    mgr = v2.V2CgroupManager(fs=fake, mountpoint="/cg", kill_pid=fake.kill)
    with pytest.raises(InvalidArgument, match="pids"):
        mgr.create("shoal/a", limits=Limits(pids_max=5), devices=())
    group = mgr.create("shoal/b", limits=Limits(cpu_quota_us=150_000), devices=())
    assert fake.read_text("/cg/shoal/b/cpu.max").strip() == "150000 100000"
    assert group.stats().pids_current == 0


def test_kernel_errors_name_the_operation_and_path() -> None:
    fake, mgr, _ = _v1(("memory",))
    group = mgr.create("shoal/a", limits=Limits(), devices=())
    fake.fail_next_write("/cg/memory/shoal/a/memory.limit_in_bytes", errno.EBUSY)
    with pytest.raises(CgroupBusy, match=re.escape("/cg/memory/shoal/a/memory.limit_in_bytes")):
        group.apply(Limits(memory_bytes=8 * MiB))


# --- values --------------------------------------------------------------------------------------------


def test_default_device_rules_deny_everything_then_allow_only_the_basics() -> None:
    rendered = [(r.allow, r.render()) for r in DEFAULT_DEVICE_RULES]
    assert rendered[0] == (False, "a *:* rwm")
    allowed = {text for allow, text in rendered[1:] if allow}
    assert allowed == {
        "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm",
        "c 136:* rwm",
    }
    assert all(r.allow for r in DEFAULT_DEVICE_RULES[1:])


@pytest.mark.parametrize(
    "kwargs", [{"kind": "x"}, {"access": ""}, {"access": "rwx"}, {"kind": "c", "major": -1}]
)
def test_bad_device_rules_are_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        DeviceRule(allow=True, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"), [("shoal/abc", "shoal/abc"), ("shoal/abc/", "shoal/abc"), ("a", "a")]
)
def test_validate_name_accepts_relative_paths(name: str, expected: str) -> None:
    assert manager.validate_name(name) == expected


def test_limits_default_to_unlimited_with_a_100ms_period() -> None:
    assert Limits() == Limits(memory_bytes=None, cpu_quota_us=None, cpu_period_us=100_000, pids_max=None)
