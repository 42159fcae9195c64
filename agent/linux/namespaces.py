"""Linux namespaces by name: creating them (unshare) and joining another process's (setns).

Names are Shoal's (``pid mount uts ipc net cgroup``); the kernel's ``/proc/PID/ns`` file names differ
for ``mount`` (``mnt``). User namespaces are deliberately absent: Shoal runs containers as real root
with a reduced capability set, like Docker without userns-remap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agent.linux import syscalls

FLAGS: dict[str, int] = {
    "pid": syscalls.CLONE_NEWPID,
    "mount": syscalls.CLONE_NEWNS,
    "uts": syscalls.CLONE_NEWUTS,
    "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET,
    "cgroup": syscalls.CLONE_NEWCGROUP,
}

PROC_NAMES: dict[str, str] = {
    "pid": "pid", "mount": "mnt", "uts": "uts", "ipc": "ipc", "net": "net", "cgroup": "cgroup",
}

# The order ``shoal exec`` joins in: mnt last, because after it /proc/PID paths of the host are gone,
# and pid early enough that only our future child is affected (setns(pid) never moves the caller).
JOIN_ORDER: tuple[str, ...] = ("ipc", "uts", "net", "cgroup", "pid", "mount")


def flags_for(names: Iterable[str]) -> int:
    """The OR of the clone flags for ``names``; ``ValueError`` names an unknown namespace."""
    flags = 0
    for name in names:
        try:
            flags |= FLAGS[name]
        except KeyError:
            raise ValueError(
                f"unknown namespace {name!r} (expected one of {', '.join(sorted(FLAGS))})"
            ) from None
    return flags


def unshare(names: Iterable[str]) -> None:
    """Create all of ``names`` in one ``unshare`` call (a new pid namespace applies to the next child)."""
    syscalls.unshare(flags_for(names))


def path_of(pid: int | str, name: str) -> str:
    return f"/proc/{pid}/ns/{PROC_NAMES[name]}"


def differs_from_own(pid: int, name: str) -> bool:
    """Whether process ``pid`` is in a different ``name`` namespace than the caller (by inode)."""
    with syscalls.described(f"stat {path_of(pid, name)}"):
        theirs = os.stat(path_of(pid, name))
    ours = os.stat(path_of("self", name))
    return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def open_fds(pid: int, names: Iterable[str]) -> list[tuple[str, int]]:
    """Open ``/proc/PID/ns/NAME`` for each name, all before any join (joining mnt hides host /proc)."""
    opened: list[tuple[str, int]] = []
    try:
        for name in names:
            with syscalls.described(f"open {path_of(pid, name)}"):
                opened.append((name, os.open(path_of(pid, name), os.O_RDONLY | os.O_CLOEXEC)))
    except BaseException:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def join(fd: int, name: str) -> None:
    syscalls.setns(fd, FLAGS[name], what=f"{name} namespace")
