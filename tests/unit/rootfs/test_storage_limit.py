"""Choosing how --storage-size is enforced, project-id allocation and the eviction message, over fake
quota calls (this kernel has no project quotas; the real calls are tested in
tests/integration/agent/test_storage_limit.py where the kernel allows)."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

import pytest

from agent.linux import quota
from agent.rootfs import storage_limit
from agent.rootfs.storage_limit import Enforcement


class FakeQuotas:
    """Projects on directories and per-project limits/usage, like the kernel keeps them."""

    def __init__(self, *, state: tuple[bool, bool] = (True, True), fail: dict[str, OSError] | None = None):
        self.state = state
        self.fail = fail or {}
        self.projects: dict[Path, int] = {}
        self.limits: dict[int, int] = {}
        self.used: dict[int, int] = {}

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail:
            raise self.fail[call]

    def quota_state(self, directory: Path) -> tuple[bool, bool]:
        self._maybe_fail("quota_state")
        return self.state

    def project_of(self, directory: Path) -> int:
        return self.projects.get(directory, 0)

    def set_project(self, directory: Path, project_id: int) -> None:
        self._maybe_fail("set_project")
        self.projects[directory] = project_id

    def usage(self, directory: Path, project_id: int) -> quota.ProjectQuota:
        return quota.ProjectQuota(limit_bytes=self.limits.get(project_id, 0),
                                  used_bytes=self.used.get(project_id, 0), inodes=0)

    def set_limit(self, directory: Path, project_id: int, limit_bytes: int) -> None:
        self._maybe_fail("set_limit")
        self.limits[project_id] = limit_bytes


@pytest.mark.parametrize(("ops", "detail"), [
    (FakeQuotas(fail={"quota_state": OSError(errno.ENOSYS, "Function not implemented")}),
     "this kernel or filesystem has no project quotas"),
    (FakeQuotas(state=(True, False)), "project quotas are accounted but not enforced"),
    (FakeQuotas(state=(False, False)), "project quotas are off"),
    (FakeQuotas(fail={"set_limit": OSError(errno.EPERM, "Operation not permitted")}),
     "project quotas cannot be set here"),
])
def test_measured_whenever_quotas_cannot_enforce_with_the_reason(tmp_path: Path, ops: FakeQuotas,
                                                                 detail: str) -> None:
    choice = storage_limit.choose_enforcement(tmp_path, ops=ops)
    assert choice.mode is Enforcement.MEASURED and detail in choice.detail
    assert list(tmp_path.iterdir()) == []  # the probe directory is gone


def test_project_quota_when_enforced_and_settable(tmp_path: Path) -> None:
    ops = FakeQuotas()
    choice = storage_limit.choose_enforcement(tmp_path, ops=ops)
    assert choice.mode is Enforcement.PROJECT_QUOTA
    assert set(ops.limits.values()) == {0}  # the probe cleared what it set
    assert list(tmp_path.iterdir()) == []


def test_ids_in_use_are_skipped_and_apply_is_idempotent(tmp_path: Path) -> None:
    ops = FakeQuotas()
    quotas = storage_limit.ProjectQuotas(tmp_path, ops=ops)
    first_candidate = quotas._next
    ops.used[first_candidate] = 4096  # someone else's project
    ops.limits[first_candidate + 1] = 1 << 20  # a limit without usage: also taken
    upper, work = tmp_path / "upper", tmp_path / "work"
    pid = quotas.apply(upper=upper, work=work, limit_bytes=8 << 20)
    assert pid == first_candidate + 2
    assert ops.projects == {upper: pid, work: pid} and ops.limits[pid] == 8 << 20
    assert quotas.apply(upper=upper, work=work, limit_bytes=8 << 20) == pid  # a restart keeps it
    other = quotas.apply(upper=tmp_path / "u2", work=tmp_path / "w2", limit_bytes=1 << 20)
    assert other != pid
    quotas.release(upper)
    assert ops.limits[pid] == 0


def test_two_agent_roots_start_allocating_in_different_places(tmp_path: Path) -> None:
    a = storage_limit.ProjectQuotas(tmp_path / "a", ops=FakeQuotas())
    b = storage_limit.ProjectQuotas(tmp_path / "b", ops=FakeQuotas())
    assert a._next != b._next


@pytest.mark.parametrize(("used", "limit", "message"), [
    (int(1.2 * (1 << 30)), 1 << 30, "writable layer 1.2G over its 1G storage limit"),
    (9 << 20, 8 << 20, "writable layer 9M over its 8M storage limit"),
    (8 << 20, 8 << 20, None),  # at the limit is within it
    (1 << 40, None, None),  # no limit
])
def test_over_limit(used: int, limit: int | None, message: str | None) -> None:
    assert storage_limit.over_limit(used, limit) == message


def test_kernel_structures_match_the_uapi_sizes() -> None:
    assert ctypes.sizeof(quota.IfDqblk) == 72  # linux/quota.h struct if_dqblk
    assert ctypes.sizeof(quota.FsQuotaStatV) == 160  # linux/dqblk_xfs.h struct fs_quota_statv
    assert quota.qcmd(quota.Q_SETQUOTA, quota.PRJQUOTA) == 0x80000802
    assert quota.qcmd(quota.Q_XGETQSTATV, quota.PRJQUOTA) == 0x580802


def test_this_kernel_answers_the_probe(tmp_path: Path) -> None:
    """Whatever the machine, the real probe answers with a mode and a reason, and leaves nothing."""
    choice = storage_limit.choose_enforcement(tmp_path)
    assert choice.mode in Enforcement and choice.detail
    assert list(tmp_path.iterdir()) == []
