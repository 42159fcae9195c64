"""Rooting the agent's cgroups in the subtree systemd delegated to its unit (``--cgroup-delegate``).

With ``Delegate=yes`` systemd hands a service the cgroup it runs in and everything below it, and stays
out of it; everything else in the tree is systemd's, and a manager that makes its own groups next to
systemd's (``/sys/fs/cgroup/<controller>/shoal``, the agent's default) steps on it. Under
``--cgroup-delegate`` the agent finds its own cgroup in ``/proc/self/cgroup``, checks that systemd marked
it as delegated (``trusted.delegate`` or ``user.delegate`` = ``1``, set by systemd ≥ 251 on the
cgroup of a ``Delegate=yes`` unit) and roots every group there: ``<unit cgroup>/<cgroup-parent>/<id>``.

cgroup v2 forbids processes in a group whose controllers are enabled for its children ("no internal
processes"). So before the unit's cgroup can hand cpu, memory and pids down to the containers' groups,
the processes in it (the agent; anything else of the unit's) move into a leaf, ``<unit>/agent``. The
supervisor the agent spawns afterwards starts there too, and containers join ``<unit>/<parent>/<id>``:
the whole of Shoal stays inside the delegated subtree. If systemd already started the agent in that
leaf (``DelegateSubgroup=agent``, systemd ≥ 254) the unit's cgroup is its parent.

On v1 (and hybrid hosts) there is no such rule and nothing moves: the unit's path, taken from systemd's
own hierarchy (``name=systemd``, or the unified one), is used in every controller hierarchy. systemd
manages cpu, cpuacct, memory, pids and devices there and leaves freezer and cpuset alone, so in those
two the same path is created as needed, as systemd's delegation documentation asks.

Everything here is blocking (it reads /proc and cgroupfs, and moves processes); it runs once at start.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.cgroups import manager, v2
from agent.cgroups.manager import CgroupFs, CgroupMount
from agent.errors import FailedPrecondition

# The leaf the agent process (and with it the supervisor it spawns) lives in on v2.
AGENT_LEAF = "agent"
# What systemd sets on the cgroup of a unit with Delegate=yes (the trusted one first, as systemd reads).
DELEGATION_MARKS = ("trusted.delegate", "user.delegate")
_SYSTEMD_HIERARCHY = "name=systemd"
_UNIFIED = ""


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/PID/cgroup`` → hierarchy → path. ``""`` is the unified hierarchy (``0::/x``); v1 lines
    give one entry per controller (``2:cpu,cpuacct:/x`` → ``cpu`` and ``cpuacct``); named hierarchies
    keep their ``name=`` (``name=systemd``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [_UNIFIED]:
            out[controller] = path
    return out


def read_proc_cgroup(path: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    try:
        return parse_proc_cgroup(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except OSError as err:
        raise manager.wrap_os_error(err, op="read", path=str(path)) from err


def _marked(fs: CgroupFs, directory: str) -> bool:
    for mark in DELEGATION_MARKS:
        try:
            if fs.getxattr(directory, mark) == b"1":
                return True
        except FileNotFoundError:
            return False  # not a cgroup in that hierarchy at all
        except OSError as err:
            raise manager.wrap_os_error(err, op=f"read {mark} of", path=directory) from err
    return False


def delegated_root(fs: CgroupFs, *, own: Mapping[str, str], mounts: Sequence[CgroupMount]) -> str:
    """The cgroup systemd delegated to this process's unit, as a relative path (``system.slice/x.service``).

    ``own`` is ``parse_proc_cgroup`` of this process. ``FailedPrecondition`` says why not when the process
    runs outside a delegated unit (started by hand, or a unit without ``Delegate=yes``)."""
    # Where systemd keeps its marks: its own v1 hierarchy on legacy/hybrid hosts, the unified one otherwise.
    places: list[tuple[str, str]] = []  # (mount point, this process's path there)
    for mount in mounts:
        if mount.version == 1 and mount.name == "systemd" and _SYSTEMD_HIERARCHY in own:
            places.append((mount.mountpoint, own[_SYSTEMD_HIERARCHY]))
        elif mount.version == 2 and _UNIFIED in own:
            places.append((mount.mountpoint, own[_UNIFIED]))
    if not places:
        raise FailedPrecondition(
            "--cgroup-delegate: cannot tell which cgroup systemd gave this agent: /proc/self/cgroup has no "
            "name=systemd or unified (0::) entry with a mounted hierarchy; drop --cgroup-delegate"
        )
    own_path = places[0][1].strip("/")
    if not own_path:
        raise FailedPrecondition(
            "--cgroup-delegate: the agent runs in the root cgroup, not in a systemd unit's: start it "
            "from deploy/systemd/shoal-agent.service (Delegate=yes), or drop --cgroup-delegate to create "
            "groups under --cgroup-parent at the top of each hierarchy"
        )
    candidates = [own_path]
    if posixpath.basename(own_path) == AGENT_LEAF and posixpath.dirname(own_path):
        # Already in the leaf: placed there by DelegateSubgroup=agent (or moved by an earlier agent).
        candidates.insert(0, posixpath.dirname(own_path))
    for candidate in candidates:
        for mountpoint, path in places:
            base = path.strip("/")
            if base != own_path:
                continue  # this hierarchy disagrees about where we are: not the one to trust
            if _marked(fs, posixpath.join(mountpoint, candidate)):
                return candidate
    raise FailedPrecondition(
        f"--cgroup-delegate: cgroup /{own_path} is not delegated to this agent (it carries no "
        f"{' or '.join(DELEGATION_MARKS)} = 1, which systemd sets for a unit with Delegate=yes since "
        "version 251): run the agent from a unit with Delegate=yes, or drop --cgroup-delegate"
    )


def enter_leaf_v2(fs: CgroupFs, *, mountpoint: str, root: str, leaf: str = AGENT_LEAF) -> str:
    """Move every process of ``<mountpoint>/<root>`` into ``<root>/<leaf>`` and enable the limit
    controllers for ``root``'s children; returns the leaf's directory. Idempotent."""
    unit = posixpath.join(mountpoint, root)
    target = posixpath.join(unit, leaf)
    if not fs.exists(target):
        with manager.os_errors(op="mkdir", path=target):
            fs.mkdir(target)
    procs = posixpath.join(unit, "cgroup.procs")
    moved: set[int] = set()
    # Until a read finds it empty: a process of the unit may fork while we move them (each write moves
    # one whole process, threads included).
    while True:
        with manager.os_errors(op="read", path=procs):
            pids = [int(p) for p in fs.read_text(procs).split()]
        pending = [p for p in pids if p not in moved]
        if not pending:
            break
        for pid in pending:
            moved.add(pid)
            try:
                fs.write_text(posixpath.join(target, "cgroup.procs"), str(pid))
            except ProcessLookupError:
                continue  # exited meanwhile
            except OSError as err:
                raise manager.wrap_os_error(err, op=f"move pid {pid} into", path=target) from err
    if pids:
        raise FailedPrecondition(
            f"--cgroup-delegate: processes {pids} stay in {unit} after being moved to {target}"
        )
    try:
        v2.enable_controllers(fs, unit, manager.LIMIT_CONTROLLERS)
    except manager.CgroupBusy as err:
        raise FailedPrecondition(
            f"--cgroup-delegate: cannot enable controllers for {unit}'s children: {err}"
        ) from err
    return target
