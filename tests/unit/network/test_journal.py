"""The JSON-lines journal: incremental replay stays equal to a full replay whatever other writers do."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from agent.errors import ResourceExhausted
from agent.network.journal import Journal


def test_a_second_writer_appending_is_seen(tmp_path: Path) -> None:
    mine, theirs = Journal(tmp_path / "j.jsonl"), Journal(tmp_path / "j.jsonl")
    mine.append({"n": 1})
    assert mine.entries() == [{"n": 1}]
    theirs.append({"n": 2})
    mine.append({"n": 3})
    assert mine.entries() == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert theirs.entries() == mine.entries()


def test_compaction_by_another_writer_is_noticed(tmp_path: Path) -> None:
    mine, theirs = Journal(tmp_path / "j.jsonl"), Journal(tmp_path / "j.jsonl")
    for n in range(300):
        mine.append({"n": n})
    assert len(mine.entries()) == 300
    theirs.compact_if_long(300, [{"n": "kept"}])  # a new, shorter file
    assert mine.entries() == [{"n": "kept"}]
    theirs.compact_if_long(300, [{"n": "again"}])
    assert mine.entries() == [{"n": "again"}]


def test_a_rewritten_file_with_the_same_inode_and_size_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append({"n": 1})
    assert journal.entries() == [{"n": 1}]
    fd = os.open(path, os.O_WRONLY)  # same inode, same length, other content
    try:
        os.write(fd, b'{"n":2}\n')
    finally:
        os.close(fd)
    assert journal.entries() == [{"n": 2}]


def test_torn_lines_are_skipped_and_a_deleted_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append({"n": 1})
    with open(path, "a") as f:
        f.write('{"n": 2, "cut')  # a write cut short by a power loss
    assert journal.entries() == [{"n": 1}]
    journal.append({"n": 3})  # starts a fresh line: the torn bytes stay a line of their own
    journal.append({"n": 4})
    assert journal.entries() == [{"n": 1}, {"n": 3}, {"n": 4}]
    assert path.read_bytes().count(b"\n") == 4
    path.unlink()
    assert journal.entries() == []
    journal.append({"n": 5})
    assert journal.entries() == [{"n": 5}]


def _full_disk(monkeypatch: pytest.MonkeyPatch, *, short: bool) -> None:
    """The next ``os.write`` fails as on a full disk: ENOSPC, or a short write (the kernel wrote what fit)."""
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        monkeypatch.setattr(os, "write", real_write)
        if short:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("short", [False, True])
def test_a_full_disk_on_append_is_resource_exhausted_and_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: bool,
) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append({"n": 1})
    before = path.read_bytes()
    _full_disk(monkeypatch, short=short)
    with journal.locked(), pytest.raises(ResourceExhausted, match=f"cannot append to {path}: .*disk space"):
        journal.append({"n": 2, "padding": "x" * 100})
    assert path.read_bytes() == before  # cut back: nothing half-written for the next append to join
    journal.append({"n": 3})
    assert journal.entries() == [{"n": 1}, {"n": 3}]


def test_compaction_is_an_atomic_replace_and_a_full_disk_keeps_the_old_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    for n in range(300):
        journal.append({"n": n})
    before = path.read_bytes()
    _full_disk(monkeypatch, short=False)
    with pytest.raises(ResourceExhausted, match=f"cannot write {path}: .*disk space"):
        journal.compact_if_long(300, [{"n": "kept"}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl"]  # no temporary file left (no lock yet)
    journal.compact_if_long(300, [{"n": "kept"}])
    assert journal.entries() == [{"n": "kept"}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
