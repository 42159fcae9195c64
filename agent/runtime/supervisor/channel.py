"""The keeper <-> worker channel: a SOCK_SEQPACKET socketpair, one message per datagram, descriptors
attached with SCM_RIGHTS.

A seqpacket socket keeps message boundaries and delivers a message and its descriptors together, and
what a dead worker sent before dying can still be read before the end of file. Messages are short
ASCII headers, with an opaque blob the worker writes and the keeper stores without parsing, so the
keeper needs no JSON::

    worker -> keeper
      H <pid> <blob>                           + [pidfd, stdout_r, stderr_r]  take custody of a container
      D <pid>                                  the worker has recorded its exit: forget it
      R                                        the worker serves the socket
    keeper -> worker
      A <pid> <status|-> <finished|-> <blob>   + [pidfd, stdout_r, stderr_r]  hand over one container
      Z                                        end of the handover
      E <pid> <status> <finished>              a container's pid 1 was reaped (wait status, unix time)

``status`` is the raw wait status (``os.waitstatus_to_exitcode`` decodes it). Imported by the keeper:
standard library only, no dataclasses.
"""

from __future__ import annotations

import array
import os
import socket

HOLD = "H"
DROP = "D"
READY = "R"
ADOPT = "A"
DONE = "Z"
EXIT = "E"

# Descriptors that travel with H and A, in this order.
CUSTODY_FDS = 3
MAX_MESSAGE = 1 << 16
_INT = array.array("i")


class Message:
    """One decoded message. Fields a kind does not carry are None (``fds`` is then empty)."""

    __slots__ = ("blob", "fds", "finished_at", "kind", "pid", "status")

    def __init__(self, kind: str, *, pid: int | None = None, status: int | None = None,
                 finished_at: float | None = None, blob: bytes | None = None,
                 fds: tuple[int, ...] = ()) -> None:
        self.kind = kind
        self.pid = pid
        self.status = status
        self.finished_at = finished_at
        self.blob = blob
        self.fds = fds

    def __repr__(self) -> str:
        return (f"Message({self.kind!r}, pid={self.pid}, status={self.status}, "
                f"finished_at={self.finished_at}, blob={self.blob!r}, fds={self.fds})")


def hold(pid: int, blob: bytes) -> bytes:
    return b"H %d " % pid + blob


def drop(pid: int) -> bytes:
    return b"D %d" % pid


def ready() -> bytes:
    return b"R"


def adopt(pid: int, status: int | None, finished_at: float | None, blob: bytes) -> bytes:
    return b"A %d %s %s " % (pid, _opt(status), _opt(finished_at)) + blob


def done() -> bytes:
    return b"Z"


def exited(pid: int, status: int, finished_at: float) -> bytes:
    return b"E %d %d %s" % (pid, status, repr(finished_at).encode())


def _opt(value: float | None) -> bytes:
    return b"-" if value is None else repr(value).encode()


def parse(data: bytes, fds: tuple[int, ...] = ()) -> Message:
    """Decode one datagram; ValueError if it is not a message (the caller closes ``fds`` then)."""
    kind = data[:1].decode("ascii", "replace")
    if kind in (READY, DONE):
        _expect(data == kind.encode() and not fds, data)
        return Message(kind)
    if kind == DROP:
        _expect(not fds, data)
        return Message(kind, pid=_pid(data.split(b" ")[1:], data))
    if kind == EXIT:
        parts = data.split(b" ")
        _expect(len(parts) == 4 and not fds, data)
        return Message(kind, pid=_pid(parts[1:2], data), status=int(parts[2]), finished_at=float(parts[3]))
    if kind == HOLD:
        parts = data.split(b" ", 2)
        _expect(len(parts) == 3 and len(fds) == CUSTODY_FDS, data)
        return Message(kind, pid=_pid(parts[1:2], data), blob=parts[2], fds=fds)
    if kind == ADOPT:
        parts = data.split(b" ", 4)
        _expect(len(parts) == 5 and len(fds) == CUSTODY_FDS, data)
        status = None if parts[2] == b"-" else int(parts[2])
        finished_at = None if parts[3] == b"-" else float(parts[3])
        return Message(kind, pid=_pid(parts[1:2], data), status=status, finished_at=finished_at,
                       blob=parts[4], fds=fds)
    raise ValueError(f"unknown message {data[:40]!r}")


def _pid(parts: list[bytes], data: bytes) -> int:
    _expect(len(parts) == 1, data)
    pid = int(parts[0])
    _expect(pid > 0, data)
    return pid


def _expect(condition: bool, data: bytes) -> None:
    if not condition:
        raise ValueError(f"malformed message {data[:40]!r}")


def send(sock: socket.socket, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
    """Send one message (raises BlockingIOError on a full non-blocking socket: nothing was sent)."""
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> Message | None:
    """The next message; None at end of file. Raises BlockingIOError if none is waiting, ValueError
    for a malformed one (its descriptors already closed)."""
    # MSG_CMSG_CLOEXEC: descriptors we receive must never leak into a process we spawn. (Not
    # socket.recv_fds: Python 3.11's ignores its flags argument.)
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(CUSTODY_FDS * _INT.itemsize),
                                             socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    received = tuple(fds)
    if not data and not received:
        return None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError("truncated message")
        return parse(data, received)
    except ValueError:
        for fd in received:
            os.close(fd)
        raise


def resume_line(pid: int, fds: tuple[int, ...], blob: bytes) -> bytes:
    """One container of the manifest a worker that lost its keeper passes to its own re-exec as the
    new keeper (``<pid> <pidfd> <stdout_r> <stderr_r> <blob>``; the descriptors are inherited)."""
    return b"%d %s " % (pid, b" ".join(b"%d" % fd for fd in fds)) + blob + b"\n"


def parse_resume_line(line: bytes) -> tuple[int, tuple[int, ...], bytes]:
    parts = line.rstrip(b"\n").split(b" ", CUSTODY_FDS + 1)
    _expect(len(parts) == CUSTODY_FDS + 2, line)
    fds = tuple(int(part) for part in parts[1:CUSTODY_FDS + 1])
    _expect(all(fd >= 0 for fd in fds) and b"\n" not in parts[-1], line)
    return _pid(parts[:1], line), fds, parts[-1]
