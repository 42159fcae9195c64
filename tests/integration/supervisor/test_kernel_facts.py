"""The kernel behaviour the keeper/worker split rests on (docs/architecture.md, "The daemon never forks a
container; a supervisor does"). Each test is one fact; if one fails, the design's reasoning does too.

They run in forked children so that making a process a subreaper never touches pytest itself.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runtime.supervisor import exitstatus

pytestmark = pytest.mark.integration

_PR_SET_CHILD_SUBREAPER = 36


def in_child(check: Callable[[], None]) -> None:
    """Run ``check`` in a forked child; an assertion there fails the test here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            check()
            os.write(w, b"ok")
        except BaseException as err:
            os.write(w, repr(err).encode()[:4000])
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    assert b"".join(chunks) == b"ok"


def _subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def test_an_orphan_goes_to_the_nearest_subreaper_and_only_a_parent_can_wait_for_it() -> None:
    def check() -> None:
        _subreaper()  # this process plays the keeper
        to_worker_r, to_worker_w = os.pipe()
        to_keeper_r, to_keeper_w = os.pipe()
        worker = os.fork()
        if worker == 0:  # not a subreaper
            intermediate = os.fork()
            if intermediate == 0:
                init = os.fork()
                if init == 0:
                    time.sleep(0.3)
                    os._exit(7)
                os.write(to_worker_w, b"%d" % init)
                os._exit(0)
            os.waitpid(intermediate, 0)
            init = int(os.read(to_worker_r, 32))
            pidfd = os.pidfd_open(init)
            refused = 0
            for wait in (lambda: os.waitpid(init, os.WNOHANG),
                         lambda: os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)):
                try:
                    wait()
                except ChildProcessError:
                    refused += 1
            os.write(to_keeper_w, b"%d %d" % (init, refused))
            time.sleep(5)
            os._exit(0)
        init, refused = map(int, os.read(to_keeper_r, 64).split())
        assert refused == 2  # neither waitpid nor waitid(P_PIDFD) works for a non-parent
        _, status = os.waitpid(init, 0)  # re-parented to us past the worker: ours to reap
        assert os.waitstatus_to_exitcode(status) == 7
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)

    in_child(check)


def test_a_held_duplicate_read_end_keeps_a_writer_from_sigpipe() -> None:
    writer = ["sh", "-c", "i=0; while [ $i -lt 30 ]; do echo $i || exit 99; i=$((i+1)); sleep 0.01; done"]
    # Without a duplicate, the last reader going away kills the writer with SIGPIPE.
    r, w = os.pipe()
    proc = subprocess.Popen(writer, stdout=w)
    os.close(w)
    os.read(r, 2)
    os.close(r)
    assert proc.wait() == -signal.SIGPIPE
    # With one sent elsewhere over SCM_RIGHTS, nothing is lost and a later reader gets the rest.
    r, w = os.pipe()
    keeper, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(worker, [b"H"], [r])
    _, (held,), _, _ = socket.recv_fds(keeper, 16, 1)
    proc = subprocess.Popen(writer, stdout=w)
    os.close(w)
    first = os.read(r, 2)
    os.close(r)
    assert proc.wait() == 0
    rest = b""
    while chunk := os.read(held, 4096):
        rest += chunk
    os.close(held)
    keeper.close()
    worker.close()
    assert (first + rest).split() == [str(i).encode() for i in range(30)]


def test_a_listener_copy_keeps_connections_waiting_for_the_next_acceptor(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    kept = listener.dup()  # the keeper's copy
    listener.close()  # the worker's copy died with it
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(b"hello\n")
    conn, _ = kept.accept()  # the next worker
    assert conn.recv(16) == b"hello\n"
    for sock in (conn, client, kept):
        sock.close()


def test_a_pidfd_never_reaches_a_reaped_process_and_keeps_its_status_after() -> None:
    child = subprocess.Popen(["sh", "-c", "exit 7"])
    pidfd = os.pidfd_open(child.pid)
    try:
        assert select.select([pidfd], [], [], 10)[0]  # readable once it has exited
        # A zombie: still reachable (signal 0), and /proc has its wait status.
        assert exitstatus.still_unreaped(pidfd)
        assert exitstatus.zombie_status(child.pid) == 7 << 8
        child.wait()
        assert not exitstatus.still_unreaped(pidfd)
        with pytest.raises(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        # Once reaped, Linux >= 6.15 still has the status for the pidfd (PIDFD_INFO_EXIT).
        expected = 7 << 8 if _kernel_at_least(6, 15) else None
        assert exitstatus.reaped_status(pidfd) == expected
        assert exitstatus.exit_status(child.pid, pidfd) == expected
    finally:
        os.close(pidfd)


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split(".")
    return (int(release[0]), int(release[1].split("-")[0])) >= (major, minor)
