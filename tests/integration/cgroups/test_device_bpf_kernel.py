"""cgroup v2 device rules against the real kernel: the BPF device program decides opens and mknods.

Shoal's build machines are v1 hybrid, but their cgroup2 mount (``/sys/fs/cgroup/unified``) still runs the
device programs attached to a process's v2 group, so this runs there as on a pure v2 host. Each check
starts a Python child, moves it into the group (as the launcher does), then lets it open and mknod device
nodes the test made in ``tmp_path`` and report each errno. The same probe run outside the group is the
control: what fails inside and works outside is the program's doing. Every group and every program is
checked gone at the end (the kernel frees a group's programs when the group is removed).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cgroups import device_bpf, manager, v2
from agent.cgroups.manager import DEFAULT_DEVICE_RULES, Cgroup, DeviceRule, Limits, RealCgroupFs
from agent.linux import bpf, bpf_asm

pytestmark = [pytest.mark.root, pytest.mark.integration]

# Reads a line (so it is inside the group before acting), runs each operation, prints errno names.
_PROBE = r"""
import errno, json, os, stat, sys
sys.stdin.readline()
out = {}
for name, op, path, arg in json.loads(sys.argv[1]):
    try:
        if op == "open":
            os.close(os.open(path, getattr(os, arg) | os.O_CLOEXEC))
        else:
            kind, major, minor = arg
            mode = (stat.S_IFBLK if kind == "b" else stat.S_IFCHR) | 0o600
            os.mknod(path, mode, os.makedev(major, minor))
            os.unlink(path)
        out[name] = "ok"
    except OSError as err:
        out[name] = errno.errorcode[err.errno]
print(json.dumps(out), flush=True)
"""

Op = tuple[str, str, str, object]


@dataclass
class Unified:
    manager: v2.V2CgroupManager
    mountpoint: str
    parent: str
    nodes: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    program_ids: set[int] = field(default_factory=set)

    def create(self, child: str, rules: tuple[DeviceRule, ...]) -> Cgroup:
        return self.manager.create(f"{self.parent}/{child}", limits=Limits(), devices=rules)

    def directory(self, group: Cgroup) -> str:
        return group.paths()["unified"]

    def programs(self, directory: str) -> list[int]:
        ids = bpf.attached_program_ids(directory)
        self.program_ids.update(ids)
        return ids

    def probe(self, ops: list[Op], *, inside: str | None) -> dict[str, str]:
        """Run ``ops`` in a child moved into the group directory ``inside`` (``None``: stay outside)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, json.dumps(ops)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        if inside is not None:
            Path(inside, "cgroup.procs").write_text(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=60)
        assert proc.returncode == 0, err
        result: dict[str, str] = json.loads(out)
        return result

    def node(self, name: str, kind: str, major: int, minor: int) -> str:
        path = self.nodes / name
        os.mknod(path, (stat.S_IFBLK if kind == "b" else stat.S_IFCHR) | 0o600, os.makedev(major, minor))
        return str(path)


def _remove_tree(fs: RealCgroupFs, d: str) -> None:
    for child in fs.listdir(d):
        _remove_tree(fs, os.path.join(d, child))
    fs.rmdir(d)


@pytest.fixture
def unified(tmp_path: Path) -> Iterator[Unified]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    mountinfo = Path("/proc/self/mountinfo").read_text()
    mounts = manager.parse_mountinfo(mountinfo, cgroup_root=Path("/sys/fs/cgroup"))
    points = sorted((m.mountpoint for m in mounts if m.version == 2), key=len)
    if not points:
        pytest.skip("no cgroup2 hierarchy mounted under /sys/fs/cgroup")
    try:
        os.close(bpf.load_device_program(bpf_asm.assemble(device_bpf.compile_rules(()))))
    except OSError as err:
        pytest.skip(f"this kernel cannot load a BPF_PROG_TYPE_CGROUP_DEVICE program: {err}")
    if os.statvfs(tmp_path).f_flag & os.ST_NODEV:
        pytest.skip(f"{tmp_path} is mounted nodev: its device nodes cannot be opened by anyone")
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    host = Unified(manager=v2.V2CgroupManager(fs=RealCgroupFs(), mountpoint=points[0]), mountpoint=points[0],
                   parent=f"shoal-test-{secrets.token_hex(4)}", nodes=nodes)
    try:
        yield host
    finally:
        for proc in host.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.communicate()
        top = os.path.join(host.mountpoint, host.parent)
        if os.path.exists(top):
            _remove_tree(RealCgroupFs(), top)
        assert not os.path.exists(top)
        # The kernel releases a removed group's programs from a work queue: poll, briefly.
        freed = manager.poll_until(lambda: not any(bpf.program_exists(i) for i in host.program_ids),
                                   timeout_s=10, clock=time.monotonic, sleep=time.sleep)
        assert freed, f"BPF programs {sorted(host.program_ids)} outlived their groups"


def _rule(allow: bool, kind: str, major: int | None = None, minor: int | None = None,
          access: str = "rwm") -> DeviceRule:
    return DeviceRule(allow=allow, kind=kind, major=major, minor=minor, access=access)


NULL_ONLY = (_rule(False, "a"), _rule(True, "c", 1, 3, "rw"))


def test_only_listed_devices_open_and_everything_else_is_eperm(unified: Unified) -> None:
    group = unified.create("null-only", NULL_ONLY)
    ops: list[Op] = [
        ("dev-null rw", "open", "/dev/null", "O_RDWR"),
        ("null copy rw", "open", unified.node("null", "c", 1, 3), "O_RDWR"),  # numbers count, not paths
        ("zero r", "open", unified.node("zero", "c", 1, 5), "O_RDONLY"),
        ("loop r", "open", unified.node("loop", "b", 7, 0), "O_RDONLY"),
        ("mknod null", "mknod", str(unified.nodes / "new-null"), ("c", 1, 3)),  # rw only: no m
        ("mknod disk", "mknod", str(unified.nodes / "sda"), ("b", 8, 0)),
    ]
    outside = unified.probe(ops, inside=None)
    assert outside["zero r"] == outside["mknod null"] == outside["mknod disk"] == "ok", outside
    inside = unified.probe(ops, inside=unified.directory(group))
    assert inside == {
        "dev-null rw": "ok", "null copy rw": "ok", "zero r": "EPERM", "loop r": "EPERM",
        "mknod null": "EPERM", "mknod disk": "EPERM",
    }
    assert len(unified.programs(unified.directory(group))) == 1


def test_the_default_rules_keep_the_basics_and_refuse_host_devices(unified: Unified) -> None:
    group = unified.create("defaults", DEFAULT_DEVICE_RULES)
    ops: list[Op] = [
        *[(name, "open", f"/dev/{name}", "O_RDWR") for name in ("null", "zero", "full", "urandom")],
        ("mknod null", "mknod", str(unified.nodes / "new-null"), ("c", 1, 3)),
        ("mem r", "open", unified.node("mem", "c", 1, 1), "O_RDONLY"),
        ("disk r", "open", unified.node("sda", "b", 8, 0), "O_RDONLY"),
        ("mknod disk", "mknod", str(unified.nodes / "sdb"), ("b", 8, 16)),
        ("mknod tun", "mknod", str(unified.nodes / "tun"), ("c", 10, 200)),
    ]
    inside = unified.probe(ops, inside=unified.directory(group))
    assert inside == {
        "null": "ok", "zero": "ok", "full": "ok", "urandom": "ok", "mknod null": "ok",
        "mem r": "EPERM", "disk r": "EPERM", "mknod disk": "EPERM", "mknod tun": "EPERM",
    }
    assert len(unified.programs(unified.directory(group))) == 1


def test_the_program_outlives_its_loader_binds_nested_groups_and_goes_with_it(unified: Unified) -> None:
    group = unified.create("life", NULL_ONLY)
    d = unified.directory(group)
    (prog_id,) = unified.programs(d)
    zero = unified.node("zero", "c", 1, 5)
    ops: list[Op] = [("zero r", "open", zero, "O_RDONLY")]

    # An agent restart: a new manager adopts the group; nothing is re-attached and the rules still hold.
    adopted = v2.V2CgroupManager(fs=RealCgroupFs(), mountpoint=unified.mountpoint).open(group.name)
    assert adopted is not None
    adopted.apply(Limits())
    assert unified.programs(d) == [prog_id]
    assert unified.probe(ops, inside=d) == {"zero r": "EPERM"}

    # A group the container makes inside its own is bound by the ancestor's program, even if it attaches
    # an allow-all program of its own (BPF_F_ALLOW_MULTI: every program on the path must allow).
    inner = os.path.join(d, "inner")
    os.mkdir(inner)
    assert unified.probe(ops, inside=inner) == {"zero r": "EPERM"}
    device_bpf.KernelDeviceFilter().attach(inner, device_bpf.compile_rules([_rule(True, "a")]))
    assert len(unified.programs(inner)) == 1
    assert unified.probe(ops, inside=inner) == {"zero r": "EPERM"}
    os.rmdir(inner)

    group.remove()
    assert manager.poll_until(lambda: not bpf.program_exists(prog_id), timeout_s=10,
                              clock=time.monotonic, sleep=time.sleep)


def test_attaching_again_replaces_the_groups_program(unified: Unified) -> None:
    group = unified.create("swap", NULL_ONLY)
    d = unified.directory(group)
    (first,) = unified.programs(d)
    zero = unified.node("zero", "c", 1, 5)
    ops: list[Op] = [("zero r", "open", zero, "O_RDONLY"), ("null rw", "open", "/dev/null", "O_RDWR")]
    rules = (_rule(False, "a"), _rule(True, "c", 1, 5, "r"))
    device_bpf.KernelDeviceFilter().attach(d, device_bpf.compile_rules(rules))
    (second,) = unified.programs(d)
    assert second != first
    assert unified.probe(ops, inside=d) == {"zero r": "ok", "null rw": "EPERM"}
    assert manager.poll_until(lambda: not bpf.program_exists(first), timeout_s=10,
                              clock=time.monotonic, sleep=time.sleep)


@pytest.mark.parametrize(
    "rules",
    [
        (),
        DEFAULT_DEVICE_RULES,
        (_rule(True, "a"),),
        (_rule(True, "a"), _rule(False, "b", 8, None, "w")),
        (_rule(False, "a"), _rule(True, "c", None, None, "m"), _rule(True, "b", 7, None, "rw")),
    ],
    ids=["deny-all", "defaults", "allow-all", "allow-all-but-disk-writes", "wildcards"],
)
def test_the_verifier_accepts_every_program_shape(rules: tuple[DeviceRule, ...]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        fd = bpf.load_device_program(bpf_asm.assemble(device_bpf.compile_rules(rules)))
    except PermissionError as err:
        if "verifier" in str(err):
            raise
        pytest.skip(f"this kernel cannot load a BPF_PROG_TYPE_CGROUP_DEVICE program: {err}")
    os.close(fd)


def test_a_program_the_verifier_refuses_reports_its_log() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(OSError, match=r"verifier: .*R0 !read_ok"):
        bpf.load_device_program(bpf_asm.assemble([bpf_asm.exit_()]))  # returns an unset r0
