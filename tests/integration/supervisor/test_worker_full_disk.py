"""The worker under a full disk, in-process with real pipes and pidfds: an exit it cannot write to run.json
is still announced, kept (with the keeper's custody) and announced again to a client that connects, and
written once there is room; then the container is released."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.errors import ResourceExhausted
from agent.runtime import runfile
from agent.runtime.supervisor.worker import Worker, _Client
from tests.integration.supervisor.test_worker_adoption import closed, handed, sleeper, worker  # noqa: F401

pytestmark = pytest.mark.integration


def test_an_exit_a_full_disk_cannot_record_is_announced_kept_and_written_later(
    worker: Worker, tmp_path: Path, sleeper: subprocess.Popen[bytes],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = runfile.write_run_file

    def full(directory: Path | str, record: runfile.RunRecord) -> None:
        raise ResourceExhausted(f"cannot write {directory}/run.json: No space left on device")

    monkeypatch.setattr(runfile, "write_run_file", full)
    item, fds = handed(tmp_path, "done", sleeper.pid, status=7 << 8, output=b"last words\n")
    worker._adopt([item])  # exited while no worker ran: recorded (or not) at once

    # Not on disk, so not released: still listed, its descriptors still held, its exit kept.
    assert runfile.read_run_file(tmp_path / "containers" / "done") is None
    assert "done" in worker._list()["containers"] and not closed(fds[0])
    assert worker._containers["done"].exit_event is not None

    # An agent connecting now learns of the exit right after the listing.
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        client = _Client(ours)
        worker._sel.register(ours, selectors.EVENT_READ, client)
        worker._handle(client, b'{"req": 1, "op": "list"}')
        theirs.settimeout(5)
        lines = _read_lines(theirs, 2)
    finally:
        worker._sel.unregister(ours)
        ours.close()
        theirs.close()
    assert lines[0]["re"] == 1 and "done" in lines[0]["containers"]
    assert lines[1] == {"event": "exit", "id": "done", "pid": sleeper.pid, "exit_code": 7, "signal": None,
                        "finished_at": 200.0, "lost": None}

    # Still full: the retry keeps it.
    worker._retry_at = time.monotonic()
    worker._retry_run_files()
    assert "done" in worker._list()["containers"]

    # Space returns: written on the next retry, then released.
    monkeypatch.setattr(runfile, "write_run_file", real_write)
    assert worker._retry_at is not None
    worker._retry_at = time.monotonic()
    worker._retry_run_files()
    assert runfile.read_run_file(tmp_path / "containers" / "done") == runfile.RunRecord(
        pid=sleeper.pid, started_at=100.0, exit_code=7, finished_at=200.0)
    assert worker._list() == {"containers": {}} and all(closed(fd) for fd in fds)
    assert worker._retry_at is None


def test_a_record_for_a_removed_container_is_given_up(
    worker: Worker, tmp_path: Path, sleeper: subprocess.Popen[bytes],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(directory: Path | str, record: runfile.RunRecord) -> None:
        raise ResourceExhausted("No space left on device")

    monkeypatch.setattr(runfile, "write_run_file", full)
    item, fds = handed(tmp_path, "gone", sleeper.pid, status=0)
    worker._adopt([item])
    assert "gone" in worker._list()["containers"]
    for name in os.listdir(tmp_path / "containers" / "gone"):
        os.unlink(tmp_path / "containers" / "gone" / name)
    os.rmdir(tmp_path / "containers" / "gone")  # the agent removed it
    worker._retry_at = time.monotonic()
    worker._retry_run_files()
    # Nothing left to write it into: the worker must not hold it (and stay busy) forever.
    assert worker._list() == {"containers": {}} and all(closed(fd) for fd in fds)


def _read_lines(sock: socket.socket, n: int) -> list[dict[str, object]]:
    data = b""
    while data.count(b"\n") < n:
        chunk = sock.recv(65536)
        assert chunk, "the worker closed the connection"
        data += chunk
    return [json.loads(line) for line in data.splitlines()[:n]]
