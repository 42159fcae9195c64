"""``--cgroup-delegate`` on the real kernel, with a test-created group standing in for the unit's cgroup.

systemd is not run here. Instead each test makes ``shoal-test-<random>/fake-unit.service`` where systemd
would have made the unit's cgroup (every hierarchy systemd manages on v1; the unified one on v2), marks it
``trusted.delegate`` as systemd does for ``Delegate=yes``, and hands the logic a ``/proc/self/cgroup``
text saying the agent runs there. Real processes play the agent, its supervisor and the containers; the
test process itself is never moved. Everything made is removed, and the tests check that.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cgroups import delegation, detect, leftovers, manager, v2
from agent.cgroups.manager import DEFAULT_DEVICE_RULES, Limits, RealCgroupFs
from agent.errors import FailedPrecondition

pytestmark = [pytest.mark.root, pytest.mark.integration]

CGROUP = Path("/sys/fs/cgroup")
MiB = 1 << 20
# What systemd realizes for a Delegate=yes unit on v1 (it leaves freezer and cpuset alone).
SYSTEMD_V1 = ("cpu", "cpuacct", "memory", "pids", "devices")


@dataclass
class FakeUnit:
    """``<top>/fake-unit.service`` in some hierarchies, and the processes a test started."""

    top: str = field(default_factory=lambda: f"shoal-test-{secrets.token_hex(4)}")
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"{self.top}/fake-unit.service"

    def make_in(self, mountpoint: str, *, mark: bool = False) -> None:
        for d in (f"{mountpoint}/{self.top}", f"{mountpoint}/{self.path}"):
            os.mkdir(d)
            if mountpoint.endswith("/cpuset"):
                for name in ("cpuset.cpus", "cpuset.mems"):
                    Path(d, name).write_text(Path(os.path.dirname(d), name).read_text())
        if mark:
            os.setxattr(f"{mountpoint}/{self.path}", "trusted.delegate", b"1")

    def start(self, code: str = "import sys; sys.stdin.readline()") -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.communicate()
        # Deepest first, in every hierarchy: groups the test or the code under test made.
        for d in sorted(glob.glob(f"{CGROUP}/*/{self.top}/**/", recursive=True) +
                        glob.glob(f"{CGROUP}/{self.top}/**/", recursive=True), key=len, reverse=True):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(d)
        assert glob.glob(f"{CGROUP}/*/{self.top}") + glob.glob(f"{CGROUP}/{self.top}") == []


@pytest.fixture
def unit() -> Iterator[FakeUnit]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    fake = FakeUnit()
    try:
        yield fake
    finally:
        fake.cleanup()


def _mounts() -> list[manager.CgroupMount]:
    return manager.parse_mountinfo(Path("/proc/self/mountinfo").read_text(), cgroup_root=CGROUP)


def _cgroup_of(pid: int) -> dict[str, str]:
    return delegation.parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())


def test_v1_groups_are_rooted_in_the_units_cgroup_of_every_hierarchy(unit: FakeUnit, tmp_path: Path) -> None:
    mounts = _mounts()
    v1_mounts = {c: m.mountpoint for m in mounts if m.version == 1 for c in m.controllers}
    systemd = next((m.mountpoint for m in mounts if m.name == "systemd"), None)
    missing = [c for c in (*SYSTEMD_V1, "freezer", "cpuset") if c not in v1_mounts]
    if missing or systemd is None:
        pytest.skip(f"needs the v1 hierarchies {missing} and name=systemd")
    for controller in SYSTEMD_V1:
        unit.make_in(v1_mounts[controller])
    unit.make_in(systemd, mark=True)
    own = "".join(f"{i}:{c}:/{unit.path}\n" for i, c in enumerate(SYSTEMD_V1, start=2))
    own += f"10:freezer:/\n11:cpuset:/\n1:name=systemd:/{unit.path}\n"
    (tmp_path / "cgroup").write_text(own)

    mgr = detect.detect(delegate=True, proc_cgroup=tmp_path / "cgroup")
    assert mgr.version == 1
    limits = Limits(memory_bytes=32 * MiB, pids_max=16)
    group = mgr.create("shoal/c1", limits=limits, devices=DEFAULT_DEVICE_RULES)
    for controller, d in group.paths().items():
        assert d == f"{v1_mounts[controller]}/{unit.path}/shoal/c1"
    container = unit.start()
    for path in group.procs_files():  # what the launcher does
        Path(path).write_text(str(container.pid))
    placed = _cgroup_of(container.pid)
    for controller in (*SYSTEMD_V1, "freezer", "cpuset"):
        assert placed[controller] == f"/{unit.path}/shoal/c1", controller
    assert Path(group.paths()["memory"], "memory.limit_in_bytes").read_text().strip() == str(32 * MiB)

    # A crash's leftover inside the delegated subtree is collected; the known container stays.
    ghost = mgr.create("shoal/ghost", limits=Limits(), devices=DEFAULT_DEVICE_RULES)
    orphan = unit.start()
    for path in ghost.procs_files():
        Path(path).write_text(str(orphan.pid))
    collected = leftovers.collect_leftovers(mgr, "shoal", keep_ids=["c1"])
    assert collected.removed == ("shoal/ghost",) and collected.failed == ()
    assert orphan.wait(10) == -signal.SIGKILL
    assert group.pids() == [container.pid]

    group.kill_all()
    group.remove()
    assert mgr.remove_parent_if_empty("shoal")
    assert not glob.glob(f"{CGROUP}/*/shoal/c1")  # nothing was ever made at the hierarchy top


def test_v2_agent_moves_into_a_leaf_and_its_children_stay_in_the_subtree(unit: FakeUnit) -> None:
    unified = sorted((m.mountpoint for m in _mounts() if m.version == 2), key=len)
    if not unified:
        pytest.skip("no cgroup2 hierarchy mounted")
    mountpoint = unified[0]
    fs = RealCgroupFs()
    unit.make_in(mountpoint, mark=True)
    # The "agent": once told, it spawns its "supervisor" (which inherits its cgroup) and reports its pid.
    agent = unit.start(
        "import subprocess, sys\nsys.stdin.readline()\n"
        "child = subprocess.Popen(['sleep', '600'])\nprint(child.pid, flush=True)\nsys.stdin.readline()\n"
        "child.kill()\n"
    )
    Path(mountpoint, unit.path, "cgroup.procs").write_text(str(agent.pid))

    root = delegation.delegated_root(fs, own={"": f"/{unit.path}"}, mounts=_mounts())
    assert root == unit.path
    leaf = delegation.enter_leaf_v2(fs, mountpoint=mountpoint, root=root)
    assert leaf == f"{mountpoint}/{unit.path}/agent"
    assert _cgroup_of(agent.pid)[""] == f"/{unit.path}/agent"
    assert Path(mountpoint, unit.path, "cgroup.procs").read_text() == ""
    assert delegation.enter_leaf_v2(fs, mountpoint=mountpoint, root=root) == leaf  # idempotent

    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write("spawn\n")
    agent.stdin.flush()
    supervisor = int(agent.stdout.readline())
    assert _cgroup_of(supervisor)[""] == f"/{unit.path}/agent"

    mgr = v2.V2CgroupManager(fs=fs, mountpoint=mountpoint, root=root)
    group = mgr.create("shoal/c1", limits=Limits(), devices=())
    assert group.paths() == {"unified": f"{mountpoint}/{unit.path}/shoal/c1"}
    container = unit.start()
    Path(group.procs_files()[0]).write_text(str(container.pid))
    assert _cgroup_of(container.pid)[""] == f"/{unit.path}/shoal/c1"
    group.kill_all()
    assert container.wait(10) == -signal.SIGKILL
    group.remove()
    assert mgr.remove_parent_if_empty("shoal")
    agent.stdin.write("done\n")
    agent.stdin.flush()
    assert agent.wait(10) == 0


def test_an_unmarked_group_is_refused_and_left_alone(unit: FakeUnit) -> None:
    unified = sorted((m.mountpoint for m in _mounts() if m.version == 2), key=len)
    if not unified:
        pytest.skip("no cgroup2 hierarchy mounted")
    unit.make_in(unified[0])  # a unit without Delegate=yes: no mark
    squatter = unit.start()
    Path(unified[0], unit.path, "cgroup.procs").write_text(str(squatter.pid))
    with pytest.raises(FailedPrecondition, match="is not delegated"):
        delegation.delegated_root(RealCgroupFs(), own={"": f"/{unit.path}"}, mounts=_mounts())
    assert _cgroup_of(squatter.pid)[""] == f"/{unit.path}"
    assert not Path(unified[0], unit.path, "agent").exists()


def test_the_agent_refuses_cgroup_delegate_outside_a_delegated_unit(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    sock = tmp_path / "agent.sock"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--root", str(tmp_path / "root"), "--listen", f"unix://{sock}",
         "--cgroup-parent", f"shoal-test-{secrets.token_hex(4)}", "--cgroup-delegate"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal-agent: --cgroup-delegate: ") and "Traceback" not in done.stderr
    assert not sock.exists()
