"""How the CLI reaches an agent: Connect over HTTP/1.1 on the agent's unix socket, else gRPC.

A local agent serves its API twice: gRPC on ``PATH`` and the Connect protocol on ``PATH.http``
(``agent/connect.py``). The CLI speaks Connect with a few dozen lines of HTTP/1.1 over a plain socket and
the pure-Python codec of ``agent/protolite.py``, so a ``shoal`` process never imports grpc or the
protobuf runtime (together ≈ 140 ms of a 24 ms interpreter start). Remote agents (TCP + mTLS) and agents
without the HTTP socket (older ones) get gRPC, imported only then, carrying the same lite messages as
raw bytes: the code above the transport is the same either way.

Every failure comes out as ``RpcFailure`` with gRPC's status name, the agent's message and its trailing
metadata (``shoal-error``, ``shoal-launch-kind``). An agent that cannot be reached, or that goes away in
the middle of a call, is ``UNAVAILABLE`` without ``shoal-error``.
"""

from __future__ import annotations

import _socket  # the C module: socket.py would cost every CLI process ≈ 6 ms (selectors, enum tables)
import os

from agent import connect_protocol as cp

TYPE_CHECKING = False  # not typing's: importing typing costs every CLI process milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, TypeVar

    from agent.protolite import Message, Method, Stream, Transport

    Req = TypeVar("Req", bound=Message)
    Resp = TypeVar("Resp", bound=Message)


class RpcFailure(Exception):
    """A call that did not succeed: ``code`` is gRPC's status name (``"NOT_FOUND"``)."""

    def __init__(self, code: str, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message
        self.metadata = metadata or {}


def _unreachable(where: str, err: OSError) -> RpcFailure:
    return RpcFailure("UNAVAILABLE", f"cannot connect to {where}: {err.strerror or err}")


# -- Connect over HTTP/1.1 on a unix socket ------------------------------------------------------------

def _unix_socket(path: str) -> _socket.socket:
    """A connected unix stream socket; OSError (ENOENT, ECONNREFUSED...) if nobody listens there."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


class _Reader:
    """Buffered reads from a socket: what ``socket.makefile("rb")`` gives, without importing socket.py."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _fill(self) -> bool:
        data = self._sock.recv(1 << 16)
        self._buffer += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        """Up to and including the next newline (at most ``limit`` bytes); less only at EOF."""
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) >= limit or not self._fill():
                return self._take(min(limit, len(self._buffer)))

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, waiting for at least one; b"" at EOF."""
        if not self._buffer and not self._fill():
            return b""
        return self._take(min(n, len(self._buffer)))

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


class _HttpConnection:
    """One HTTP/1.1 connection; requests are sent whole, responses read as the caller needs them."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.rfile = _Reader(sock)
        self.reusable = True

    def send(self, path: str, content_type: str, body: bytes) -> None:
        head = (f"POST {path} HTTP/1.1\r\nHost: shoal-agent\r\nContent-Type: {content_type}\r\n"
                f"Connect-Protocol-Version: {cp.PROTOCOL_VERSION}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode() + body)

    def send_chunked(self, path: str, content_type: str, chunks: Iterable[bytes]) -> None:
        head = (f"POST {path} HTTP/1.1\r\nHost: shoal-agent\r\nContent-Type: {content_type}\r\n"
                f"Connect-Protocol-Version: {cp.PROTOCOL_VERSION}\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.sock.sendall(head.encode())
        for chunk in chunks:
            if chunk:
                self.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        self.sock.sendall(b"0\r\n\r\n")

    def read_head(self) -> tuple[int, dict[str, str]]:
        line = self.rfile.readline(1 << 16)
        if not line:
            raise ConnectionResetError("the agent closed the connection")
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ConnectionResetError(f"not an HTTP response: {line[:60]!r}")
        headers: dict[str, str] = {}
        while True:
            line = self.rfile.readline(1 << 16)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return int(parts[1]), headers

    def body(self, headers: dict[str, str]) -> _Body:
        return _Body(self.rfile, headers)

    def close(self) -> None:
        self.reusable = False
        self.sock.close()


class _Body:
    """A response body: ``Content-Length``, chunked, or up to the end of the connection."""

    def __init__(self, rfile: _Reader, headers: dict[str, str]) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left: int | None = None if self._chunked else int(headers.get("content-length", "-1"))
        if self._left == -1:
            self._left = None  # read to EOF
            self._to_eof = True
        else:
            self._to_eof = False
        self.ended = self._left == 0

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, fewer only at the end of the body."""
        out = bytearray()
        while len(out) < n and not self.ended:
            if self._chunked and not self._left:
                size_line = self._rfile.readline(1024)
                if not size_line:
                    raise ConnectionResetError("response ends inside a chunk header")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                        pass
                    self.ended = True
                    break
                self._left = size
            want = n - len(out) if self._left is None else min(n - len(out), self._left)
            data = self._rfile.read(want)
            if not data:
                if self._to_eof:
                    self.ended = True
                    break
                raise ConnectionResetError("the agent closed the connection mid-response")
            out += data
            if self._left is not None:
                self._left -= len(data)
                if self._left == 0:
                    if self._chunked:
                        self._rfile.readline(16)  # CRLF after the chunk
                    else:
                        self.ended = True
        return bytes(out)

    def read_all(self) -> bytes:
        out = bytearray()
        while not self.ended:
            out += self.read(1 << 16)
        return bytes(out)


def _end_stream_failure(payload: bytes) -> RpcFailure | None:
    if payload.strip() in (b"", b"{}"):
        return None  # the common case: no json import
    import json

    try:
        end = json.loads(payload)
    except ValueError:
        return RpcFailure("INTERNAL", "the agent sent an unreadable end of stream")
    error = end.get("error")
    if not error:
        return None
    metadata = {k: v[0] if isinstance(v, list) and v else str(v) for k, v in end.get("metadata", {}).items()}
    return RpcFailure(cp.code_from_connect(str(error.get("code", ""))), str(error.get("message", "")),
                      metadata)


class _ConnectStream:
    """Messages of one streaming response, decoded as they arrive."""

    def __init__(self, transport: ConnectTransport, conn: _HttpConnection, response: type[Any]) -> None:
        self._transport = transport
        self._conn = conn
        self._response = response
        self._body: _Body | None = None
        self._done = False

    def __iter__(self) -> _ConnectStream:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            if self._body is None:
                status, headers = self._conn.read_head()
                self._body = self._conn.body(headers)
                if status != 200:
                    raise _unary_failure(status, headers, self._body.read_all())
            header = self._body.read(cp.ENVELOPE_HEADER)
            if len(header) < cp.ENVELOPE_HEADER:
                raise ConnectionResetError("the stream ended without its end-of-stream message")
            flags, length = cp.parse_envelope_header(header)
            payload = self._body.read(length)
            if len(payload) < length:
                raise ConnectionResetError("the stream ended inside a message")
        except OSError as err:
            self._finish(reuse=False)
            raise RpcFailure("UNAVAILABLE", f"connection to the agent lost: {err}") from None
        except RpcFailure:
            self._finish(reuse=False)
            raise
        if flags & cp.FLAG_END_STREAM:
            self._body.read_all()
            self._finish(reuse=True)
            failure = _end_stream_failure(payload)
            if failure is not None:
                raise failure
            raise StopIteration
        return self._response.FromString(payload)

    def _finish(self, *, reuse: bool) -> None:
        self._done = True
        self._transport._release(self._conn, reuse=reuse)

    def cancel(self) -> None:
        if not self._done:
            self._finish(reuse=False)  # closing the socket cancels the call on the agent


def _unary_failure(status: int, headers: dict[str, str], body: bytes) -> RpcFailure:
    metadata = {k[len("trailer-"):]: v for k, v in headers.items() if k.startswith("trailer-")}
    if headers.get("content-type", "").startswith(cp.ERROR_CONTENT_TYPE):
        import json

        try:
            error = json.loads(body)
            return RpcFailure(cp.code_from_connect(str(error.get("code", ""))), str(error.get("message", "")),
                              metadata)
        except ValueError:
            pass
    text = body[:200].decode(errors="replace")
    return RpcFailure(cp.code_from_http_status(status), f"HTTP {status}: {text}", metadata)


class ConnectTransport:
    """Calls over the Connect socket at ``path``; one kept-alive connection, more only for overlap."""

    def __init__(self, path: str, first: _socket.socket | None = None, *,
                 timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout  # seconds a unary call may wait for its answer (None: no limit)
        self._idle: _HttpConnection | None = _HttpConnection(first) if first is not None else None
        self._detached: list[_HttpConnection] = []  # unary_nowait calls, alive until close()

    def _take(self) -> _HttpConnection:
        conn, self._idle = self._idle, None
        if conn is not None:
            return conn
        try:
            return _HttpConnection(_unix_socket(self.path))
        except OSError as err:
            raise _unreachable(self.path, err) from None

    def _release(self, conn: _HttpConnection, *, reuse: bool) -> None:
        if reuse and conn.reusable and self._idle is None:
            self._idle = conn
        else:
            conn.close()

    def unary(self, method: Method[Req, Resp], request: Req) -> Resp:
        payload = request.SerializeToString()
        for attempt in (1, 2):
            reused = self._idle is not None
            conn = self._take()
            conn.sock.settimeout(self.timeout)
            try:
                conn.send(method.path, cp.UNARY_CONTENT_TYPE, payload)
                status, headers = conn.read_head()
                body = conn.body(headers).read_all()
            except OSError as err:
                conn.close()
                if isinstance(err, TimeoutError):
                    raise RpcFailure("UNAVAILABLE", f"no answer within {self.timeout:g}s") from None
                if reused and attempt == 1:
                    continue  # a kept-alive connection the agent had closed: once more on a new one
                raise RpcFailure("UNAVAILABLE", f"connection to the agent lost: {err}") from None
            self._release(conn, reuse=True)
            if status == 200:
                return method.response.FromString(body)
            raise _unary_failure(status, headers, body)
        raise AssertionError("unreachable")

    def _take_untimed(self) -> _HttpConnection:
        """A connection for a call that may last (a stream, a detached call): no unary deadline on it."""
        conn = self._take()
        if self.timeout is not None:
            conn.sock.settimeout(None)
        return conn

    def unary_nowait(self, method: Method[Req, Resp], request: Req) -> None:
        conn = self._take_untimed()
        try:
            conn.send(method.path, cp.UNARY_CONTENT_TYPE, request.SerializeToString())
        except OSError as err:
            conn.close()
            raise RpcFailure("UNAVAILABLE", f"connection to the agent lost: {err}") from None
        self._detached.append(conn)  # its answer is never read; closing it would cancel the call

    def server_stream(self, method: Method[Req, Resp], request: Req) -> Stream[Resp]:
        conn = self._take_untimed()
        try:
            conn.send(method.path, cp.STREAM_CONTENT_TYPE, cp.envelope(request.SerializeToString()))
        except OSError as err:
            conn.close()
            raise RpcFailure("UNAVAILABLE", f"connection to the agent lost: {err}") from None
        return _ConnectStream(self, conn, method.response)

    def stream_stream(self, method: Method[Req, Resp], requests: Iterable[Req]) -> Stream[Resp]:
        # Half duplex, as HTTP/1.1 allows: the whole request stream, then the responses.
        conn = self._take_untimed()
        try:
            conn.send_chunked(method.path, cp.STREAM_CONTENT_TYPE,
                              (cp.envelope(r.SerializeToString()) for r in requests))
        except (BrokenPipeError, ConnectionResetError):
            # The agent may answer (an error, typically) before reading all of the request, and hang
            # up: its answer is waiting to be read. If it is not, reading says the connection was lost.
            conn.reusable = False
        except OSError as err:
            conn.close()
            raise RpcFailure("UNAVAILABLE", f"connection to the agent lost: {err}") from None
        return _ConnectStream(self, conn, method.response)

    def close(self) -> None:
        for conn in [*self._detached, *([self._idle] if self._idle else [])]:
            conn.close()
        self._detached, self._idle = [], None


# -- gRPC (remote agents, agents without the HTTP socket) --------------------------------------------------

class _GrpcStream:
    def __init__(self, call: Any, grpc: Any) -> None:
        self._call = call
        self._grpc = grpc

    def __iter__(self) -> _GrpcStream:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except self._grpc.RpcError as err:
            raise _grpc_failure(err) from None

    def cancel(self) -> None:
        self._call.cancel()


def _grpc_failure(err: Any) -> RpcFailure:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    return RpcFailure(code.name if code is not None else "UNKNOWN", details or "",
                      {k: v if isinstance(v, str) else v.decode(errors="replace") for k, v in trailing or ()})


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class GrpcTransport:
    """The same calls over gRPC (imported here, only when needed)."""

    def __init__(self, address: str, *, tls_dir: str | None = None, timeout: float | None = None) -> None:
        self.timeout = timeout  # seconds a unary call may wait for its answer (None: no limit)
        # gRPC's core logs connection events (a server's GOAWAY, say) to stderr at INFO by default: the
        # CLI reports failures itself, in one line. Read when grpc is imported, so set first.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import grpc

        self._grpc = grpc
        if address.startswith("unix:") or tls_dir is None:
            self.channel = grpc.insecure_channel(address)
        else:
            def read(name: str) -> bytes:
                with open(os.path.join(tls_dir, name), "rb") as f:
                    return f.read()

            creds = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"),
                                                 private_key=read("client-key.pem"),
                                                 certificate_chain=read("client.pem"))
            self.channel = grpc.secure_channel(address, creds)
        self._pending: list[Any] = []

    def _callable(self, kind: str, method: Method[Any, Any]) -> Any:
        return getattr(self.channel, kind)(method.path, request_serializer=_serialize,
                                           response_deserializer=method.response.FromString)

    def unary(self, method: Method[Req, Resp], request: Req) -> Resp:
        try:
            response: Resp = self._callable("unary_unary", method)(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            failure = _grpc_failure(err)
            if self.timeout is not None and failure.code == "DEADLINE_EXCEEDED":
                # Our own deadline: nothing answered in time, which a caller treats as unreachable.
                failure = RpcFailure("UNAVAILABLE", f"no answer within {self.timeout:g}s")
            raise failure from None
        return response

    def unary_nowait(self, method: Method[Req, Resp], request: Req) -> None:
        self._pending.append(self._callable("unary_unary", method).future(request))

    def server_stream(self, method: Method[Req, Resp], request: Req) -> Stream[Resp]:
        return _GrpcStream(self._callable("unary_stream", method)(request), self._grpc)

    def stream_stream(self, method: Method[Req, Resp], requests: Iterable[Req]) -> Stream[Resp]:
        return _GrpcStream(self._callable("stream_stream", method)(iter(requests)), self._grpc)

    def close(self) -> None:
        self.channel.close()


# -- choosing ---------------------------------------------------------------------------------------------

def unix_path(address: str) -> str | None:
    if address.startswith("unix://"):
        return address[len("unix://"):]
    if address.startswith("unix:"):
        return address[len("unix:"):]
    return None


class AgentTransport:
    """Picks the transport on the first call (so parsing errors never wait for, or on, the agent):
    Connect if the agent's HTTP socket answers, else gRPC."""

    def __init__(self, address: str, *, tls_dir: str | None = None, timeout: float | None = None) -> None:
        self.address = address
        self._tls_dir = tls_dir
        self._timeout = timeout  # a deadline for each unary call, in seconds (None: none)
        self._chosen: Transport | None = None

    @property
    def chosen(self) -> Transport:
        if self._chosen is None:
            self._chosen = self._choose()
        return self._chosen

    def _choose(self) -> Transport:
        path = unix_path(self.address)
        if path is None:
            return GrpcTransport(self.address, tls_dir=self._tls_dir, timeout=self._timeout)
        http = cp.http_socket_path(path)
        try:
            return ConnectTransport(http, first=_unix_socket(http), timeout=self._timeout)
        except OSError:
            pass  # no Connect socket: an older agent (gRPC only), or none at all
        try:
            _unix_socket(path).close()  # say which, without loading grpc
        except OSError as err:
            raise _unreachable(path, err) from None
        return GrpcTransport(self.address, timeout=self._timeout)

    def unary(self, method: Method[Req, Resp], request: Req) -> Resp:
        return self.chosen.unary(method, request)

    def unary_nowait(self, method: Method[Req, Resp], request: Req) -> None:
        self.chosen.unary_nowait(method, request)

    def server_stream(self, method: Method[Req, Resp], request: Req) -> Stream[Resp]:
        return self.chosen.server_stream(method, request)

    def stream_stream(self, method: Method[Req, Resp], requests: Iterable[Req]) -> Stream[Resp]:
        return self.chosen.stream_stream(method, requests)

    def close(self) -> None:
        if self._chosen is not None:
            self._chosen.close()


__all__ = ["AgentTransport", "ConnectTransport", "GrpcTransport", "RpcFailure", "unix_path"]
