"""Keeper <-> worker messages: encoding round trips, refusal of garbage, and descriptors in transit."""

from __future__ import annotations

import os
import socket

import pytest

from agent.runtime.supervisor import channel


def test_messages_round_trip() -> None:
    blob = b'{"id":"c1","x":"with spaces and - dashes"}'
    hold = channel.parse(channel.hold(42, blob), (3, 4, 5))
    assert (hold.kind, hold.pid, hold.blob, hold.fds) == (channel.HOLD, 42, blob, (3, 4, 5))
    adopt = channel.parse(channel.adopt(42, 7 << 8, 1700000000.123456, blob), (3, 4, 5))
    assert (adopt.kind, adopt.pid, adopt.status, adopt.finished_at, adopt.blob) == (
        channel.ADOPT, 42, 7 << 8, 1700000000.123456, blob)
    running = channel.parse(channel.adopt(42, None, None, blob), (3, 4, 5))
    assert (running.status, running.finished_at) == (None, None)
    exited = channel.parse(channel.exited(42, 9, 2.5))
    assert (exited.kind, exited.pid, exited.status, exited.finished_at) == (channel.EXIT, 42, 9, 2.5)
    assert channel.parse(channel.drop(42)).pid == 42
    assert channel.parse(channel.ready()).kind == channel.READY
    assert channel.parse(channel.done()).kind == channel.DONE


@pytest.mark.parametrize("data, fds", [
    (b"", ()), (b"X 1", ()), (b"H 1 blob", ()), (b"H 0 blob", (3, 4, 5)), (b"H x blob", (3, 4, 5)),
    (b"E 1 2", ()), (b"E 1 x 2.0", ()), (b"D", ()), (b"D 1 2", ()), (b"R", (3,)), (b"Z extra", ()),
    (b"A 1 - - blob", (3, 4)), (b"A 1 q - blob", (3, 4, 5)),
])
def test_garbage_is_refused(data: bytes, fds: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        channel.parse(data, fds)


def test_descriptors_travel_with_their_message_and_end_of_file_is_none() -> None:
    keeper, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        channel.send(worker, channel.hold(7, b"blob"), (r, r, r))
        channel.send(worker, channel.ready())
        worker.close()
        message = channel.receive(keeper)
        assert message is not None and message.kind == channel.HOLD and len(message.fds) == 3
        os.write(w, b"x")
        assert os.read(message.fds[0], 1) == b"x"  # the same pipe, through a new descriptor
        assert not os.get_inheritable(message.fds[0])  # never leaks into a spawned worker
        for fd in message.fds:
            os.close(fd)
        follow = channel.receive(keeper)
        assert follow is not None and follow.kind == channel.READY
        assert channel.receive(keeper) is None
    finally:
        keeper.close()
        os.close(r)
        os.close(w)


def test_a_malformed_message_closes_its_descriptors() -> None:
    keeper, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        channel.send(worker, b"H not-a-pid blob", (r, r, r))
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError):
            channel.receive(keeper)
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        keeper.close()
        worker.close()
        os.close(r)
        os.close(w)


def test_resume_manifest_lines_round_trip() -> None:
    line = channel.resume_line(42, (10, 11, 12), b'{"id":"c 1"}')
    assert channel.parse_resume_line(line) == (42, (10, 11, 12), b'{"id":"c 1"}')
    with pytest.raises(ValueError):
        channel.parse_resume_line(b"42 10 11 blob\n")
