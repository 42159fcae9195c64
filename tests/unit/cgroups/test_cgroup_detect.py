"""detect() and mountinfo parsing against crafted mount tables (the v1 hybrid one copied from a build
machine's /proc/self/mountinfo), with FakeCgroupFs standing in for the mounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cgroups import detect, manager
from agent.cgroups.manager import Limits
from agent.errors import FailedPrecondition, InvalidArgument
from tests.conformance.cgroupfs_fake import FakeCgroupFs, FakeDeviceFilter

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = "/sys/fs/cgroup"


def _detect(fixture: str, fake: FakeCgroupFs, *, bpf_usable: bool = True) -> manager.CgroupManager:
    return detect.detect(mountinfo=FIXTURES / fixture, fs=fake,
                         device_filter=FakeDeviceFilter(fake, usable=bpf_usable))


def test_v1_hybrid_build_machine_uses_each_controllers_mount() -> None:
    fake = FakeCgroupFs()
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids"):
        fake.mount_v1(f"{ROOT}/{ctrl}", (ctrl,))
    fake.mount_v2(f"{ROOT}/unified", ("hugetlb",))
    mgr = _detect("mountinfo-v1-hybrid.txt", fake)
    assert (mgr.version, mgr.supports_device_rules) == (1, True)
    group = mgr.create("shoal/c1", limits=Limits(memory_bytes=32 << 20), devices=())
    controllers = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids")
    assert group.paths() == {c: f"{ROOT}/{c}/shoal/c1" for c in controllers}
    assert len(group.procs_files()) == 7
    # blkio and name=systemd are not Shoal's business.
    assert not any("blkio" in p or "systemd" in p for p in group.procs_files())


def test_v1_co_mounted_cpu_cpuacct_is_one_hierarchy() -> None:
    fake = FakeCgroupFs()
    fake.mount_v1(f"{ROOT}/cpu,cpuacct", ("cpu", "cpuacct"))
    for ctrl in ("memory", "pids", "devices", "freezer", "cpuset"):
        fake.mount_v1(f"{ROOT}/{ctrl}", (ctrl,))
    fake.mount_v2(f"{ROOT}/unified", ())
    mgr = _detect("mountinfo-v1-comounted.txt", fake)
    assert mgr.version == 1
    group = mgr.create("shoal/c1", limits=Limits(cpu_quota_us=50_000), devices=())
    assert group.paths()["cpu"] == group.paths()["cpuacct"] == f"{ROOT}/cpu,cpuacct/shoal/c1"
    assert len(group.procs_files()) == 6
    assert fake.read_text(f"{ROOT}/cpu,cpuacct/shoal/c1/cpu.cfs_quota_us").strip() == "50000"


def test_pure_v2_enables_wanted_controllers_on_every_ancestor() -> None:
    fake = FakeCgroupFs()
    fake.mount_v2(ROOT, ("cpuset", "cpu", "io", "memory", "pids"))
    mgr = _detect("mountinfo-v2-pure.txt", fake)
    assert (mgr.version, mgr.supports_device_rules) == (2, True)
    group = mgr.create("shoal/tenant/c1", limits=Limits(memory_bytes=32 << 20, pids_max=9), devices=())
    for ancestor in (ROOT, f"{ROOT}/shoal", f"{ROOT}/shoal/tenant"):
        assert set(fake.read_text(f"{ancestor}/cgroup.subtree_control").split()) == {"cpu", "memory", "pids"}
    assert fake.read_text(f"{ROOT}/shoal/tenant/c1/cgroup.subtree_control").strip() == ""
    assert group.procs_files() == (f"{ROOT}/shoal/tenant/c1/cgroup.procs",)
    assert fake.read_text(f"{ROOT}/shoal/tenant/c1/memory.swap.max").strip() == "0"


def test_hybrid_with_controllers_bound_to_v2_uses_the_unified_mount() -> None:
    fake = FakeCgroupFs()
    fake.mount_v2(f"{ROOT}/unified", ("cpu", "memory", "pids"))
    mgr = _detect("mountinfo-hybrid-controllers-on-v2.txt", fake)
    assert mgr.version == 2
    group = mgr.create("shoal/c1", limits=Limits(), devices=())
    assert group.paths() == {"unified": f"{ROOT}/unified/shoal/c1"}


def test_v1_wins_when_the_v2_mount_lacks_controllers() -> None:
    fake = FakeCgroupFs()
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids"):
        fake.mount_v1(f"{ROOT}/{ctrl}", (ctrl,))
    fake.mount_v2(f"{ROOT}/unified", ("memory", "hugetlb"))  # cpu and pids are still on v1
    assert _detect("mountinfo-v1-hybrid.txt", fake).version == 1


def test_v2_without_controllers_and_no_v1_still_detects_but_refuses_limits() -> None:
    fake = FakeCgroupFs()
    fake.mount_v2(f"{ROOT}/unified", ())
    mgr = _detect("mountinfo-hybrid-controllers-on-v2.txt", fake)
    assert mgr.version == 2
    mgr.create("shoal/plain", limits=Limits(), devices=())
    with pytest.raises(InvalidArgument, match="memory"):
        mgr.create("shoal/limited", limits=Limits(memory_bytes=32 << 20), devices=())
    assert mgr.list_children("shoal") == ["shoal/plain"]


@pytest.mark.parametrize("bpf_usable", [True, False])
def test_v2_device_rules_follow_whether_bpf_device_programs_load(bpf_usable: bool) -> None:
    fake = FakeCgroupFs()
    fake.mount_v2(ROOT, ("cpu", "memory", "pids"))
    mgr = _detect("mountinfo-v2-pure.txt", fake, bpf_usable=bpf_usable)
    assert mgr.supports_device_rules is bpf_usable
    if bpf_usable:
        mgr.create("shoal/c1", limits=Limits(), devices=manager.DEFAULT_DEVICE_RULES)
        assert fake.groups[f"{ROOT}/shoal/c1"].device_program is not None
    else:
        with pytest.raises(FailedPrecondition, match="BPF device program"):
            mgr.create("shoal/c1", limits=Limits(), devices=manager.DEFAULT_DEVICE_RULES)
        assert mgr.list_children("shoal") == []


def test_no_cgroup_mount_is_a_failed_precondition(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    with pytest.raises(FailedPrecondition):
        detect.detect(mountinfo=mountinfo, fs=FakeCgroupFs())


def test_parse_mountinfo_ignores_mounts_outside_the_root_and_unescapes() -> None:
    text = (FIXTURES / "mountinfo-v1-comounted.txt").read_text()
    text += "90 26 0:40 / /sys/fs/cgroup/my\\040pids rw - cgroup cgroup rw,pids\n"
    mounts = manager.parse_mountinfo(text, cgroup_root=Path(ROOT))
    points = {m.mountpoint: (m.version, m.controllers) for m in mounts}
    assert points[f"{ROOT}/cpu,cpuacct"] == (1, ("cpu", "cpuacct"))
    assert points[f"{ROOT}/unified"] == (2, ())
    assert points[f"{ROOT}/net_cls,net_prio"] == (1, ())
    assert points[f"{ROOT}/my pids"] == (1, ("pids",))
    assert not any(p.startswith("/var/lib/docker") for p in points)


def test_parse_mountinfo_of_this_build_machine_fixture() -> None:
    mounts = manager.parse_mountinfo(
        (FIXTURES / "mountinfo-v1-hybrid.txt").read_text(), cgroup_root=Path(ROOT)
    )
    v1 = {c: m.mountpoint for m in mounts if m.version == 1 for c in m.controllers}
    assert v1 == {c: f"{ROOT}/{c}" for c in manager.V1_CONTROLLERS}
    assert [m.mountpoint for m in mounts if m.version == 2] == [f"{ROOT}/unified"]
