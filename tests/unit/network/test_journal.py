"""The JSON-lines journal: incremental replay stays equal to a full replay whatever other writers do."""

from __future__ import annotations

import os
from pathlib import Path

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
    journal.append({"n": 3})  # lands on the torn line's end: that one line is lost, as before
    journal.append({"n": 4})
    assert journal.entries() == [{"n": 1}, {"n": 4}]
    path.unlink()
    assert journal.entries() == []
    journal.append({"n": 5})
    assert journal.entries() == [{"n": 5}]
