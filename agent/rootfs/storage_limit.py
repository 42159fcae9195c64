"""The per-container writable-layer limit (``--storage-size``): how this host enforces it, and when a
measured layer is over it.

Two ways, chosen once per agent at start (``choose_enforcement``) and reported by ``GetHost`` and a log
line, like the kubelet's ``ephemeral-storage`` limit:

* **project quota** — where the filesystem holding the agent's root accounts *and* enforces project
  quotas (xfs mounted ``prjquota``; ext4 made with ``-O quota,project`` and mounted ``prjquota``) and
  the agent may set limits. A container with a limit gets a project id of its own on its upper and
  work dirs (both: overlayfs renames from work into upper, and a rename between projects fails with
  ``EXDEV``) and a hard block limit; a write past it fails with ``EDQUOT`` inside the container and
  nothing is killed. The probe sets and clears a limit on a scratch directory, so a kernel without
  quota support, a filesystem without the feature, an unprivileged agent or a mount without
  ``prjquota`` all fall back, each with its reason.
* **measured** — everywhere else. The usage sampler measures every limited layer each interval (see
  ``agent.usage.layer_size``) and a container found over its limit is killed with reason ``Evicted``
  (``over_limit`` gives the message); its restart policy then applies as to any exit.

Project ids are allocated above a base derived from the agent's root (two agents on one filesystem
start in different places) and an id is only taken if the kernel reports it unused — no usage and no
limit — so ids another tool or agent uses are skipped. A container's id lives on its directories
themselves (``FS_IOC_FSGETXATTR``), so nothing else has to remember it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar

from agent.linux import quota

log = logging.getLogger(__name__)
T = TypeVar("T")

# Project ids Shoal hands out: above what tools pick by hand (/etc/projid usually holds small numbers),
# within a signed 32-bit range so every tool can show them.
_ID_FLOOR = 1 << 24
_ID_SPAN = 1 << 30
_MAX_TRIES = 4096


class Enforcement(Enum):
    PROJECT_QUOTA = "project-quota"
    MEASURED = "measured"


class QuotaOps(Protocol):
    """The kernel calls the project-quota path makes (``agent.linux.quota``), so tests can fake them."""

    def quota_state(self, directory: Path) -> tuple[bool, bool]: ...
    def project_of(self, directory: Path) -> int: ...
    def set_project(self, directory: Path, project_id: int) -> None: ...
    def usage(self, directory: Path, project_id: int) -> quota.ProjectQuota: ...
    def set_limit(self, directory: Path, project_id: int, limit_bytes: int) -> None: ...


class KernelQuotaOps:
    """``QuotaOps`` on the real kernel: each call opens the directory itself, never through a link."""

    def quota_state(self, directory: Path) -> tuple[bool, bool]:
        return self._with(directory, quota.project_quota_state)

    def project_of(self, directory: Path) -> int:
        return self._with(directory, quota.project_of)

    def set_project(self, directory: Path, project_id: int) -> None:
        self._with(directory, lambda fd: quota.set_project(fd, project_id))

    def usage(self, directory: Path, project_id: int) -> quota.ProjectQuota:
        return self._with(directory, lambda fd: quota.get_project_quota(fd, project_id))

    def set_limit(self, directory: Path, project_id: int, limit_bytes: int) -> None:
        self._with(directory, lambda fd: quota.set_project_limit(fd, project_id, limit_bytes))

    @staticmethod
    def _with(directory: Path, call: Callable[[int], T]) -> T:
        fd = quota.open_dir(directory)
        try:
            return call(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class EnforcementChoice:
    mode: Enforcement
    detail: str  # why, for the log line and GetHost


def choose_enforcement(root: Path, *, ops: QuotaOps | None = None) -> EnforcementChoice:
    """Project quotas if the filesystem of ``root`` enforces them and a limit can be set and cleared on a
    scratch directory under it; else measurement, with the reason. Blocking."""
    ops = ops if ops is not None else KernelQuotaOps()
    try:
        accounted, enforced = ops.quota_state(root)
    except OSError as err:
        unsupported = err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL)
        why = ("this kernel or filesystem has no project quotas" if unsupported
               else "cannot query project quotas")
        return EnforcementChoice(Enforcement.MEASURED, f"{why} ({err.strerror or err})")
    if not enforced:
        how = "accounted but not enforced" if accounted else "off"
        return EnforcementChoice(Enforcement.MEASURED, f"project quotas are {how} on the filesystem of "
                                                       f"{root} (mount it with prjquota)")
    scratch = Path(tempfile.mkdtemp(prefix=".quota-probe-", dir=root))
    try:
        project_id = _probe_id(root)
        ops.set_project(scratch, project_id)
        ops.set_limit(scratch, project_id, 1 << 20)
        ops.set_limit(scratch, project_id, 0)
    except OSError as err:
        return EnforcementChoice(Enforcement.MEASURED, f"project quotas cannot be set here ({err})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return EnforcementChoice(Enforcement.PROJECT_QUOTA,
                             f"project quotas enforced on the filesystem of {root}")


def _probe_id(root: Path) -> int:
    return _ID_FLOOR - 1 - (zlib.crc32(os.fsencode(root)) & 0xFFFF)


class ProjectQuotas:
    """Gives containers' writable layers a project of their own with a hard limit. Thread-safe: creates
    and starts call it from worker threads."""

    def __init__(self, root: Path, *, ops: QuotaOps | None = None) -> None:
        self._ops = ops if ops is not None else KernelQuotaOps()
        self._root = root
        self._next = _ID_FLOOR + zlib.crc32(os.fsencode(root)) % _ID_SPAN
        self._lock = threading.Lock()

    def apply(self, *, upper: Path, work: Path, limit_bytes: int) -> int:
        """Limit what ``upper`` and ``work`` may hold together to ``limit_bytes``; return the project id.
        Idempotent: a layer that has its project already (a restart, an agent restart) keeps it."""
        with self._lock:
            project_id = self._ops.project_of(upper)
            if project_id == 0:
                project_id = self._allocate()
                self._ops.set_project(upper, project_id)
            if self._ops.project_of(work) != project_id:
                self._ops.set_project(work, project_id)
            self._ops.set_limit(upper, project_id, limit_bytes)
            return project_id

    def release(self, upper: Path) -> None:
        """Clear the limit of ``upper``'s project (before the layer is deleted), so its id is free again."""
        try:
            project_id = self._ops.project_of(upper)
            if project_id:
                self._ops.set_limit(upper, project_id, 0)
        except OSError as err:
            log.warning("could not clear the storage quota of %s: %s", upper, err)

    def _allocate(self) -> int:
        for _ in range(_MAX_TRIES):
            candidate = self._next
            self._next = _ID_FLOOR + (candidate + 1 - _ID_FLOOR) % _ID_SPAN
            used = self._ops.usage(self._root, candidate)
            if used.limit_bytes == 0 and used.used_bytes == 0 and used.inodes == 0:
                return candidate
        raise OSError(errno.ENOSPC, f"no free project id found in {_MAX_TRIES} tries")


def over_limit(used_bytes: int, limit_bytes: int | None) -> str | None:
    """The eviction message if a measured writable layer is over its limit, else ``None``."""
    if limit_bytes is None or used_bytes <= limit_bytes:
        return None
    return f"writable layer {size_text(used_bytes)} over its {size_text(limit_bytes)} storage limit"


def size_text(size: int) -> str:
    """``1.2G``, ``1G``, ``512M``, ``900K``: binary units, the way ``--storage-size`` is written."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return f"{size}B"


__all__ = ["Enforcement", "EnforcementChoice", "KernelQuotaOps", "ProjectQuotas", "QuotaOps",
           "choose_enforcement", "over_limit", "size_text"]
