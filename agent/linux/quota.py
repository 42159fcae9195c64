"""Project quotas: a directory's project id (``FS_IOC_FSGETXATTR``/``FSSETXATTR``) and the kernel's
per-project block limits (``quotactl_fd``), the way ext4 (``-O quota,project``, mounted ``prjquota``)
and xfs (mounted ``prjquota``) cap a directory tree's size.

A directory given a project id with ``FS_XFLAG_PROJINHERIT`` passes the id to everything created
below it, and the filesystem charges every block of those files to the project; once a project's
usage would pass its hard limit, the write fails with ``EDQUOT`` — unless the writer holds
``CAP_SYS_RESOURCE`` (``ignore_hardlimit`` in fs/quota/dquot.c), which Docker's default capability set
and Shoal's do not grant. Setting a limit (``Q_SETQUOTA``) needs ``CAP_SYS_ADMIN``; setting a project
id needs ``CAP_FOWNER`` or ownership and the initial user namespace.

``quotactl_fd`` (Linux 5.14) takes a descriptor of any file on the filesystem, so no block device has
to be found. Structures are the kernel's UAPI (``linux/fs.h``, ``linux/quota.h``,
``linux/dqblk_xfs.h``), identical on x86_64 and aarch64. ``Q_SETQUOTA``/``Q_GETQUOTA`` (the generic
interface) work for xfs too: the kernel translates them to its own.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from dataclasses import dataclass

from agent.linux.syscalls import check, libc

# ioctls on a file or directory (linux/fs.h): struct fsxattr is five u32 and 8 bytes of padding.
_FSXATTR = struct.Struct("=IIIII8x")
FS_IOC_FSGETXATTR = 0x801C581F  # _IOR('X', 31, struct fsxattr)
FS_IOC_FSSETXATTR = 0x401C5820  # _IOW('X', 32, struct fsxattr)
FS_XFLAG_PROJINHERIT = 0x00000200

_NR_QUOTACTL_FD = 443  # the same on x86_64 and aarch64 (allocated after the tables were unified)

PRJQUOTA = 2
Q_GETQUOTA = 0x800007
Q_SETQUOTA = 0x800008
Q_XGETQSTATV = (ord("X") << 8) + 8
QIF_BLIMITS = 1
QIF_ILIMITS = 4
QIF_LIMITS = QIF_BLIMITS | QIF_ILIMITS
QIF_DQBLKSIZE = 1024  # if_dqblk block limits are in 1 KiB units; curspace is in bytes

# fs_quota_statv flags (linux/dqblk_xfs.h): project accounting on, and limits enforced.
FS_QUOTA_PDQ_ACCT = 1 << 4
FS_QUOTA_PDQ_ENFD = 1 << 5
FS_QSTATV_VERSION1 = 1


def qcmd(cmd: int, qtype: int) -> int:
    """``QCMD(cmd, type)`` from linux/quota.h."""
    return (cmd << 8) | (qtype & 0x00FF)


class IfDqblk(ctypes.Structure):
    """``struct if_dqblk``: one id's limits and usage (block limits in ``QIF_DQBLKSIZE`` units)."""

    _fields_ = [
        ("dqb_bhardlimit", ctypes.c_uint64),
        ("dqb_bsoftlimit", ctypes.c_uint64),
        ("dqb_curspace", ctypes.c_uint64),
        ("dqb_ihardlimit", ctypes.c_uint64),
        ("dqb_isoftlimit", ctypes.c_uint64),
        ("dqb_curinodes", ctypes.c_uint64),
        ("dqb_btime", ctypes.c_uint64),
        ("dqb_itime", ctypes.c_uint64),
        ("dqb_valid", ctypes.c_uint32),
    ]


class _QFileStatV(ctypes.Structure):
    _fields_ = [("qfs_ino", ctypes.c_uint64), ("qfs_nblks", ctypes.c_uint64),
                ("qfs_nextents", ctypes.c_uint32), ("qfs_pad", ctypes.c_uint32)]


class FsQuotaStatV(ctypes.Structure):
    """``struct fs_quota_statv``: which quota types are accounted and enforced."""

    _fields_ = [
        ("qs_version", ctypes.c_int8),
        ("qs_pad1", ctypes.c_uint8),
        ("qs_flags", ctypes.c_uint16),
        ("qs_incoredqs", ctypes.c_uint32),
        ("qs_uquota", _QFileStatV),
        ("qs_gquota", _QFileStatV),
        ("qs_pquota", _QFileStatV),
        ("qs_btimelimit", ctypes.c_int32),
        ("qs_itimelimit", ctypes.c_int32),
        ("qs_rtbtimelimit", ctypes.c_int32),
        ("qs_bwarnlimit", ctypes.c_uint16),
        ("qs_iwarnlimit", ctypes.c_uint16),
        ("qs_rtbwarnlimit", ctypes.c_uint16),
        ("qs_pad3", ctypes.c_uint16),
        ("qs_pad4", ctypes.c_uint32),
        ("qs_pad2", ctypes.c_uint64 * 7),
    ]


@dataclass(frozen=True)
class ProjectQuota:
    """One project's hard block limit (0 = none) and its current usage, in bytes."""

    limit_bytes: int
    used_bytes: int
    inodes: int


def project_of(fd: int) -> int:
    """The project id of the open file or directory ``fd`` (0 = none)."""
    buf = bytearray(_FSXATTR.size)
    fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
    return int(_FSXATTR.unpack(buf)[3])


def set_project(fd: int, project_id: int) -> None:
    """Give the directory ``fd`` ``project_id``, inherited by everything created below it. Its own
    existing entries keep theirs, so call it on an empty directory."""
    buf = bytearray(_FSXATTR.size)
    fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
    xflags, extsize, nextents, _old, cowextsize = _FSXATTR.unpack(buf)
    fcntl.ioctl(fd, FS_IOC_FSSETXATTR,
                bytearray(_FSXATTR.pack(xflags | FS_XFLAG_PROJINHERIT, extsize, nextents, project_id,
                                        cowextsize)))


def _quotactl_fd(fd: int, cmd: int, qid: int, addr: ctypes._CData | None, what: str) -> None:
    ret = libc.syscall(_NR_QUOTACTL_FD, ctypes.c_uint(fd), ctypes.c_uint(cmd), ctypes.c_int(qid),
                       ctypes.byref(addr) if addr is not None else None)
    check(int(ret), what)


def project_quota_state(fd: int) -> tuple[bool, bool]:
    """(accounted, enforced) for project quotas on the filesystem of ``fd``. Raises ``OSError``
    (``ENOSYS`` before Linux 5.14, ``ENOSYS``/``EOPNOTSUPP`` where the filesystem or kernel build has
    no quota support)."""
    statv = FsQuotaStatV()
    statv.qs_version = FS_QSTATV_VERSION1
    _quotactl_fd(fd, qcmd(Q_XGETQSTATV, PRJQUOTA), 0, statv, "quotactl Q_XGETQSTATV (project)")
    return bool(statv.qs_flags & FS_QUOTA_PDQ_ACCT), bool(statv.qs_flags & FS_QUOTA_PDQ_ENFD)


def get_project_quota(fd: int, project_id: int) -> ProjectQuota:
    dq = IfDqblk()
    _quotactl_fd(fd, qcmd(Q_GETQUOTA, PRJQUOTA), project_id, dq, f"quotactl Q_GETQUOTA project {project_id}")
    return ProjectQuota(limit_bytes=int(dq.dqb_bhardlimit) * QIF_DQBLKSIZE, used_bytes=int(dq.dqb_curspace),
                        inodes=int(dq.dqb_curinodes))


def set_project_limit(fd: int, project_id: int, limit_bytes: int) -> None:
    """Set ``project_id``'s hard (and soft) block limit to ``limit_bytes`` rounded up to 1 KiB; 0 removes
    the limit. Inode limits are cleared."""
    blocks = -(-limit_bytes // QIF_DQBLKSIZE)
    dq = IfDqblk(dqb_bhardlimit=blocks, dqb_bsoftlimit=blocks, dqb_valid=QIF_LIMITS)
    _quotactl_fd(fd, qcmd(Q_SETQUOTA, PRJQUOTA), project_id, dq, f"quotactl Q_SETQUOTA project {project_id}")


def open_dir(path: str | os.PathLike[str]) -> int:
    """A descriptor of the directory ``path`` itself (never through a symlink), for the calls above."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


__all__ = [
    "FS_XFLAG_PROJINHERIT", "FsQuotaStatV", "IfDqblk", "ProjectQuota", "get_project_quota", "open_dir",
    "project_of", "project_quota_state", "qcmd", "set_project", "set_project_limit",
]
