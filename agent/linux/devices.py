"""A container's /dev: a small tmpfs holding only the allowed device nodes and the standard extras.

Layout (as runc's default): the nodes the plan lists (mknod'ed, or bind-mounted from the host node when
mknod is refused), a private devpts instance at /dev/pts with /dev/ptmx -> pts/ptmx, tmpfs /dev/shm,
mqueue at /dev/mqueue, and the /dev/fd, stdin, stdout, stderr symlinks into /proc/self/fd. Deliberately
no /dev/core (-> /proc/kcore). Called before pivot_root with the container root as a host path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import Protocol

from agent.linux import mounts, syscalls
from agent.linux.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID

SYMLINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)


class DeviceSpec(Protocol):
    """What this module needs of a device (``agent.runtime.plan.DeviceNode`` fits)."""

    @property
    def path(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def major(self) -> int: ...
    @property
    def minor(self) -> int: ...
    @property
    def mode(self) -> int: ...


def _create_node(host_path: str, device: DeviceSpec) -> None:
    kinds = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
    if device.kind not in kinds:
        raise syscalls.error(errno.EINVAL, f"device {device.path}: kind must be 'c' or 'b'")
    try:
        mode = kinds[device.kind] | (device.mode & 0o7777)
        os.mknod(host_path, mode, os.makedev(device.major, device.minor))
    except PermissionError:
        # Without CAP_MKNOD (or in a user namespace) the host's node can still be bound in.
        with syscalls.described(f"create {device.path}"):
            os.close(os.open(host_path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        mounts.bind(device.path, host_path)
    except OSError as exc:
        raise syscalls.error(exc.errno or 0, f"mknod {device.path}") from None


def populate_dev(root: str, devices: Iterable[DeviceSpec]) -> None:
    """Mount and fill ``root``/dev. The caller's umask must be 0 so node modes are exact."""
    dev = mounts.dir_in_root(root, "/dev")
    syscalls.mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536", what=f"mount tmpfs on {dev}")
    for device in devices:
        parts = device.path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "dev":
            raise syscalls.error(errno.EINVAL, f"device path {device.path!r} is not under /dev")
        parent = mounts.dir_in_root(root, "/".join(parts[:-1]))
        _create_node(f"{parent}/{parts[-1]}", device)

    pts = mounts.dir_in_root(root, "/dev/pts")
    syscalls.mount(
        "devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    shm = mounts.dir_in_root(root, "/dev/shm")
    syscalls.mount(
        "shm", shm, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=67108864",
    )
    mqueue = mounts.dir_in_root(root, "/dev/mqueue")
    syscalls.mount("mqueue", mqueue, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, link_target in SYMLINKS:
        link = f"{dev}/{name}"
        if os.path.lexists(link):  # the plan asked for a real node by that name: keep it
            continue
        with syscalls.described(f"symlink /dev/{name}"):
            os.symlink(link_target, link)
