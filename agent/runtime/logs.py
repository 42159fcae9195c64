"""Container logs on disk: the CRI log format, size-capped rotation, and reading/following it back.

The supervisor writes (``LogWriter``); the daemon reads (``read_entries``, ``follow_entries``). Each
line of container output becomes one record ``<RFC3339Nano UTC> <stream> <F|P> <text>\\n`` in
``ctr.log`` — the format kubelet and containerd use, so ``crictl``-style tooling can read it. A line longer
than ``MAX_LINE`` bytes is cut into ``P`` (partial) records followed by an ``F`` record, which bounds every
record and therefore the work a reader does per line. When ``ctr.log`` would grow past ``max_bytes`` it is
renamed to ``ctr.log.1`` (the newest rotated file), older ones shift up, and at most ``max_files`` files
exist in total.

Readers never trust a path to keep naming the same file: they open files and hold the descriptors, so
a rotation between two reads neither loses nor repeats lines. This module is imported by the supervisor,
which must stay small: it uses only the standard library and imports asyncio lazily.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

LOG_FILE = "ctr.log"
# containerd's limit: longer lines are split into partial records.
MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")

_ROTATED_RE = re.compile(r"^ctr\.log\.([1-9][0-9]*)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class LogEntry:
    """One record of ``ctr.log``: when the supervisor read it, from which stream, and the bytes."""

    time_ns: int  # unix time in nanoseconds
    stream: str  # "stdout" or "stderr"
    partial: bool  # True for a P record: the line continues in the next record of the same stream
    text: bytes  # without the trailing newline

    @property
    def time(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.time_ns // 1000)


def format_timestamp(time_ns: int) -> bytes:
    seconds, fraction = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%09dZ" % fraction


def _parse_timestamp(stamp: bytes) -> int:
    # Strict about the shape we write, lenient about the number of fraction digits (RFC 3339 allows any).
    if len(stamp) < 20 or stamp[-1:] != b"Z" or stamp[4:5] != b"-" or stamp[10:11] != b"T":
        raise ValueError(f"bad timestamp {stamp!r}")
    seconds = calendar.timegm((
        int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
        int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]), 0, 0, 0,
    ))
    fraction = stamp[20:-1] if stamp[19:20] == b"." else b""
    if stamp[19:20] not in (b".", b"Z") or (fraction and not fraction.isdigit()):
        raise ValueError(f"bad timestamp {stamp!r}")
    nanos = int(fraction[:9].ljust(9, b"0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def parse_line(line: bytes) -> LogEntry:
    """Parse one CRI log record (with or without its newline); raises ValueError if it is not one."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise ValueError(f"not a CRI log line: {line[:80]!r}")
    stream = parts[1].decode("ascii", "replace")
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}")
    # CRI tags may carry more fields after a colon (e.g. "F:x"); the first one is the partial flag.
    tag = parts[2].split(b":", 1)[0]
    if tag not in (b"F", b"P"):
        raise ValueError(f"unknown tag {parts[2]!r}")
    return LogEntry(
        time_ns=_parse_timestamp(parts[0]), stream=stream, partial=tag == b"P",
        text=parts[3] if len(parts) == 4 else b"",
    )


class LogWriter:
    """Turns a container's stdout/stderr bytes into CRI records in ``directory/ctr.log``, rotating it.

    Not thread-safe; the supervisor's single thread is the only writer. Records are written with one
    ``write(2)`` per batch and no user-space buffering except an unterminated line, so a reader sees a
    line as soon as its newline arrives. A write error (disk full) drops the records, never raises: the
    supervisor must keep reaping and pumping other containers.
    """

    def __init__(self, directory: Path | str, *, max_bytes: int, max_files: int,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if max_bytes <= 0 or max_files <= 0:
            raise ValueError("max_bytes and max_files must be positive")
        self._path = os.path.join(directory, LOG_FILE)
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._clock = clock
        self._pending: dict[str, bytearray] = {}
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self.dropped_bytes = 0

    @property
    def path(self) -> str:
        return self._path

    def _open(self) -> int:
        return os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, stream: str, data: bytes) -> None:
        """Append output of ``stream``; complete lines become records now, a trailing fragment waits."""
        if not data:
            return
        buf = self._pending.get(stream)
        if buf is None:
            buf = self._pending[stream] = bytearray()
        buf += data
        stamp = format_timestamp(self._clock())
        records: list[bytes] = []
        start = 0
        while (newline := buf.find(b"\n", start)) >= 0:
            self._cut(records, stamp, stream, memoryview(buf)[start:newline], final=True)
            start = newline + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            keep = len(buf) % MAX_LINE or MAX_LINE
            self._cut(records, stamp, stream, memoryview(buf)[: len(buf) - keep], final=False)
            del buf[: len(buf) - keep]
        if not buf:
            # Don't keep an empty buffer per stream per container: most lines end in one read.
            del self._pending[stream]
        self._emit(records)

    def end_stream(self, stream: str) -> None:
        """The stream hit EOF: an unterminated last line is written as a full (F) record."""
        buf = self._pending.pop(stream, None)
        if buf:
            records: list[bytes] = []
            self._cut(records, format_timestamp(self._clock()), stream, memoryview(buf), final=True)
            self._emit(records)

    def close(self) -> None:
        for stream in list(self._pending):
            self.end_stream(stream)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def _cut(records: list[bytes], stamp: bytes, stream: str, line: memoryview, *, final: bool) -> None:
        head = stamp + b" " + stream.encode()
        for offset in range(0, max(len(line), 1), MAX_LINE):
            piece = line[offset:offset + MAX_LINE]
            last = offset + MAX_LINE >= len(line)
            tag = b" F " if final and last else b" P "
            records.append(head + tag + piece.tobytes() + b"\n")

    def _emit(self, records: Iterable[bytes]) -> None:
        batch = bytearray()
        for record in records:
            if self._size + len(batch) + len(record) > self._max_bytes and self._size + len(batch) > 0:
                self._write(batch)
                batch.clear()
                self._rotate()
            batch += record
        self._write(batch)

    def _write(self, batch: bytearray) -> None:
        view = memoryview(batch)
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError as err:
            self.dropped_bytes += len(view)
            print(f"log {self._path}: dropped {len(view)} bytes: {err.strerror}", file=sys.stderr)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            if self._max_files == 1:
                os.unlink(self._path)
            else:
                # ctr.log.{n-2} -> ctr.log.{n-1} (dropping the oldest), ..., ctr.log -> ctr.log.1
                for index in range(self._max_files - 1, 0, -1):
                    source = self._path if index == 1 else f"{self._path}.{index - 1}"
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(source, f"{self._path}.{index}")
        except OSError as err:
            print(f"log {self._path}: rotation failed: {err.strerror}", file=sys.stderr)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size


class _OpenLog:
    """A log file held open by descriptor, read incrementally line by line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self._carry = b""

    def read_lines(self, *, limit: int = 1 << 62) -> list[bytes]:
        """Complete lines appended since the last call (up to about ``limit`` bytes); a trailing
        fragment (a record being written right now) is kept for the next call."""
        lines: list[bytes] = []
        total = 0
        while total < limit:
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            data = self._carry + chunk
            cut = data.rfind(b"\n") + 1
            self._carry = data[cut:]
            lines.extend(data[:cut].splitlines())
        return lines

    def close(self) -> None:
        os.close(self.fd)


def _rotated_indices(directory: str) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := _ROTATED_RE.match(name)))


def _open_path(path: str) -> _OpenLog | None:
    try:
        return _OpenLog(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except FileNotFoundError:
        return None


def _open_all(directory: str) -> list[_OpenLog]:
    """Every log file of ``directory``, oldest first, opened newest first so a rotation in between can
    only make us see a file twice (dropped by inode), never skip one."""
    base = os.path.join(directory, LOG_FILE)
    opened: list[_OpenLog] = []
    seen: set[tuple[int, int]] = set()
    for path in [base, *(f"{base}.{i}" for i in _rotated_indices(directory))]:
        log = _open_path(path)
        if log is None:
            continue
        if log.identity in seen:
            log.close()
            continue
        seen.add(log.identity)
        opened.append(log)
    opened.reverse()
    return opened


def _entries(lines: Iterable[bytes], since_ns: int | None) -> Iterator[LogEntry]:
    for line in lines:
        try:
            entry = parse_line(line)
        except ValueError:
            continue  # a corrupt line (e.g. after a crash mid-write) must not hide the rest
        if since_ns is None or entry.time_ns >= since_ns:
            yield entry


def _history(logs: list[_OpenLog], *, tail: int | None, since_ns: int | None) -> Iterator[LogEntry]:
    entries = (entry for log in logs for entry in _entries(log.read_lines(), since_ns))
    if tail is None:
        yield from entries
    elif tail > 0:
        yield from deque(entries, maxlen=tail)


def read_entries(directory: Path | str, *, tail: int | None = None,
                 since_ns: int | None = None) -> Iterator[LogEntry]:
    """The container's log records, oldest first across rotated files.

    ``since_ns`` keeps records at or after that time; ``tail`` then keeps the last N records (partial
    records count individually).
    """
    logs = _open_all(str(directory))
    try:
        yield from _history(logs, tail=tail, since_ns=since_ns)
    finally:
        for log in logs:
            log.close()


def _successor(directory: str, current: _OpenLog) -> _OpenLog | None:
    """The file written after ``current`` if ``current`` has been rotated away, else None."""
    base = os.path.join(directory, LOG_FILE)
    try:
        st = os.stat(base)
    except FileNotFoundError:
        return None  # mid-rotation: the writer is about to create it
    if (st.st_dev, st.st_ino) == current.identity:
        return None
    indices = _rotated_indices(directory)
    for index in indices:
        try:
            st = os.stat(f"{base}.{index}")
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) == current.identity:
            return _open_path(base if index == 1 else f"{base}.{index - 1}")
    # Rotated off the end already (many rotations between two polls): the oldest survivor is next.
    for index in reversed(indices):
        log = _open_path(f"{base}.{index}")
        if log is not None:
            return log
    return _open_path(base)


async def follow_entries(directory: Path | str, *, is_finished: Callable[[], bool],
                         poll_interval: float = 0.05, tail: int | None = None,
                         since_ns: int | None = None, wake: Any = None) -> AsyncIterator[LogEntry]:
    """Like ``read_entries``, then keep yielding new records (across rotations) until ``is_finished()``
    is true and everything written before that has been read.

    ``is_finished`` must turn true only after the writer is done (the supervisor writes run.json's
    exit after flushing the log), e.g. ``event.is_set``. New data is found by polling every
    ``poll_interval`` seconds; ``wake`` (an ``asyncio.Event``, typically the one set on exit) cuts a
    poll short, so the end of the stream is seen at once rather than up to one interval late.
    """
    import asyncio  # lazily: the supervisor imports this module and must stay small

    async def idle() -> None:
        if wake is None:
            await asyncio.sleep(poll_interval)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), poll_interval)

    path = str(directory)
    current: _OpenLog | None = None
    try:
        while True:
            finished = is_finished()
            logs = _open_all(path)
            if logs:
                break
            if finished:
                return
            await idle()
        current = logs.pop()
        try:
            history = [*(e for log in logs for e in _entries(log.read_lines(), since_ns)),
                       *_entries(current.read_lines(), since_ns)]
        finally:
            for log in logs:
                log.close()
        if tail is not None:
            history = history[-tail:] if tail > 0 else []
        for entry in history:
            yield entry
        del history

        while True:
            finished = is_finished()  # sampled before reading: what was written before it is read below
            lines = current.read_lines(limit=_READ_CHUNK * 4)
            for entry in _entries(lines, since_ns):
                yield entry
            # Checked after every read, not only when idle: the longer we stay on a rotated file, the
            # likelier its successors are rotated off the end before we get to them.
            following = _successor(path, current)
            if following is not None:
                # Rotated: the writer no longer appends to ``current``; finish it, then move on.
                for entry in _entries(current.read_lines(), since_ns):
                    yield entry
                current.close()
                current = following
                continue
            if lines:
                continue  # more may be waiting; sleep only when idle
            if finished:
                return
            await idle()
    finally:
        if current is not None:
            current.close()
