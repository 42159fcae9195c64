"""A worker's rebuild from a handover, driven in-process with real pipes, pidfds and run.json files."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import logs, runfile
from agent.runtime.supervisor.adoption import ContainerRecord, Handed
from agent.runtime.supervisor.worker import Worker

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        yield Worker(tmp_path, listener=listener, keeper_link=None)
    finally:
        listener.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "100"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def handed(tmp_path: Path, cid: str, pid: int, *, status: int | None = None, orphan: bool = False,
           output: bytes = b"") -> tuple[Handed, tuple[int, ...]]:
    directory = tmp_path / "containers" / cid
    directory.mkdir(parents=True, exist_ok=True)
    record = ContainerRecord(id=cid, directory=str(directory), started_at=100.0, log_max_bytes=1 << 20,
                             log_max_files=2, orphan=orphan)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.write(out_w, output)
    os.close(out_w)
    os.close(err_w)
    fds = (os.pidfd_open(pid), out_r, err_r)
    return Handed(pid=pid, status=status, finished_at=None if status is None else 200.0,
                  blob=record.to_blob(), fds=fds), fds


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_an_exit_reaped_while_no_worker_ran_is_recorded_with_its_output(
    worker: Worker, tmp_path: Path, sleeper: subprocess.Popen[bytes],
) -> None:
    item, fds = handed(tmp_path, "done", sleeper.pid, status=7 << 8, output=b"last words\n")
    worker._adopt([item])
    directory = tmp_path / "containers" / "done"
    assert runfile.read_run_file(directory) == runfile.RunRecord(
        pid=sleeper.pid, started_at=100.0, exit_code=7, finished_at=200.0)
    assert [e.text for e in logs.read_entries(directory)] == [b"last words"]
    assert all(closed(fd) for fd in fds) and worker._list() == {"containers": {}}


def test_a_running_container_gets_its_run_record_back(
    worker: Worker, tmp_path: Path, sleeper: subprocess.Popen[bytes],
) -> None:
    item, _ = handed(tmp_path, "up", sleeper.pid)
    worker._adopt([item])
    assert runfile.read_run_file(tmp_path / "containers" / "up") == runfile.RunRecord(
        pid=sleeper.pid, started_at=100.0)
    assert worker._list() == {"containers": {"up": {"pid": sleeper.pid, "started_at": 100.0}}}


def test_an_exit_already_recorded_is_kept_and_not_supervised_again(
    worker: Worker, tmp_path: Path, sleeper: subprocess.Popen[bytes],
) -> None:
    # An orphan whose exit a previous worker wrote (with its own clock) before dying unreleased.
    item, fds = handed(tmp_path, "gone", sleeper.pid, orphan=True)
    recorded = runfile.RunRecord(pid=sleeper.pid, started_at=100.0, exit_code=3, finished_at=150.0)
    runfile.write_run_file(tmp_path / "containers" / "gone", recorded)
    worker._adopt([item])
    assert runfile.read_run_file(tmp_path / "containers" / "gone") == recorded
    assert all(closed(fd) for fd in fds) and worker._list() == {"containers": {}}


def test_a_container_whose_directory_is_gone_is_killed_not_fatal(
    worker: Worker, tmp_path: Path, sleeper: subprocess.Popen[bytes],
) -> None:
    # Every worker the keeper starts gets the same handover: one container it cannot log for must not
    # crash them all (and leave every other container without a worker).
    item, fds = handed(tmp_path, "vanished", sleeper.pid)
    (tmp_path / "containers" / "vanished").rmdir()
    ok, _ = handed(tmp_path, "fine", os.getpid())
    worker._adopt([ok, item])  # "fine" first: its log fd must not reuse a number closed for "vanished"
    assert sleeper.wait(10) == -9
    assert all(closed(fd) for fd in fds)
    assert set(worker._list()["containers"]) == {"fine"}
