"""The agent's root is made private at start, whatever existed before (issue 12, finding 8)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent import private_root
from agent.errors import FailedPrecondition


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_pre_created_open_root_becomes_0700_and_its_top_level_private(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    (root / "images").mkdir(mode=0o755)
    (root / "images").chmod(0o755)
    (root / "events.jsonl").write_text("{}\n")
    (root / "events.jsonl").chmod(0o644)
    (root / "supervisor.log").write_text("hello\n")
    (root / "supervisor.log").chmod(0o666)
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)

    private_root.make_private(root)

    assert _mode(root) == 0o700
    assert _mode(root / "images") == 0o700
    assert _mode(root / "events.jsonl") == 0o600
    assert _mode(root / "supervisor.log") == 0o600
    assert _mode(outside) == 0o644  # a symlink's target is not the agent's to change


def test_a_missing_root_is_created_0700(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    old = os.umask(0)
    try:
        private_root.make_private(root)
    finally:
        os.umask(old)
    assert _mode(root) == 0o700


def test_a_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    root = tmp_path / "theirs"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(FailedPrecondition, match="belongs to uid 65534"):
        private_root.make_private(root)


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises((FailedPrecondition, FileExistsError)):
        private_root.make_private(tmp_path / "file")


def test_private_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with open(tmp_path / "f", "a", opener=private_root.open_private) as out:
            out.write("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o600
    (tmp_path / "l").symlink_to(tmp_path / "f")
    with pytest.raises(OSError), open(tmp_path / "l", "a", opener=private_root.open_private):
        pass
