"""``detect()``: the one factory that picks the cgroup implementation for this host.

It reads the mount table, prefers v2 when its mount offers cpu, memory and pids, and otherwise uses v1
with each controller's own mount (co-mounted ``cpu,cpuacct`` included). With ``delegate=True`` it roots
the manager in the cgroup systemd delegated to the agent's unit (``agent.cgroups.delegation``). It lives
apart from ``agent.cgroups.manager`` (the contract) because it imports the implementations, which import
the contract: one direction only, no cycle.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.cgroups import delegation, device_bpf, v1, v2
from agent.cgroups.manager import (
    LIMIT_CONTROLLERS,
    CgroupFs,
    CgroupManager,
    CgroupMount,
    RealCgroupFs,
    parse_mountinfo,
    wrap_os_error,
)
from agent.errors import FailedPrecondition

log = logging.getLogger("shoal.cgroups")


def detect(
    *,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
    fs: CgroupFs | None = None,
    delegate: bool = False,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    device_filter: device_bpf.DeviceFilter | None = None,
) -> CgroupManager:
    """Pick the implementation for this host from its mount table. Blocking (reads /proc and cgroupfs).

    cgroup v2 wins if a cgroup2 mount under ``cgroup_root`` offers all of ``cpu``, ``memory`` and
    ``pids`` in its ``cgroup.controllers`` (pure "unified" hosts, and hybrid hosts whose controllers
    are bound to v2). Otherwise v1 is used with each controller's own mount point (``cpu`` and
    ``cpuacct`` may be separate mounts or one ``cpu,cpuacct`` mount). A host with only a cgroup2 mount
    short of controllers still gets v2: limits it cannot enforce fail on ``apply``.
    ``FailedPrecondition`` if there is no cgroup mount at all.

    ``delegate``: root every group in the cgroup systemd delegated to this process's unit, found from
    ``proc_cgroup`` (see ``agent.cgroups.delegation``; ``FailedPrecondition`` explains when the process
    does not run in a delegated unit). On v2 this *moves the calling process* (and anything else in the
    unit's cgroup) into the leaf ``<unit>/agent`` and enables the controllers for the unit's subtree;
    children it spawns afterwards (the supervisor) start in that leaf too.

    ``device_filter``: how a v2 manager attaches device programs (default: bpf(2); tests pass a fake)."""
    real_fs: CgroupFs = fs if fs is not None else RealCgroupFs()
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise wrap_os_error(err, op="read", path=str(mountinfo)) from err
    mounts = parse_mountinfo(text, cgroup_root=cgroup_root)
    unified = [m for m in mounts if m.version == 2]
    # The mount at the root itself is the unified one on pure v2 hosts; prefer it.
    unified.sort(key=lambda m: len(m.mountpoint))
    v1_mounts: dict[str, str] = {}
    for m in mounts:
        if m.version == 1:
            for ctrl in m.controllers:
                v1_mounts.setdefault(ctrl, m.mountpoint)
    chosen: CgroupMount | None = None  # the unified mount to use, if v2
    for m in unified:
        if set(LIMIT_CONTROLLERS) <= v2.read_controllers(real_fs, m.mountpoint):
            chosen = m
            break
    if chosen is None and not v1_mounts:
        if not unified:
            raise FailedPrecondition(f"no cgroup file system is mounted under {cgroup_root}")
        chosen = unified[0]
    root = ""
    if delegate:
        root = delegation.delegated_root(real_fs, own=delegation.read_proc_cgroup(proc_cgroup), mounts=mounts)
        if chosen is not None:
            leaf = delegation.enter_leaf_v2(real_fs, mountpoint=chosen.mountpoint, root=root)
            log.info("cgroups: rooted in the delegated %s; this process moved to %s", root, leaf)
        else:
            log.info("cgroups: rooted in the delegated %s in every v1 hierarchy", root)
    if chosen is not None:
        return v2.V2CgroupManager(fs=real_fs, mountpoint=chosen.mountpoint, root=root,
                                  device_filter=device_filter)
    return v1.V1CgroupManager(fs=real_fs, mounts=v1_mounts, root=root)
