"""LogWriter's CRI records and rotation, and reading them back (parse, read_entries, follow_entries)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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


# --- reading cost: tails read backward, following reads off the loop ------------------------------------


@dataclass
class ReadCounter:
    """Wraps every read of a log file (``logs._read_at``): bytes read, and which threads read."""

    bytes: int = 0
    calls: int = 0
    threads: set[int] = field(default_factory=set)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
        real = logs._read_at

        def counting(fd: int, size: int, offset: int) -> bytes:
            data = real(fd, size, offset)
            self.bytes += len(data)
            self.calls += 1
            self.threads.add(threading.get_ident())
            return data

        monkeypatch.setattr(logs, "_read_at", counting)
        return self


def big_log(directory: Path, lines: int) -> int:
    """A ``lines``-record ctr.log written in one go (as LogWriter would); returns its size."""
    stamp = logs.format_timestamp(T0)
    (directory / "ctr.log").write_bytes(b"".join(
        stamp + b" stdout F line %06d of a log that is much longer than what a tail needs\n" % i
        for i in range(lines)
    ))
    return (directory / "ctr.log").stat().st_size


def test_tail_of_a_100k_line_log_reads_only_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = big_log(tmp_path, 100_000)
    counter = ReadCounter().install(monkeypatch)
    got = [e.text for e in read_entries(tmp_path, tail=10)]
    assert got == [b"line %06d of a log that is much longer than what a tail needs" % i
                   for i in range(99_990, 100_000)]
    assert size > 10_000_000 and counter.bytes <= 16 * 1024  # two 8 KiB blocks at most, of 10 MB
    counter.bytes = 0
    assert len(list(read_entries(tmp_path, tail=1000))) == 1000
    assert counter.bytes <= 1000 * 200  # ~ the records asked for (each ~110 bytes), not the file


def test_tail_spans_rotated_files_newest_first_and_stops_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = LogWriter(tmp_path, max_bytes=400, max_files=5, clock=ticking_clock())
    for i in range(44):
        w.write("stdout", f"line {i:02d}\n".encode())  # 48-byte records: 8 per file
    w.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ctr.log", "ctr.log.1", "ctr.log.2", "ctr.log.3", "ctr.log.4"]
    newest = (tmp_path / "ctr.log").read_bytes().count(b"\n")
    everything = [e.text for e in read_entries(tmp_path)]
    for n in (1, newest, newest + 1, newest + 9, len(everything), len(everything) + 5):
        assert [e.text for e in read_entries(tmp_path, tail=n)] == everything[-n:], n
    # A tail the newest file can answer never reads the rotated ones.
    counter = ReadCounter().install(monkeypatch)
    list(read_entries(tmp_path, tail=newest))
    assert counter.bytes <= (tmp_path / "ctr.log").stat().st_size * 2  # its end found, then its lines


def test_tail_ignores_a_torn_last_line_and_counts_partial_records(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write("stdout", b"a\n")
    w.write("stdout", b"x" * (MAX_LINE + 3) + b"\n")  # one line, two records: P then F
    w.close()
    with open(tmp_path / "ctr.log", "ab") as f:
        f.write(b"2026-11-28T18:03:54.1Z stdout F torn by a cra")  # no newline: a crash mid-write
    last_two = [(e.partial, len(e.text)) for e in read_entries(tmp_path, tail=2)]
    assert last_two == [(True, MAX_LINE), (False, 3)]
    assert next(e.text for e in read_entries(tmp_path, tail=3)) == b"a"
    # A block boundary inside a long record: the record is still read whole.
    (tmp_path / "many").mkdir()
    many = writer(tmp_path / "many")
    for i in range(40):
        many.write("stderr", bytes([65 + i % 26]) * 1000 + b"\n")
    many.close()
    assert [e.text for e in read_entries(tmp_path / "many", tail=25)] == [
        bytes([65 + i % 26]) * 1000 for i in range(15, 40)
    ]


def test_follow_with_tail_reads_only_the_end_then_new_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = big_log(tmp_path, 100_000)
    counter = ReadCounter().install(monkeypatch)
    history_bytes: list[int] = []
    with open(tmp_path / "ctr.log", "ab") as f:
        f.write(b"2026-11-28T18:03:54.1Z stdout F half of a rec")  # the writer is mid-record

    def writes(step: int) -> bool:
        if step == 1:
            history_bytes.append(counter.bytes)
            with open(tmp_path / "ctr.log", "ab") as f:
                f.write(b"ord\n2026-11-28T18:03:54.2Z stdout F after\n")
        return step >= 3

    seen = _follow(tmp_path, writes=writes, tail=2)
    assert seen == [b"line 099998 of a log that is much longer than what a tail needs",
                    b"line 099999 of a log that is much longer than what a tail needs",
                    b"half of a record", b"after"]
    assert size > 10_000_000 and history_bytes[0] <= 16 * 1024
    # Every read ran in a worker thread, none on the event loop's (this) thread.
    assert counter.threads and threading.get_ident() not in counter.threads


def test_idle_follow_polls_read_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(tmp_path)
    w.write("stdout", b"only\n")
    counter = ReadCounter().install(monkeypatch)
    calls_after_history: list[int] = []

    def writes(step: int) -> bool:
        if step == 1:
            calls_after_history.append(counter.calls)
        return step >= 50  # 49 idle polls

    assert _follow(tmp_path, writes=writes, tail=5) == [b"only"]
    assert counter.calls == calls_after_history[0]
    w.close()


def test_flush_partial_hands_an_unfinished_line_to_the_next_writer(tmp_path: Path) -> None:
    first = writer(tmp_path)
    first.write("stdout", b"done\nhalf a li")
    first.flush_partial()  # this writer's process is about to be replaced
    first.close()
    second = writer(tmp_path)
    second.write("stdout", b"ne\n")
    second.close()
    entries = list(read_entries(tmp_path))
    assert [(e.text, e.partial) for e in entries] == [(b"done", False), (b"half a li", True), (b"ne", False)]
