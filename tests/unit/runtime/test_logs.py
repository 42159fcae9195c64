"""LogWriter's CRI records and rotation, and reading them back (parse, read_entries, follow_entries)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runtime import logs
from agent.runtime.logs import MAX_LINE, LogEntry, LogWriter, parse_line, read_entries

T0 = 1_795_889_034_123_456_789  # 2026-11-28T18:03:54.123456789Z


def ticking_clock(start: int = T0, step: int = 1_000) -> Callable[[], int]:
    counter = itertools.count()
    return lambda: start + step * next(counter)


def writer(tmp_path: Path, *, max_bytes: int = 1 << 20, max_files: int = 3) -> LogWriter:
    return LogWriter(tmp_path, max_bytes=max_bytes, max_files=max_files, clock=ticking_clock())


def test_records_are_cri_lines_per_stream(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, max_bytes=1 << 20, max_files=2, clock=lambda: T0)
    w.write("stdout", b"hello\nwor")
    w.write("stderr", b"oops\n")
    w.write("stdout", b"ld\n")
    w.close()
    assert (tmp_path / "ctr.log").read_bytes() == (
        b"2026-11-28T18:03:54.123456789Z stdout F hello\n"
        b"2026-11-28T18:03:54.123456789Z stderr F oops\n"
        b"2026-11-28T18:03:54.123456789Z stdout F world\n"
    )


def test_long_lines_become_partial_records_and_eof_flushes_the_rest(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write("stdout", b"x" * (MAX_LINE + 10))  # exceeds the limit without a newline
    assert [(e.partial, len(e.text)) for e in read_entries(tmp_path)] == [(True, MAX_LINE)]
    w.write("stdout", b"y" * 5)
    w.end_stream("stdout")  # EOF: the unterminated tail is a full record
    w.write("stderr", b"a" * (2 * MAX_LINE + 1) + b"\n")  # long line arriving whole is cut too
    w.close()
    got = [(e.stream, e.partial, e.text) for e in read_entries(tmp_path)]
    assert got == [
        ("stdout", True, b"x" * MAX_LINE),
        ("stdout", False, b"x" * 10 + b"y" * 5),
        ("stderr", True, b"a" * MAX_LINE),
        ("stderr", True, b"a" * MAX_LINE),
        ("stderr", False, b"a"),
    ]


def test_empty_lines_are_kept(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write("stdout", b"\n\nx\n")
    w.close()
    assert [e.text for e in read_entries(tmp_path)] == [b"", b"", b"x"]


def test_rotation_caps_size_and_file_count(tmp_path: Path) -> None:
    w = writer(tmp_path, max_bytes=200, max_files=3)
    for i in range(40):
        w.write("stdout", f"line {i:02d}\n".encode())  # 45-byte records: 4 per file
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ctr.log", "ctr.log.1", "ctr.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    texts = [e.text.decode() for e in read_entries(tmp_path)]
    # Oldest first, contiguous, ending with the last line written.
    assert texts == [f"line {i:02d}" for i in range(40 - len(texts), 40)]
    assert len(texts) == 12


def test_max_files_one_keeps_only_the_current_file(tmp_path: Path) -> None:
    w = writer(tmp_path, max_bytes=100, max_files=1)
    for i in range(10):
        w.write("stdout", f"{i}\n".encode())
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["ctr.log"]
    assert [e.text for e in read_entries(tmp_path)][-1] == b"9"


def test_parse_line_round_trip() -> None:
    entry = parse_line(b"2026-11-28T18:03:54.123456789Z stderr P some text with  spaces\n")
    assert entry == LogEntry(time_ns=T0, stream="stderr", partial=True, text=b"some text with  spaces")
    assert entry.time.isoformat() == "2026-11-28T18:03:54.123456+00:00"
    assert logs.format_timestamp(T0) == b"2026-11-28T18:03:54.123456789Z"
    assert parse_line(b"2026-11-28T18:03:54Z stdout F").text == b""
    assert parse_line(b"2026-11-28T18:03:54.5Z stdout F:x t").time_ns == T0 - 123456789 + 500_000_000


@pytest.mark.parametrize("bad", [b"", b"garbage", b"2026-11-28T18:03:54.1Z stdin F x",
                                 b"2026-11-28T18:03:54.1Z stdout X x", b"2026-11-28 18:03:54Z stdout F x"])
def test_parse_line_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_line(bad)


def test_read_entries_tail_and_since_across_rotations(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, max_bytes=150, max_files=5, clock=ticking_clock(step=10))
    for i in range(10):
        w.write("stdout", f"{i}\n".encode())
    w.close()
    assert len(list(tmp_path.iterdir())) > 1
    assert [e.text for e in read_entries(tmp_path)] == [str(i).encode() for i in range(10)]
    assert [e.text for e in read_entries(tmp_path, tail=3)] == [b"7", b"8", b"9"]
    assert list(read_entries(tmp_path, tail=0)) == []
    since = T0 + 10 * 6
    assert [e.text for e in read_entries(tmp_path, since_ns=since)] == [b"6", b"7", b"8", b"9"]
    assert [e.text for e in read_entries(tmp_path, since_ns=since, tail=2)] == [b"8", b"9"]


def test_read_entries_of_a_missing_log_is_empty(tmp_path: Path) -> None:
    assert list(read_entries(tmp_path / "nothing")) == []


def test_read_entries_skips_a_torn_last_line(tmp_path: Path) -> None:
    (tmp_path / "ctr.log").write_bytes(b"2026-11-28T18:03:54Z stdout F ok\n2026-11-28T18:0")
    assert [e.text for e in read_entries(tmp_path)] == [b"ok"]


def _follow(directory: Path, *, writes: Callable[[int], bool], tail: int | None = None,
            limit: int = 10_000) -> list[bytes]:
    """Run follow_entries with the writer driven from ``is_finished``: each poll of the follower first
    performs ``writes(step)`` (True when the writer is done), so the interleaving is deterministic."""
    steps = itertools.count()
    done = False

    def is_finished() -> bool:
        nonlocal done
        if not done:
            done = writes(next(steps))
        return done

    async def scenario() -> list[bytes]:
        seen: list[bytes] = []
        async for entry in logs.follow_entries(directory, is_finished=is_finished, poll_interval=0.001,
                                               tail=tail):
            seen.append(entry.text)
            assert len(seen) <= limit
        return seen

    return asyncio.run(asyncio.wait_for(scenario(), 30))


def test_follow_yields_history_then_new_lines_and_ends_after_finish(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for i in range(5):
        w.write("stdout", f"old{i}\n".encode())

    def writes(step: int) -> bool:
        if step < 20:
            w.write("stdout", f"new{step}\n".encode())
            return False
        w.write("stdout", b"last-unterminated")
        w.close()
        return True

    seen = _follow(tmp_path, writes=writes, tail=2)
    # The follower's first poll (step 0) comes before it reads the history, so new0 is history too.
    assert seen == [b"old4", *(f"new{i}".encode() for i in range(20)), b"last-unterminated"]


def test_follow_crosses_rotations_without_loss_or_repeats(tmp_path: Path) -> None:
    w = writer(tmp_path, max_bytes=300, max_files=4)
    expected = [f"{i:04d}".encode() for i in range(400)]
    bursts = list(itertools.accumulate(itertools.islice(itertools.cycle([0, 3, 12, 1, 7, 8, 2]), 200),
                                       initial=0))

    def writes(step: int) -> bool:
        # Bursts of 0..12 lines (7 fit in a file): one or two rotations between two reads.
        first, last = bursts[step], bursts[step + 1]
        for text in expected[first:last]:
            w.write("stdout", text + b"\n")
        if last >= len(expected):
            w.close()
            return True
        return False

    seen = _follow(tmp_path, writes=writes)
    assert seen == expected


def test_follow_waits_for_the_log_to_appear(tmp_path: Path) -> None:
    holder: list[LogWriter] = []

    def writes(step: int) -> bool:
        if step == 3:
            holder.append(writer(tmp_path))
            holder[0].write("stderr", b"first\n")
        if step == 6:
            holder[0].close()
            return True
        return False

    assert _follow(tmp_path, writes=writes) == [b"first"]


def test_follow_of_a_finished_container_without_log_ends(tmp_path: Path) -> None:
    assert _follow(tmp_path, writes=lambda step: True) == []
