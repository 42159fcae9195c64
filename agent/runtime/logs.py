"""Container logs on disk: the CRI log format, size-capped rotation, and reading/following it back.

The supervisor writes (``LogWriter``); the daemon reads (``read_entries``, ``follow_entries``). Each
line of container output becomes one record ``<RFC3339Nano UTC> <stream> <F|P> <text>\\n`` in
``ctr.log`` — the format kubelet and containerd use, so ``crictl``-style tooling can read it. A line longer
than ``MAX_LINE`` bytes is cut into ``P`` (partial) records followed by an ``F`` record, which bounds every
record and therefore the work a reader does per line. When ``ctr.log`` would grow past ``max_bytes`` it is
renamed to ``ctr.log.1`` (the newest rotated file), older ones shift up, and at most ``max_files`` files
exist in total.

Readers never trust a path to keep naming the same file: they open files and hold the descriptors, so
a rotation between two reads neither loses nor repeats lines. What a read costs does not depend on how
much the container has logged: a tail of N records reads backward from the end of the newest file (and
goes on to older ones only if it still needs records), everything else reads forward in bounded chunks.
``follow_entries`` never reads on the event loop: history and new data are read in a worker thread, and
an idle poll is an ``fstat`` and a ``stat``. This module is imported by the supervisor, which must stay
small: it uses only the standard library and imports asyncio lazily.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

LOG_FILE = "ctr.log"
# containerd's limit: longer lines are split into partial records.
MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_ROTATED_RE = re.compile(r"^ctr\.log\.([1-9][0-9]*)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READ_CHUNK = 256 * 1024  # forward reads, and the largest backward block
_BACK_CHUNK = 8 * 1024  # the first backward block of a tail: ~100 records of a typical line length
_FOLLOW_BATCH = 4 * _READ_CHUNK  # at most this much per off-loop read while following


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
    line as soon as its newline arrives.

    A write error (a full disk: ENOSPC, EDQUOT) drops the batch, never raises: the supervisor must keep
    reaping and pumping other containers, and the container must not block on a full pipe. A batch that
    was only partly written is cut back to the last whole record, so the file never holds a torn line.
    Drops are counted (``dropped_bytes``, ``dropped_records``) and reported through ``report`` at most
    once per ``NOTE_INTERVAL`` per writer, and once more when writing works again; a log file that
    cannot be (re)opened is retried, at most once per ``REOPEN_INTERVAL``. Writing resumes by itself as
    soon as there is room: nothing has to be restarted.
    """

    NOTE_INTERVAL = 30.0
    REOPEN_INTERVAL = 1.0

    def __init__(self, directory: Path | str, *, max_bytes: int, max_files: int,
                 clock: Callable[[], int] = time.time_ns, report: Callable[[str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0 or max_files <= 0:
            raise ValueError("max_bytes and max_files must be positive")
        self._path = os.path.join(directory, LOG_FILE)
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._clock = clock
        self._monotonic = monotonic
        self._report = report or _report_to_stderr
        self._pending: dict[str, bytearray] = {}
        self.dropped_bytes = 0  # in total, for the writer's lifetime
        self.dropped_records = 0
        self._episode = 0  # bytes dropped since writes last worked
        self._reason = "write failed"
        self._failing = False
        self._noted_at = -1e18
        self._reopen_at = -1e18
        self._fd = -1
        self._size = 0
        try:
            self._fd = self._open()
            self._size = os.fstat(self._fd).st_size
        except OSError as err:
            if err.errno not in _NO_SPACE:
                raise  # no such directory: the container is gone, and the caller must know
            self._reopen_at = self._monotonic() + self.REOPEN_INTERVAL
            self._failed(0, 0, err)

    @property
    def path(self) -> str:
        return self._path

    def _open(self) -> int:
        return os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _reopen(self) -> bool:
        """Open ``ctr.log`` if it is not open; False (and noted) if that fails, e.g. no inode left."""
        if self._fd >= 0:
            return True
        now = self._monotonic()
        if now < self._reopen_at:
            return False
        self._reopen_at = now + self.REOPEN_INTERVAL
        try:
            fd = self._open()
        except OSError as err:
            self._failed(0, 0, err)
            return False
        try:
            self._size = os.fstat(fd).st_size
        except OSError:
            self._size = 0
        self._fd = fd
        return True

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

    def flush_partial(self) -> None:
        """Write unterminated lines now as partial (P) records. For a writer about to be replaced by
        another process (a supervisor worker handing over): the successor's next record for the stream
        completes the line, so no byte is lost."""
        for stream in list(self._pending):
            buf = self._pending.pop(stream)
            records: list[bytes] = []
            self._cut(records, format_timestamp(self._clock()), stream, memoryview(buf), final=False)
            self._emit(records)

    def close(self) -> None:
        for stream in list(self._pending):
            self.end_stream(stream)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._failing:
            self._note(final=False)

    @staticmethod
    def _cut(records: list[bytes], stamp: bytes, stream: str, line: memoryview, *, final: bool) -> None:
        head = stamp + b" " + stream.encode()
        for offset in range(0, max(len(line), 1), MAX_LINE):
            piece = line[offset:offset + MAX_LINE]
            last = offset + MAX_LINE >= len(line)
            tag = b" F " if final and last else b" P "
            records.append(head + tag + piece.tobytes() + b"\n")

    def _emit(self, records: list[bytes]) -> None:
        batch = bytearray()
        count = 0
        for record in records:
            if self._size + len(batch) + len(record) > self._max_bytes and self._size + len(batch) > 0:
                self._write(batch, count)
                batch.clear()
                count = 0
                self._rotate()
            batch += record
            count += 1
        self._write(batch, count)

    def _write(self, batch: bytearray, count: int) -> None:
        if not batch:
            return
        if not self._reopen():
            self._failed(len(batch), count, None)
            return
        before = self._size
        view = memoryview(batch)
        try:
            while view:
                written = _write_some(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError as err:
            if self._size != before:
                # Part of the batch made it: cut the file back to the last whole record it had.
                try:
                    os.ftruncate(self._fd, before)
                    self._size = before
                except OSError:
                    pass
            self._failed(len(batch), count, err)
            return
        if self._failing:
            self._failing = False
            self._note(final=True)

    def _failed(self, size: int, count: int, err: OSError | None) -> None:
        self.dropped_bytes += size
        self.dropped_records += count
        self._episode += size
        if err is not None:
            self._reason = err.strerror or str(err)
        self._failing = True
        if self._monotonic() >= self._noted_at + self.NOTE_INTERVAL:
            self._note(final=False)

    def _note(self, *, final: bool) -> None:
        """Tell the operator what was dropped: rate-limited while failing, and once when writes resume."""
        if final:
            message = (f"log {self._path}: writing again after dropping {self._episode} bytes of output "
                       f"({self._reason})")
            self._episode = 0
        else:
            message = (f"log {self._path}: dropping output ({self._reason}): {self._episode} bytes so far, "
                       f"{self.dropped_records} records in all; writing resumes when there is room")
        self._noted_at = self._monotonic()
        with contextlib.suppress(Exception):  # a report must never take the writer down
            self._report(message)

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            if self._max_files == 1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)
            else:
                # ctr.log.{n-2} -> ctr.log.{n-1} (dropping the oldest), ..., ctr.log -> ctr.log.1
                for index in range(self._max_files - 1, 0, -1):
                    source = self._path if index == 1 else f"{self._path}.{index - 1}"
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(source, f"{self._path}.{index}")
        except OSError as err:
            self._report_safely(f"log {self._path}: rotation failed: {err.strerror}")
        self._reopen_at = -1e18  # reopen now, not after the retry interval
        self._reopen()

    def _report_safely(self, message: str) -> None:
        with contextlib.suppress(Exception):
            self._report(message)


def _write_some(fd: int, data: memoryview) -> int:
    """``os.write`` — the one place ``LogWriter`` writes, so tests can make it fail part-way."""
    return os.write(fd, data)


def _report_to_stderr(message: str) -> None:
    """Default ``report``: one ``write(2)`` on fd 2 that never raises (stderr may be on the full disk)."""
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode("utf-8", "replace"))


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """Every read of a log file goes through here (``pread``: readers keep their own offsets, and tests
    count the bytes read)."""
    return os.pread(fd, size, offset)


class _OpenLog:
    """A log file held open by descriptor, read by explicit offset: forward from ``offset`` in bounded
    chunks, or backward from the end for a tail."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.offset = 0  # the end of the last complete line handed out (or skipped by a tail)
        # The file's size when last read to its end; -1 while there is more to read than was read.
        self._size_seen = -1

    def may_have_more(self) -> bool:
        """Whether a read could return lines: the last one stopped short, or the size changed since.
        One ``fstat``, no data read."""
        return self._size_seen < 0 or os.fstat(self.fd).st_size != self._size_seen

    def read_lines(self, *, limit: int = 1 << 62) -> list[bytes]:
        """Complete lines from ``offset`` on (up to about ``limit`` bytes); a trailing fragment (a record
        being written right now, or torn by a crash) is left for the next call."""
        size = os.fstat(self.fd).st_size
        self._size_seen = -1  # until this read gets to the end
        lines: list[bytes] = []
        total = 0
        while True:
            if self.offset >= size:
                self._size_seen = size
                break
            if total >= limit:
                break
            data = _read_at(self.fd, min(_READ_CHUNK, size - self.offset), self.offset)
            if not data:
                self._size_seen = size  # truncated under us: nothing more until it changes again
                break
            cut = data.rfind(b"\n") + 1
            if not cut:
                if self.offset + len(data) >= size:
                    self._size_seen = size  # the unterminated end: wait for its newline
                    break
                # A whole chunk without a newline cannot be records (they are at most MAX_LINE plus a
                # header): skip it rather than carry an ever-growing fragment.
                cut = len(data)
            total += cut
            lines.extend(data[:cut].splitlines())
            self.offset += cut
        return lines

    def complete_end(self) -> int:
        """Where the last complete line of the file ends (0 if there is none): the file's size unless the
        writer is mid-record or a crash tore the last one. Reads backward, usually a single block."""
        size = os.fstat(self.fd).st_size
        self._size_seen = size
        pos, step = size, _BACK_CHUNK
        while pos > 0:
            n = min(step, pos)
            pos -= n
            newline = _read_at(self.fd, n, pos).rfind(b"\n")
            if newline >= 0:
                return pos + newline + 1
            step = min(step * 2, _READ_CHUNK)
        return 0

    def blocks_before(self, end: int) -> Iterator[list[bytes]]:
        """The complete lines of ``[0, end)`` (``end`` at a line boundary), newest block first, each block
        in file order. Blocks start at 8 KiB and double, so the last N lines cost about N lines of reads."""
        pos, step = end, _BACK_CHUNK
        head = b""  # bytes at ``pos`` that begin a line whose start lies before ``pos``
        while pos > 0:
            n = min(step, pos)
            pos -= n
            data = _read_at(self.fd, n, pos) + head
            step = min(step * 2, _READ_CHUNK)
            if pos > 0:
                first = data.find(b"\n") + 1
                if not first:
                    head = data
                    continue
                head, data = data[:first], data[first:]
            if data:
                yield data.splitlines()

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


def _last_entries(logs: list[_OpenLog], count: int, since_ns: int | None) -> list[LogEntry]:
    """The last ``count`` entries (at or after ``since_ns``) of ``logs`` (oldest file first), oldest first.

    Reads backward from the end of the newest file and goes on to older files only while it still needs
    entries, so it costs about ``count`` records of reads whatever the size of the log. Each file read
    is left with ``offset`` at its last complete line, where following it continues."""
    if not logs:
        return []
    picked: list[LogEntry] = []  # newest first
    for i, log in enumerate(reversed(logs)):
        if i and len(picked) >= count:
            break
        # Even for a tail of 0 the newest file's end is needed: a follower continues from there.
        end = log.offset = log.complete_end()
        if count <= 0:
            break
        for block in log.blocks_before(end):
            for entry in reversed(list(_entries(block, since_ns))):
                picked.append(entry)
                if len(picked) >= count:
                    break
            if len(picked) >= count:
                break
    picked.reverse()
    return picked


def _all_lines(log: _OpenLog) -> Iterator[list[bytes]]:
    """The file from ``offset`` to its current end, in bounded batches."""
    while lines := log.read_lines(limit=_READ_CHUNK):
        yield lines


def read_entries(directory: Path | str, *, tail: int | None = None,
                 since_ns: int | None = None) -> Iterator[LogEntry]:
    """The container's log records, oldest first across rotated files. Blocking: call from a thread.

    ``since_ns`` keeps records at or after that time; ``tail`` then keeps the last N records (partial
    records count individually), read backward from the end: O(N) whatever the log's size. Without
    ``tail`` the files are streamed in bounded reads.
    """
    logs = _open_all(str(directory))
    try:
        if tail is not None:
            yield from _last_entries(logs, max(tail, 0), since_ns)
            return
        for log in logs:
            for lines in _all_lines(log):
                yield from _entries(lines, since_ns)
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


def _replaced(base: str, current: _OpenLog) -> bool:
    """Whether ``ctr.log`` is no longer ``current`` (rotated, or gone mid-rotation): one ``stat``."""
    try:
        st = os.stat(base)
    except FileNotFoundError:
        return True
    return (st.st_dev, st.st_ino) != current.identity


def _advance(directory: str, current: _OpenLog) -> tuple[list[bytes], _OpenLog | None]:
    """One bounded read of ``current``, then the file that follows it if it was rotated away, with the
    rest of ``current`` (the writer never appends to a rotated file: it closes it before renaming).

    The successor is looked for after every read, not only when idle: the longer a follower stays on a
    rotated file, the likelier its successors are rotated off the end before it gets to them. The rest
    of a rotated file is at most ``--log-max-size``."""
    lines = current.read_lines(limit=_FOLLOW_BATCH)
    following = _successor(directory, current)
    if following is not None:
        lines += current.read_lines()
    return lines, following


async def follow_entries(directory: Path | str, *, is_finished: Callable[[], bool],
                         poll_interval: float = 0.05, tail: int | None = None,
                         since_ns: int | None = None, wake: Any = None) -> AsyncIterator[LogEntry]:
    """Like ``read_entries``, then keep yielding new records (across rotations) until ``is_finished()``
    is true and everything written before that has been read.

    ``is_finished`` must turn true only after the writer is done (the supervisor writes run.json's
    exit after flushing the log), e.g. ``event.is_set``. It is called on the event loop; file reads never
    are: the history (the last ``tail`` records, read backward; or everything, in bounded batches) and
    every read of new data run in a worker thread. An idle poll, every ``poll_interval`` seconds, is an
    ``fstat`` and a ``stat`` on the loop and starts no thread. ``wake`` (an ``asyncio.Event``, typically
    the one set on exit) cuts a poll short, so the end of the stream is seen at once rather than up to
    one interval late.
    """
    import asyncio  # lazily: the supervisor imports this module and must stay small

    async def idle() -> None:
        if wake is None:
            await asyncio.sleep(poll_interval)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_interval):
                await wake.wait()

    path = str(directory)
    base = os.path.join(path, LOG_FILE)
    current: _OpenLog | None = None
    try:
        while True:
            finished = is_finished()
            # The existence check is on the loop (metadata), opening in a thread; with no log yet and
            # the container still running there is nothing to open.
            if finished or os.path.lexists(base):
                logs = await asyncio.to_thread(_open_all, path)
                if logs:
                    break
                if finished:
                    return
            await idle()
        current = logs[-1]
        try:
            if tail is not None:
                for entry in await asyncio.to_thread(_last_entries, logs, max(tail, 0), since_ns):
                    yield entry
            else:
                for log in logs[:-1]:
                    while lines := await asyncio.to_thread(log.read_lines, limit=_FOLLOW_BATCH):
                        for entry in _entries(lines, since_ns):
                            yield entry
        finally:
            for log in logs[:-1]:
                log.close()

        while True:
            finished = is_finished()  # sampled before reading: what was written before it is read below
            if not current.may_have_more() and not _replaced(base, current):
                if finished:
                    return
                await idle()
                continue
            lines, following = await asyncio.to_thread(_advance, path, current)
            for entry in _entries(lines, since_ns):
                yield entry
            if following is not None:
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
