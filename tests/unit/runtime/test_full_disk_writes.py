"""Every write path of the daemon and the supervisor under a full disk (issue 12, finding 1).

Faults are injected at each path's seam: ``/dev/full`` (a real ENOSPC from the kernel) dup'ed over a log
file's descriptor, a ``write`` that stops part-way, a record writer that raises ``ResourceExhausted``.
Each test checks the path neither raises nor loses what it must keep, and recovers by itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import ResourceExhausted
from agent.runtime import events as events_module
from agent.runtime import executor, logs, records, runfile
from agent.runtime.events import EventLog, EventType
from agent.runtime.supervisor.ownlog import OwnLog

T0 = 1_795_889_034_123_456_789


@pytest.fixture
def dev_full() -> Iterator[int]:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        yield fd
    finally:
        os.close(fd)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the supervisor's own log ------------------------------------------------------------------------


def test_own_log_counts_lines_a_full_disk_drops_and_says_so_when_writing_works(
        tmp_path: Path, dev_full: int) -> None:
    out = os.open(tmp_path / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(out)
    own = OwnLog("worker", fd=out)
    os.dup2(dev_full, out)  # the disk is full
    own.line("first")
    own.line("second")  # neither raises
    assert own.dropped == 2 and "No space left" in own.last_error
    os.dup2(saved, out)  # space is back
    own.line("third")
    text = (tmp_path / "supervisor.log").read_text()
    assert "2 earlier log line(s) were dropped (No space left on device)" in text
    assert text.endswith("third\n") and "first" not in text and own.dropped == 0
    os.close(saved)
    os.close(out)


# -- container logs ------------------------------------------------------------------------------------


def test_container_log_drops_on_enospc_with_rate_limited_notes_and_resumes(
        tmp_path: Path, dev_full: int) -> None:
    notes: list[str] = []
    clock = Clock()
    w = logs.LogWriter(tmp_path, max_bytes=1 << 20, max_files=2, clock=lambda: T0, report=notes.append,
                       monotonic=clock)
    w.write("stdout", b"before\n")
    real = os.dup(w._fd)
    os.dup2(dev_full, w._fd)
    for _ in range(100):
        w.write("stdout", b"lost line\n")  # never raises
    assert w.dropped_records == 100 and w.dropped_bytes > 100
    assert len(notes) == 1 and "dropping output (No space left on device)" in notes[0]
    clock.now += logs.LogWriter.NOTE_INTERVAL
    w.write("stdout", b"lost again\n")
    assert len(notes) == 2  # at most one note per interval while it keeps failing
    os.dup2(real, w._fd)
    os.close(real)
    w.write("stdout", b"after\n")
    w.close()
    assert [e.text for e in logs.read_entries(tmp_path)] == [b"before", b"after"]
    assert len(notes) == 3 and "writing again after dropping" in notes[2]


def test_container_log_cuts_a_partly_written_batch_back_to_whole_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = logs.LogWriter(tmp_path, max_bytes=1 << 20, max_files=2, clock=lambda: T0, report=lambda _m: None)
    w.write("stdout", b"kept\n")
    calls = {"n": 0}
    real_write = logs._write_some

    def half_then_enospc(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logs, "_write_some", half_then_enospc)
    w.write("stdout", b"torn-1\ntorn-2\n")
    monkeypatch.setattr(logs, "_write_some", real_write)
    w.write("stdout", b"whole\n")
    w.close()
    # No torn record: the half-written batch was cut off the file.
    assert [e.text for e in logs.read_entries(tmp_path)] == [b"kept", b"whole"]


def test_container_log_that_cannot_be_opened_retries_and_then_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    real_open = logs.LogWriter._open

    def no_inode_left(self: logs.LogWriter) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logs.LogWriter, "_open", no_inode_left)
    notes: list[str] = []
    w = logs.LogWriter(tmp_path, max_bytes=1 << 20, max_files=2, clock=lambda: T0, report=notes.append,
                       monotonic=clock)  # a container still starts: its output waits for room
    w.write("stdout", b"lost\n")
    assert w.dropped_records == 1 and notes
    monkeypatch.setattr(logs.LogWriter, "_open", real_open)
    w.write("stdout", b"still too soon\n")  # not retried within REOPEN_INTERVAL
    clock.now += logs.LogWriter.REOPEN_INTERVAL
    w.write("stdout", b"written\n")
    w.close()
    assert [e.text for e in logs.read_entries(tmp_path)] == [b"written"]


# -- run records ---------------------------------------------------------------------------------------


def test_a_run_record_a_full_disk_refuses_is_resource_exhausted_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def enospc(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", enospc)
    with pytest.raises(ResourceExhausted, match=r"run\.json: No space left on device"):
        runfile.write_run_file(tmp_path, runfile.RunRecord(pid=1, started_at=1.0))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


# -- the event log ----------------------------------------------------------------------------------------


def test_events_a_full_disk_refuses_still_reach_watchers_and_the_next_agent_starts_a_new_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, boot_id="b")
    epoch = log.epoch
    log.append(EventType.CREATED, container_id="c1", container_name="a")
    real = events_module._append_whole

    def enospc(fd: int, line: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(events_module, "_append_whole", enospc)
    with caplog.at_level(logging.ERROR, logger="agent.runtime.events"):
        for _ in range(5):
            log.append(EventType.STARTED, container_id="c1", container_name="a")  # never raises
    assert [e.sequence for e in log.history()] == [1, 2, 3, 4, 5, 6]
    assert len([r for r in caplog.records if "No space left" in r.getMessage()]) == 1  # rate-limited
    assert not path.with_suffix(".epoch").exists()
    monkeypatch.setattr(events_module, "_append_whole", real)
    log.append(EventType.EXITED, container_id="c1", container_name="a")  # space is back
    log.close()
    again = EventLog(path, boot_id="b")
    # Sequences 2-6 were never written: the next agent must not resume the old epoch.
    assert again.epoch != epoch and again.last_sequence == 7
    again.close()


def test_an_event_line_cut_short_by_a_full_disk_is_cut_off_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    events_module._append_whole(fd, b"one\n")
    real_write = os.write
    calls = {"n": 0}

    def short_then_enospc(target: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(target, bytes(data)[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short_then_enospc)
    with pytest.raises(OSError):
        events_module._append_whole(fd, b"torn line\n")
    monkeypatch.undo()
    os.close(fd)
    assert path.read_bytes() == b"one\n"


# -- status records -------------------------------------------------------------------------------------


def _status() -> records.ContainerStatus:
    return records.ContainerStatus()


def test_status_writes_a_full_disk_refuses_are_retried_until_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    written: list[Path] = []
    failing = {"on": True}

    def write_status(directory: Path, status: records.ContainerStatus) -> None:
        if failing["on"]:
            raise ResourceExhausted(f"cannot write {directory}/status.json: No space left on device")
        written.append(directory)

    monkeypatch.setattr(executor, "write_status", write_status)

    async def scenario() -> None:
        writer = executor.StatusWriter(retry_after=0.01)
        with caplog.at_level(logging.INFO, logger="agent.runtime.executor"):
            writer.save(tmp_path / "a", _status())
            writer.save(tmp_path / "b", _status())
            await writer.flush()
            assert writer.unwritten == 2 and written == []
            await until(lambda: writer.unwritten == 2 and writer._retry is not None)
            failing["on"] = False
            await until(lambda: writer.unwritten == 0 and sorted(written) == [tmp_path / "a", tmp_path / "b"])
            await writer.flush()
        writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "No space left" in m]) == 1  # once per episode, not per retry
    assert any("written again" in m for m in messages)


def test_a_forgotten_status_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(directory: Path, status: records.ContainerStatus) -> None:
        raise ResourceExhausted("No space left on device")

    monkeypatch.setattr(executor, "write_status", full)

    async def scenario() -> None:
        writer = executor.StatusWriter(retry_after=60)
        writer.save(tmp_path / "a", _status())
        await writer.flush()
        assert writer.unwritten == 1
        writer.forget(tmp_path / "a")  # the container was removed
        assert writer.unwritten == 0
        writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


async def until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Bounded poll: the writer's retry is a timer, with no event to wait on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met within timeout"
        await asyncio.sleep(0.005)


def test_container_log_in_a_missing_directory_is_still_an_error(tmp_path: Path) -> None:
    # Not a full disk: the container is gone, and the supervisor must learn it (it kills the container).
    with pytest.raises(FileNotFoundError):
        logs.LogWriter(tmp_path / "gone", max_bytes=1 << 20, max_files=2)
