"""``--cgroup-delegate`` on FakeCgroupFs: groups rooted in the unit's delegated cgroup, the agent moved
into a leaf first on v2, the unit's path replicated on v1, and a clear refusal outside a delegated unit.

The fakes play systemd: a ``system.slice/shoal-agent.service`` cgroup marked ``trusted.delegate`` with
the agent process in it, controllers enabled down to it on v2. ``tests/integration/cgroups`` runs the
same logic on the real kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cgroups import delegation, detect, leftovers, manager
from agent.cgroups.manager import Limits
from agent.errors import FailedPrecondition
from tests.conformance.cgroupfs_fake import FakeCgroupFs

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = "/sys/fs/cgroup"
UNIT = "system.slice/shoal-agent.service"
MiB = 1 << 20


def systemd_v2(*, mark: str | None = "trusted.delegate", in_leaf: bool = False) -> tuple[FakeCgroupFs, int]:
    """A pure v2 host as systemd leaves it for a Delegate=yes unit; returns the fake and the agent's pid."""
    fake = FakeCgroupFs()
    fake.mount_v2(ROOT, ("cpuset", "cpu", "io", "memory", "pids"))
    fake.write_text(f"{ROOT}/cgroup.subtree_control", "+cpu +io +memory +pids")
    fake.mkdir(f"{ROOT}/system.slice")
    fake.write_text(f"{ROOT}/system.slice/cgroup.subtree_control", "+cpu +io +memory +pids")
    fake.mkdir(f"{ROOT}/{UNIT}")
    if mark:
        fake.set_xattr(f"{ROOT}/{UNIT}", mark, b"1")
    agent = fake.spawn()
    home = f"{ROOT}/{UNIT}"
    if in_leaf:  # DelegateSubgroup=agent
        fake.mkdir(f"{home}/agent")
        home = f"{home}/agent"
    fake.write_text(f"{home}/cgroup.procs", str(agent))
    fake.writes.clear()
    return fake, agent


def proc_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cgroup"
    path.write_text(text)
    return path


def detect_v2(fake: FakeCgroupFs, own: Path) -> manager.CgroupManager:
    return detect.detect(
        mountinfo=FIXTURES / "mountinfo-v2-pure.txt", fs=fake, delegate=True, proc_cgroup=own,
    )


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def test_parse_proc_cgroup_v1_hybrid_and_v2() -> None:
    hybrid = (
        "12:pids:/system.slice/a.service\n2:cpu,cpuacct:/system.slice/a.service\n6:freezer:/\n"
        "1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\nnot a line\n"
    )
    assert delegation.parse_proc_cgroup(hybrid) == {
        "pids": "/system.slice/a.service", "cpu": "/system.slice/a.service",
        "cpuacct": "/system.slice/a.service", "freezer": "/", "name=systemd": "/system.slice/a.service",
        "": "/system.slice/a.service",
    }
    assert delegation.parse_proc_cgroup("0::/user.slice/x.scope\n") == {"": "/user.slice/x.scope"}


def test_v2_moves_the_agent_into_a_leaf_then_roots_groups_in_the_unit(tmp_path: Path) -> None:
    fake, agent = systemd_v2()
    stale = fake.spawn()  # e.g. a supervisor an older agent left in the unit's cgroup
    fake.write_text(f"{ROOT}/{UNIT}/cgroup.procs", str(stale))
    fake.writes.clear()
    mgr = detect_v2(fake, proc_cgroup(tmp_path, f"0::/{UNIT}\n"))

    assert fake.read_text(f"{ROOT}/{UNIT}/cgroup.procs") == ""
    assert fake.read_text(f"{ROOT}/{UNIT}/agent/cgroup.procs").split() == [str(agent), str(stale)]
    assert set(fake.read_text(f"{ROOT}/{UNIT}/cgroup.subtree_control").split()) == {"cpu", "memory", "pids"}

    group = mgr.create("shoal/c1", limits=Limits(memory_bytes=32 * MiB, pids_max=9), devices=())
    assert group.paths() == {"unified": f"{ROOT}/{UNIT}/shoal/c1"}
    assert group.procs_files() == group.join_files() == (f"{ROOT}/{UNIT}/shoal/c1/cgroup.procs",)
    container = fake.spawn()
    fake.write_text(group.procs_files()[0], str(container))  # what the launcher does
    assert group.pids() == [container]
    assert group.stats().memory_limit_bytes == 32 * MiB
    # Nothing above the unit was written to or created: those cgroups are systemd's.
    assert all(under(path, f"{ROOT}/{UNIT}") for path, _ in fake.writes)
    assert all(under(g, f"{ROOT}/{UNIT}") for g in fake.groups if not under(f"{ROOT}/{UNIT}", g))
    # Leftovers are collected inside the unit, and the agent's own leaf is never among them.
    mgr.create("shoal/ghost", limits=Limits(), devices=())
    collected = leftovers.collect_leftovers(mgr, "shoal", keep_ids=["c1"])
    assert collected.removed == ("shoal/ghost",)
    assert fake.read_text(f"{ROOT}/{UNIT}/agent/cgroup.procs").split() == [str(agent), str(stale)]


def test_v2_agent_already_in_its_leaf_is_fine(tmp_path: Path) -> None:
    fake, agent = systemd_v2(mark="user.delegate", in_leaf=True)
    mgr = detect_v2(fake, proc_cgroup(tmp_path, f"0::/{UNIT}/agent\n"))
    assert fake.read_text(f"{ROOT}/{UNIT}/agent/cgroup.procs").split() == [str(agent)]
    group = mgr.create("shoal/c1", limits=Limits(), devices=())
    assert group.paths() == {"unified": f"{ROOT}/{UNIT}/shoal/c1"}


@pytest.mark.parametrize(
    ("mark", "own", "reason"),
    [
        (None, f"0::/{UNIT}\n", "is not delegated"),  # a unit without Delegate=yes
        ("trusted.delegate", "0::/\n", "root cgroup"),  # started by hand, outside any unit
        ("trusted.delegate", "0::/user.slice/user-0.slice/session-1.scope\n", "is not delegated"),
        ("trusted.delegate", "", "cannot tell which cgroup"),
    ],
)
def test_outside_a_delegated_unit_it_explains_and_changes_nothing(
    tmp_path: Path, mark: str | None, own: str, reason: str,
) -> None:
    fake, agent = systemd_v2(mark=mark)
    before = set(fake.groups)
    with pytest.raises(FailedPrecondition, match=reason) as refused:
        detect_v2(fake, proc_cgroup(tmp_path, own))
    assert "--cgroup-delegate" in str(refused.value)
    assert set(fake.groups) == before and fake.writes == []
    assert fake.read_text(f"{ROOT}/{UNIT}/cgroup.procs").split() == [str(agent)]


def test_v1_uses_the_units_path_in_every_hierarchy_and_moves_nothing(tmp_path: Path) -> None:
    fake = FakeCgroupFs()
    managed = ("cpu", "cpuacct", "memory", "devices", "pids")  # what systemd realizes for the unit
    for ctrl in (*managed, "cpuset", "freezer", "blkio"):
        fake.mount_v1(f"{ROOT}/{ctrl}", (ctrl,))
    fake.mount_v1(f"{ROOT}/systemd", ())
    fake.mount_v2(f"{ROOT}/unified", ())
    for hierarchy in (*managed, "systemd"):
        fake.mkdir(f"{ROOT}/{hierarchy}/system.slice")
        fake.mkdir(f"{ROOT}/{hierarchy}/{UNIT}")
    fake.set_xattr(f"{ROOT}/systemd/{UNIT}", "trusted.delegate", b"1")
    own = "".join(f"{i}:{c}:/{UNIT}\n" for i, c in enumerate(managed, start=2))
    own += f"9:cpuset:/\n8:freezer:/\n1:name=systemd:/{UNIT}\n0::/{UNIT}\n"
    before = set(fake.groups)
    mgr = detect.detect(mountinfo=FIXTURES / "mountinfo-v1-hybrid.txt", fs=fake, delegate=True,
                         proc_cgroup=proc_cgroup(tmp_path, own))
    assert mgr.version == 1

    group = mgr.create("shoal/c1", limits=Limits(memory_bytes=32 * MiB), devices=manager.DEFAULT_DEVICE_RULES)
    assert group.paths() == {
        c: f"{ROOT}/{c}/{UNIT}/shoal/c1" for c in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                                                     "pids")
    }
    # freezer and cpuset are not systemd's: the unit's path is made there, cpuset's cpus/mems inherited.
    for made in ("system.slice", UNIT):
        assert f"{ROOT}/freezer/{made}" in fake.groups
        assert fake.read_text(f"{ROOT}/cpuset/{made}/cpuset.cpus").strip() == "0-1"
    pid = fake.spawn()
    for path in group.procs_files():
        fake.write_text(path, str(pid))
    assert group.pids() == [pid]
    # Made: the unit's path where systemd had not (freezer, cpuset), and below the unit everywhere.
    made = {f"{ROOT}/{h}/{d}" for h in ("freezer", "cpuset") for d in ("system.slice", UNIT)}
    made |= {f"{ROOT}/{h}/{UNIT}/{d}" for h in (*managed, "freezer", "cpuset") for d in ("shoal", "shoal/c1")}
    assert set(fake.groups) - before == made
    # Written: only inside the unit's path (cpuset's parents get their inherited cpus and mems).
    outside = {path for path, _ in fake.writes if UNIT not in path}
    assert outside == {f"{ROOT}/cpuset/system.slice/cpuset.cpus", f"{ROOT}/cpuset/system.slice/cpuset.mems"}
    assert mgr.list_children("shoal") == ["shoal/c1"]
