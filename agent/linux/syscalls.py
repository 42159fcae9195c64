"""Raw Linux system calls that Python 3.11's ``os`` module lacks, bound through ctypes.

This is the one place that loads libc. Every wrapper checks the return value and raises ``OSError``
whose ``errno`` is the kernel's and whose ``strerror`` already names the call and the path
(``"mount overlay on /x: Invalid argument"``), so callers can show it to a user unchanged. The
wrappers are plain ctypes calls with no locks or allocation beyond argument encoding, which keeps them
usable between ``fork()`` and ``execve()``. Constants are the x86_64/aarch64 ABI values.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

# umount2(2) flags.
MNT_DETACH = 0x2

# clone(2)/unshare(2)/setns(2) namespace flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# prctl(2) options.
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# mount_setattr(2).
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# Syscalls glibc 2.36 does not wrap (or wraps only recently); numbers differ per architecture.
_SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "mount_setattr": 442, "bpf": 321},
    "aarch64": {"pivot_root": 41, "mount_setattr": 442, "bpf": 280},
}
_NR = _SYSCALL_NUMBERS.get(platform.machine(), _SYSCALL_NUMBERS["x86_64"])

libc = ctypes.CDLL("libc.so.6", use_errno=True)

_c_str = ctypes.c_char_p
libc.mount.argtypes = [_c_str, _c_str, _c_str, ctypes.c_ulong, ctypes.c_void_p]
libc.mount.restype = ctypes.c_int
libc.umount2.argtypes = [_c_str, ctypes.c_int]
libc.umount2.restype = ctypes.c_int
libc.unshare.argtypes = [ctypes.c_int]
libc.unshare.restype = ctypes.c_int
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.setns.restype = ctypes.c_int
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int
libc.sethostname.argtypes = [_c_str, ctypes.c_size_t]
libc.sethostname.restype = ctypes.c_int
libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def error(err: int, what: str) -> OSError:
    """An ``OSError`` for ``err`` whose message says ``what`` failed (``OSError`` picks the subclass)."""
    return OSError(err, f"{what}: {os.strerror(err)}")


def check(ret: int, what: str) -> int:
    """Raise ``error(errno, what)`` if a libc call returned -1; otherwise pass the result through."""
    if ret < 0:
        raise error(ctypes.get_errno(), what)
    return ret


@contextlib.contextmanager
def described(what: str) -> Iterator[None]:
    """Re-raise an ``os.*`` failure inside the block as ``error(errno, what)`` so it names the step."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise error(exc.errno, what) from None


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None, *,
    what: str | None = None,
) -> None:
    label = what or f"mount {fstype or source or 'remount'} on {target}"
    raw = _b(data)
    check(libc.mount(_b(source), _b(target), _b(fstype), flags, raw), label)


def umount2(target: str, flags: int = 0) -> None:
    check(libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    check(int(libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old))), f"pivot_root {new_root}")


def mount_setattr(path: str, *, attr_set: int, attr_clr: int = 0, recursive: bool = False) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    ret = libc.syscall(
        _NR["mount_setattr"], ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags),
        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    check(int(ret), f"mount_setattr {path}")


def bpf(cmd: int, attr: ctypes.Structure, *, what: str) -> int:
    """bpf(2) with ``attr`` (a ``union bpf_attr`` prefix; the kernel zero-fills the rest); its result."""
    ret = libc.syscall(
        _NR["bpf"], ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    return check(int(ret), what)


def unshare(flags: int) -> None:
    check(libc.unshare(flags), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int, *, what: str) -> None:
    check(libc.setns(fd, nstype), f"setns {what}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0, *, what: str) -> int:
    return check(libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl {what}")


def sethostname(name: str) -> None:
    raw = name.encode()
    check(libc.sethostname(raw, len(raw)), f"sethostname {name!r}")
