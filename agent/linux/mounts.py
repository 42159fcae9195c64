"""Building a container's mount tree: overlay root, /proc, /sys, masking, read-only paths, pivot_root.

Everything here runs inside the container's own mount namespace (after ``/`` was made rprivate), so
nothing mounted here is visible on the host or outlives the container. Mount points are resolved
*inside* the container root while it is still an ordinary directory, so every path below the root is
walked component by component and a symlink is refused: an image must not be able to redirect a mount
(``/proc -> /host/etc``) onto the host.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from agent.linux import syscalls
from agent.linux.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

# The kernel copies mount data into one page; Docker switches to relative lower paths well before.
OVERLAY_RELATIVE_THRESHOLD = 3584
OVERLAY_MAX_OPTIONS = 4095

# statvfs f_flag bits → mount flags that a bind remount must repeat or it silently drops them.
_STATVFS_TO_MS: tuple[tuple[int, int], ...] = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, syscalls.MS_NOATIME),
    (os.ST_NODIRATIME, syscalls.MS_NODIRATIME),
    (os.ST_RELATIME, syscalls.MS_RELATIME),
)


@dataclass(frozen=True)
class OverlayOptions:
    """The data string for ``mount -t overlay`` and the directory relative lower paths are relative to
    (``None`` when the lower paths are absolute)."""

    data: str
    chdir: str | None


def overlay_options(lower: Sequence[str], *, upper: str, work: str) -> OverlayOptions:
    """Overlay mount data for ``lower`` (top-most first). Past ~3.5 KiB the lower paths are made
    relative to their common parent, as Docker does, so dozens of layers still fit in one page.

    ``ValueError`` if a path cannot be expressed in overlay options or the result still does not fit.
    """
    if not lower:
        raise ValueError("overlay needs at least one lower directory")
    for path in (*lower, upper, work):
        if not os.path.isabs(path):
            raise ValueError(f"overlay path {path!r} is not absolute")
        if any(c in path for c in ",:\n"):
            raise ValueError(f"overlay path {path!r} contains ',' or ':' which overlay options cannot hold")
    tail = f",upperdir={upper},workdir={work}"
    data = "lowerdir=" + ":".join(lower) + tail
    if len(data) <= OVERLAY_RELATIVE_THRESHOLD:
        return OverlayOptions(data, None)
    base = os.path.commonpath(lower)
    data = "lowerdir=" + ":".join(os.path.relpath(p, base) for p in lower) + tail
    if len(data) > OVERLAY_MAX_OPTIONS:
        raise ValueError(
            f"overlay options are {len(data)} bytes even with lower paths relative to {base} "
            f"(limit {OVERLAY_MAX_OPTIONS}): keep layer paths short"
        )
    return OverlayOptions(data, base)


def make_rprivate(path: str = "/") -> None:
    """Stop mount events propagating between this namespace and the host (pivot_root needs it too)."""
    syscalls.mount(None, path, None, MS_REC | MS_PRIVATE, what=f"make {path} rprivate")


def mount_overlay(lower: Sequence[str], *, upper: str, work: str, target: str) -> None:
    """Mount the overlay on ``target``; may change the working directory (relative lower paths).

    ``nodev``: device nodes in the image's layers, or made by the container in its writable layer, stay
    visible but cannot be opened through this mount — by the container, or by a host user who shares a
    container process's uid and reaches the root through ``/proc/PID/root``, where no device cgroup
    applies. The container's own devices live on the /dev tmpfs mounted over it."""
    options = overlay_options(lower, upper=upper, work=work)
    if options.chdir is not None:
        with syscalls.described(f"chdir {options.chdir}"):
            os.chdir(options.chdir)
    syscalls.mount("overlay", target, "overlay", MS_NODEV, options.data, what=f"mount overlay on {target}")


def _components(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise syscalls.error(errno.EINVAL, f"path {path!r} contains '..'")
    return parts


def dir_in_root(root: str, path: str, *, mode: int = 0o755) -> str:
    """Host path of directory ``path`` inside ``root``, creating missing components; a component that
    is a symlink or not a directory is refused with ``ENOTDIR``."""
    current = root
    for part in _components(path):
        current = f"{current}/{part}"
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            with syscalls.described(f"mkdir {current}"):
                os.mkdir(current, mode)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise syscalls.error(
                errno.ENOTDIR, f"{path} in the container root is not a directory (symlinks are refused)"
            )
    return current


def existing_in_root(root: str, path: str) -> tuple[str, os.stat_result] | None:
    """Host path and lstat of ``path`` inside ``root`` if it exists with no symlink on the way, else None.
    Used for masking paths in /proc and /sys, where missing entries are simply skipped."""
    parts = _components(path)
    current = root
    st: os.stat_result | None = None
    for i, part in enumerate(parts):
        current = f"{current}/{part}"
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode) or (i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode)):
            return None
    return (current, st) if st is not None else None


def mount_proc(root: str) -> None:
    """A fresh procfs for the container's pid namespace at ``root``/proc."""
    target = dir_in_root(root, "/proc")
    syscalls.mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_sys(root: str) -> None:
    """Read-only /sys: a new sysfs (shows the container's own network devices when it has a net
    namespace); if the kernel refuses that with EPERM, a recursive read-only bind of the host's /sys."""
    target = dir_in_root(root, "/sys")
    try:
        syscalls.mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except PermissionError:
        syscalls.mount("/sys", target, None, MS_BIND | MS_REC, what=f"bind /sys on {target}")
        make_readonly_recursive(target)


def bind(source: str, target: str, *, recursive: bool = False) -> None:
    flags = MS_BIND | (MS_REC if recursive else 0)
    syscalls.mount(source, target, None, flags, what=f"bind {source} on {target}")


def remount_readonly(target: str) -> None:
    """Make the mount at ``target`` read-only, repeating its nosuid/nodev/noexec/atime flags (a bind
    remount replaces all per-mount flags)."""
    with syscalls.described(f"statvfs {target}"):
        current = os.statvfs(target).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
    for st_bit, ms_bit in _STATVFS_TO_MS:
        if current & st_bit:
            flags |= ms_bit
    syscalls.mount(None, target, None, flags, what=f"remount {target} read-only")


def make_readonly_recursive(target: str) -> None:
    """Read-only for ``target`` and every mount below it, in one call (kernel ≥ 5.12)."""
    syscalls.mount_setattr(target, attr_set=syscalls.MOUNT_ATTR_RDONLY, recursive=True)


def mask(root: str, path: str, *, null_device: str = "/dev/null") -> None:
    """Hide ``path`` inside ``root``: /dev/null over a file, an empty read-only tmpfs over a directory.
    A path that does not exist (kernel without that file) is skipped."""
    found = existing_in_root(root, path)
    if found is None:
        return
    target, st = found
    if stat.S_ISDIR(st.st_mode):
        syscalls.mount("tmpfs", target, "tmpfs", MS_RDONLY, what=f"mask {path}")
    else:
        syscalls.mount(null_device, target, None, MS_BIND, what=f"mask {path}")


def make_path_readonly(root: str, path: str) -> None:
    """Bind ``path`` inside ``root`` onto itself and remount that bind read-only; skip if missing."""
    found = existing_in_root(root, path)
    if found is None:
        return
    target, _ = found
    bind(target, target, recursive=True)
    remount_readonly(target)


def pivot_into(new_root: str) -> None:
    """Make ``new_root`` (a mount point) the root and detach the old one. ``pivot_root(".", ".")``
    stacks the old root on top of the new one, so no put_old directory is needed in the image."""
    with syscalls.described(f"chdir {new_root}"):
        os.chdir(new_root)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", MNT_DETACH)
    os.chdir("/")
