"""The Connect server (agent/connect.py) and the CLI's transports (agent/cli/transport.py), end to end on
real unix sockets: one set of servicers served over gRPC and Connect at once, as the agent does, called
through both transports, must give the same answers, the same errors with the same trailing metadata, the
same peer; a client that hangs up cancels its call; a slow reader holds back only its own stream."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import errors
from agent.cli.transport import AgentTransport, ConnectTransport, GrpcTransport, RpcFailure
from agent.connect import ConnectServer
from agent.server import streaming, unary
from agent.usage.metrics import AgentMetrics, RpcMetricsInterceptor
from proto.agent.v1 import agent_lite as lite
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration]

BIG = 64 << 10


class FakeContainers(pb_grpc.ContainersServicer):
    """Just enough of the Containers service to exercise every call shape and error path, through the
    agent's own ``unary``/``streaming`` wrappers (so errors carry the agent's metadata)."""

    def __init__(self) -> None:
        self.wait_cancelled = threading.Event()
        self.wait_started = threading.Event()
        self.produced = 0

    @unary
    async def GetContainer(self, request: pb.ContainerRef, context: Any) -> pb.Container:
        if request.id == "missing":
            raise errors.NotFound("no such container: missing")
        if request.id == "launch":
            raise errors.LaunchError('exec "/nope": No such file or directory', kind="not-found")
        if request.id == "crash":
            raise RuntimeError("a bug")
        return pb.Container(id=request.id, name=context.peer(), pid=42,
                            spec=pb.ContainerSpec(image="busybox", labels={"a": "b"}))

    @unary
    async def WaitContainer(self, request: pb.ContainerRef, context: Any) -> pb.WaitContainerResponse:
        self.wait_started.set()
        try:
            await asyncio.Event().wait()  # until the client goes away
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise
        raise AssertionError("unreachable")

    @streaming
    async def ContainerLogs(self, request: pb.ContainerLogsRequest, context: Any
                            ) -> AsyncIterator[pb.LogEntry]:
        if request.id == "flood":
            while True:
                self.produced += 1
                yield pb.LogEntry(line=b"x" * BIG)
        for i in range(request.tail or 3):
            yield pb.LogEntry(line=f"line {i}".encode(), stream=pb.LOG_STREAM_STDOUT)
        if request.id == "fails":
            raise errors.LaunchError("gone wrong", kind="not-executable")


class FakeImages(pb_grpc.ImagesServicer):
    @streaming
    async def ImportImage(self, request_iterator: AsyncIterator[pb.ImportImageRequest], context: Any
                          ) -> AsyncIterator[pb.ImportImageProgress]:
        first = await anext(aiter(request_iterator))
        if first.name == "evil":  # fails before reading the rest of the request, as a bad path import does
            raise errors.InvalidArgument("entry '../../escaped': path contains '..'")
        total = len(first.chunk)
        name = first.name
        async for req in request_iterator:
            name = name or req.name
            total += len(req.chunk)
        yield pb.ImportImageProgress(phase="unpacking", bytes=total)
        yield pb.ImportImageProgress(phase="done", image=pb.Image(id=name, size=total))


class Servers:
    """A gRPC server and a Connect server sharing servicers, on their own loop in a thread."""

    def __init__(self, base: Path) -> None:
        self.grpc_path = base / "api.sock"
        self.http_path = base / "api.sock.http"
        self.containers = FakeContainers()
        self.metrics = AgentMetrics(version="t", host_id="t")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _start(self) -> None:
        interceptors = [RpcMetricsInterceptor(self.metrics)]
        self.grpc = grpc.aio.server(interceptors=interceptors)
        self.connect = ConnectServer(interceptors=interceptors)
        tee = self.connect.capture(self.grpc)
        pb_grpc.add_ContainersServicer_to_server(self.containers, tee)
        pb_grpc.add_ImagesServicer_to_server(FakeImages(), tee)
        self.grpc.add_insecure_port(f"unix://{self.grpc_path}")
        await self.connect.bind_unix(self.http_path)
        await self.grpc.start()
        await self.connect.start()

    def close(self) -> None:
        async def stop() -> None:
            await asyncio.gather(self.grpc.stop(0), self.connect.stop(0))

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _transports(s: Servers) -> list[Any]:
    return [ConnectTransport(str(s.http_path)), GrpcTransport(f"unix://{s.grpc_path}")]


def _poll(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_unary_answers_are_the_same_over_both_transports(servers: Servers) -> None:
    answers = []
    for transport in _transports(servers):
        stub = lite.ContainersStub(transport)
        answers.append(stub.GetContainer(lite.ContainerRef(id="abc")))
        transport.close()
    connect, grpc_answer = answers
    assert connect == grpc_answer
    assert (connect.id, connect.pid, connect.spec.labels) == ("abc", 42, {"a": "b"})
    assert connect.name == grpc_answer.name == "unix:"  # peer(): unix-only operations keep working
    assert stat.S_IMODE(servers.http_path.stat().st_mode) == 0o600


@pytest.mark.parametrize(("ref", "code", "metadata"), [
    ("missing", "NOT_FOUND", {"shoal-error": "NotFound"}),
    ("launch", "FAILED_PRECONDITION", {"shoal-error": "LaunchError", "shoal-launch-kind": "not-found"}),
    ("crash", "UNKNOWN", {}),
])
def test_errors_carry_code_message_and_trailing_metadata(servers: Servers, ref: str, code: str,
                                                         metadata: dict[str, str]) -> None:
    failures = []
    for transport in _transports(servers):
        with pytest.raises(RpcFailure) as info:
            lite.ContainersStub(transport).GetContainer(lite.ContainerRef(id=ref))
        failures.append(info.value)
        transport.close()
    for failure in failures:
        assert failure.code == code
        assert {k: v for k, v in failure.metadata.items() if k.startswith("shoal-")} == metadata
    assert failures[0].message == failures[1].message


def test_server_streams_in_order_then_the_error_with_its_metadata(servers: Servers) -> None:
    for transport in _transports(servers):
        stub = lite.ContainersStub(transport)
        lines = [e.line for e in stub.ContainerLogs(lite.ContainerLogsRequest(id="ok", tail=5))]
        assert lines == [f"line {i}".encode() for i in range(5)]
        seen = []
        with pytest.raises(RpcFailure) as info:
            for entry in stub.ContainerLogs(lite.ContainerLogsRequest(id="fails")):
                seen.append(entry.line)
        assert len(seen) == 3  # everything before the error arrives first
        assert info.value.code == "FAILED_PRECONDITION"
        assert info.value.metadata["shoal-launch-kind"] == "not-executable"
        # The connection is still good for the next call.
        assert stub.GetContainer(lite.ContainerRef(id="after")).id == "after"
        transport.close()


def test_calls_share_one_kept_alive_connection(servers: Servers) -> None:
    transport = ConnectTransport(str(servers.http_path))
    stub = lite.ContainersStub(transport)
    for i in range(5):
        assert stub.GetContainer(lite.ContainerRef(id=str(i))).id == str(i)
        list(stub.ContainerLogs(lite.ContainerLogsRequest(id="ok")))
    assert len(servers.connect._connections) == 1
    transport.close()
    assert _poll(lambda: not servers.connect._connections)


def test_a_client_that_hangs_up_cancels_its_call(servers: Servers) -> None:
    transport = ConnectTransport(str(servers.http_path))
    transport.unary_nowait(lite.ContainersStub.WaitContainer_method, lite.ContainerRef(id="x"))
    assert servers.containers.wait_started.wait(10)
    assert not servers.containers.wait_cancelled.is_set()
    transport.close()
    assert servers.containers.wait_cancelled.wait(10)


def test_a_slow_reader_holds_back_its_own_stream(servers: Servers) -> None:
    transport = ConnectTransport(str(servers.http_path))
    stream = lite.ContainersStub(transport).ContainerLogs(lite.ContainerLogsRequest(id="flood"))
    assert len(next(stream).line) == BIG
    # The handler may run ahead only by what the socket buffers hold (a few hundred KiB), not without
    # bound: it must not reach 64 MiB of queued output while nobody reads.
    assert not _poll(lambda: servers.containers.produced >= 1024, timeout=2)
    before = servers.containers.produced
    for _ in range(50):
        next(stream)
    assert _poll(lambda: servers.containers.produced > before)  # reading lets it go on
    stream.cancel()
    transport.close()


def test_client_streaming_import(servers: Servers) -> None:
    chunks = [lite.ImportImageRequest(name="img", chunk=b"")] + [
        lite.ImportImageRequest(chunk=os.urandom(100_000)) for _ in range(30)]
    for transport in _transports(servers):
        progress = list(lite.ImagesStub(transport).ImportImage(iter(chunks)))
        assert [p.phase for p in progress] == ["unpacking", "done"]
        assert progress[-1].image.size == 3_000_000 and progress[-1].image.id == "img"
        transport.close()


def test_an_early_answer_to_a_request_stream_is_not_lost(servers: Servers) -> None:
    # The agent answers before reading the whole request and the client is still sending: it must get
    # the answer (not "cannot reach the agent"), every time.
    transport = ConnectTransport(str(servers.http_path))
    requests = [lite.ImportImageRequest(name="evil", chunk=b"")] + [
        lite.ImportImageRequest(chunk=b"x" * 4096) for _ in range(16)]
    for _ in range(200):
        with pytest.raises(RpcFailure) as info:
            list(lite.ImagesStub(transport).ImportImage(iter(requests)))
        assert info.value.code == "INVALID_ARGUMENT" and ".." in info.value.message
    transport.close()


def test_calls_are_timed_by_the_same_interceptors(servers: Servers) -> None:
    transport = ConnectTransport(str(servers.http_path))
    with pytest.raises(RpcFailure):
        lite.ContainersStub(transport).GetContainer(lite.ContainerRef(id="missing"))
    transport.close()
    count = servers.metrics.registry.get_sample_value(
        "shoal_agent_rpc_seconds_count",
        {"method": "/shoal.agent.v1.Containers/GetContainer", "code": "NOT_FOUND"})
    assert count == 1


def _raw(path: Path, request: bytes, *, half_close: bool = True) -> bytes:
    """Send ``request`` and read until the server closes. With ``half_close`` the client then shuts
    its side (which a server takes as "gone" once a call is running, as Go's does)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (and hang up) before reading everything, as HTTP allows
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_bad_requests_get_clear_http_errors(servers: Servers) -> None:
    assert _raw(servers.http_path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    wrong_type = (b"POST /shoal.agent.v1.Containers/GetContainer HTTP/1.1\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 0\r\n\r\n")
    assert _raw(servers.http_path, wrong_type).startswith(b"HTTP/1.1 415 ")
    unknown = (b"POST /shoal.agent.v1.Containers/Nope HTTP/1.1\r\nContent-Type: application/proto\r\n"
               b"Content-Length: 0\r\n\r\n")
    answer = _raw(servers.http_path, unknown)
    assert answer.startswith(b"HTTP/1.1 501 ") and b'"unimplemented"' in answer
    huge = (b"POST /shoal.agent.v1.Containers/GetContainer HTTP/1.1\r\nContent-Type: application/proto\r\n"
            b"Content-Length: %d\r\n\r\n" % (5 << 20)) + b"\n" * (5 << 20)
    answer = _raw(servers.http_path, huge)
    assert answer.startswith(b"HTTP/1.1 429 ") and b"resource_exhausted" in answer


def test_a_deadline_ends_the_call(servers: Servers) -> None:
    body = lite.ContainerRef(id="x").SerializeToString()
    request = (b"POST /shoal.agent.v1.Containers/WaitContainer HTTP/1.1\r\n"
               b"Content-Type: application/proto\r\nConnection: close\r\n"
               b"Connect-Timeout-Ms: 200\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    answer = _raw(servers.http_path, request, half_close=False)
    assert answer.startswith(b"HTTP/1.1 504 ") and b'"deadline_exceeded"' in answer
    assert servers.containers.wait_cancelled.wait(10)  # the handler saw the cancellation


def test_stopping_the_server_ends_streams_in_flight(servers: Servers) -> None:
    transport = ConnectTransport(str(servers.http_path))
    stream = lite.ContainersStub(transport).ContainerLogs(lite.ContainerLogsRequest(id="flood"))
    next(stream)
    servers.run(servers.connect.stop(0))
    with pytest.raises(RpcFailure) as info:
        for _ in stream:
            pass
    assert info.value.code == "UNAVAILABLE"
    transport.close()


def test_the_cli_picks_connect_grpc_or_says_the_agent_is_down(servers: Servers, tmp_path: Path) -> None:
    both = AgentTransport(f"unix://{servers.grpc_path}")
    assert isinstance(both.chosen, ConnectTransport)
    both.close()
    old = tmp_path / "old"
    old.mkdir()
    (old / "api.sock").symlink_to(servers.grpc_path)  # an agent with only the gRPC socket
    grpc_only = AgentTransport(f"unix://{old / 'api.sock'}")
    assert isinstance(grpc_only.chosen, GrpcTransport)
    assert lite.ContainersStub(grpc_only).GetContainer(lite.ContainerRef(id="y")).id == "y"
    grpc_only.close()
    with pytest.raises(RpcFailure) as info:
        AgentTransport(f"unix://{tmp_path / 'nothing.sock'}").chosen  # noqa: B018
    assert info.value.code == "UNAVAILABLE" and "shoal-error" not in info.value.metadata
