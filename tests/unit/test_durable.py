"""agent.durable: atomic (and durable) replacement, full-disk errors, quarantine."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent import durable
from agent.errors import ResourceExhausted, ShoalError


def test_write_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old content that is longer")
    durable.write_file(target, '{"new": 1}', mode=0o640)
    assert target.read_text() == '{"new": 1}'
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temp file left


def test_write_without_sync_is_still_atomic_rename(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    durable.write_file(target, b"\x00\x01", sync=False)
    assert target.read_bytes() == b"\x00\x01"


def test_full_disk_is_resource_exhausted_and_leaves_no_temp(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(durable.os, "write", full)
    with pytest.raises(ResourceExhausted, match=r"record\.json.*No space left"):
        durable.write_file(tmp_path / "record.json", "x")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ShoalError, match=r"missing/record\.json") as info:
        durable.write_file(tmp_path / "missing" / "record.json", "x")
    assert not isinstance(info.value, ResourceExhausted)


def test_quarantine_moves_aside(tmp_path: Path) -> None:
    bad = tmp_path / "containers" / "abc"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{torn")
    moved = durable.quarantine(bad, into=tmp_path / "quarantine")
    assert not bad.exists()
    assert moved.parent == tmp_path / "quarantine" and moved.name.startswith("abc.")
    assert (moved / "config.json").read_text() == "{torn"
