"""The agent's API over the Connect protocol on HTTP/1.1 unix sockets, for clients that must not pay
for grpc (the ``shoal`` CLI starts in a fraction of the time without it).

It serves the *same* services as the gRPC server, through the same method handlers: ``capture`` wraps
the ``grpc.aio.Server`` while ``add_services`` registers the servicers, so both transports share one
set of servicer instances, their request deserializers and response serializers (the real protobuf
classes), and the same server interceptors (RPC metrics). A small ``ServicerContext`` adapter gives
servicers what they use from gRPC's: ``abort`` with trailing metadata (so ``shoal-error`` and
``shoal-launch-kind`` reach the client as with gRPC), ``peer()`` = ``"unix:"`` (unix-only operations keep
working), ``auth_context``, ``invocation_metadata``, ``time_remaining``, ``cancelled``...

Protocol (see ``agent/connect_protocol.py``): ``POST /shoal.agent.v1.Service/Method``; unary with
``application/proto`` bodies, errors as JSON with an HTTP status and trailers as ``trailer-*`` headers;
streams (server, client and bidi) with ``application/connect+proto`` enveloped messages in a chunked
body, ended by an end-of-stream envelope. Connections are kept alive between calls.

Behaviour that matches gRPC's: a client that disconnects cancels its call (the handler sees
``CancelledError``); a stream is written no faster than its client reads (each message waits for the
socket's write buffer to drain), so a slow client slows only its own stream; messages over 4 MiB are
refused. Each socket is created 0600 (umask during bind), like the gRPC socket beside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from agent import connect_protocol as cp

log = logging.getLogger(__name__)

_READ_HIGH_WATER = 256 << 10  # stop reading a client that sends faster than its call consumes
_MAX_HEAD = 64 << 10
_DRAIN_TIMEOUT = 10.0  # for the rest of a request body its call did not read
# Headers that are the transport's, not the caller's metadata.
_TRANSPORT_HEADERS = frozenset({
    "host", "content-type", "content-length", "transfer-encoding", "connection", "te", "accept",
    "accept-encoding", "content-encoding", "connect-protocol-version", "connect-timeout-ms",
    "connect-content-encoding", "connect-accept-encoding",
})
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            415: "Unsupported Media Type",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 499: "Client Closed Request",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout", 505: "HTTP Version Not Supported"}

Metadatum = collections.namedtuple("Metadatum", ["key", "value"])


class _Abort(Exception):
    """Raised by ``ConnectContext.abort``: ends the call with a status (like ``grpc.aio.AbortError``,
    deliberately not a ShoalError, OSError or ValueError, which servicers turn into statuses)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _BadRequest(Exception):
    """The HTTP request itself is unusable: answered with a plain HTTP error, connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _CallDetails:
    """What ``grpc.GenericRpcHandler.service`` and server interceptors look at."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: tuple[Metadatum, ...]) -> None:
        self.method, self.invocation_metadata = method, invocation_metadata


class ConnectContext:
    """The parts of ``grpc.aio.ServicerContext`` servicers use, for one Connect call."""

    def __init__(self, metadata: tuple[Metadatum, ...], deadline: float | None) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._initial: tuple[tuple[str, str | bytes], ...] = ()
        self._code: Any = None
        self._details = ""
        self._cancelled = False
        self._done = False
        self._callbacks: list[Callable[[ConnectContext], None]] = []

    # -- what servicers call
    async def abort(self, code: Any, details: str = "", trailing_metadata: Sequence[tuple[str, str]] = ()
                    ) -> None:
        if trailing_metadata:
            self.set_trailing_metadata(trailing_metadata)
        self._code, self._details = code, details
        raise _Abort(_code_name(code), details)

    async def abort_with_status(self, status: Any) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._initial = tuple(metadata)

    def invocation_metadata(self) -> tuple[Metadatum, ...]:
        return self._metadata

    def peer(self) -> str:
        return "unix:"  # what gRPC reports for a unix-socket client; the Connect sockets are unix only

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_code(self, code: Any) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[ConnectContext], None]) -> None:
        self._callbacks.append(callback)

    def set_compression(self, compression: Any) -> None:
        pass  # Shoal's Connect transport never compresses

    def disable_next_message_compression(self) -> None:
        pass

    # -- the server's side
    def _finish(self, *, cancelled: bool) -> None:
        self._cancelled, self._done = cancelled, True
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("done callback of a Connect call failed")


def _code_name(code: Any) -> str:
    """A ``grpc.StatusCode`` (or its name) → the status name, e.g. ``"NOT_FOUND"``."""
    name = getattr(code, "name", code)
    return str(name) if str(name) in cp.CODES else "UNKNOWN"


class _HandlerTee:
    """Stands in for the ``grpc.aio.Server`` while servicers are added: forwards every registration to
    it and remembers the generic handlers for the Connect server."""

    def __init__(self, server: Any, handlers: list[Any]) -> None:
        self._server = server
        self._handlers = handlers

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(generic_handlers)
        self._handlers.extend(generic_handlers)

    def add_registered_method_handlers(self, service: str, method_handlers: Any) -> None:
        self._server.add_registered_method_handlers(service, method_handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class ConnectServer:
    """Serves the handlers captured from a gRPC server over Connect on unix sockets."""

    def __init__(self, *, interceptors: Sequence[Any] = ()) -> None:
        self._generic_handlers: list[Any] = []
        self._interceptors = list(interceptors)
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()

    def capture(self, server: Any) -> Any:
        """Pass the result to ``add_services`` instead of the gRPC server itself."""
        return _HandlerTee(server, self._generic_handlers)

    async def bind_unix(self, path: Path) -> None:
        """Create the socket (0600) now; calls are served after ``start``."""
        loop = asyncio.get_running_loop()
        old = os.umask(0o177)
        try:
            listener = await loop.create_unix_server(lambda: _Connection(self), str(path),
                                                     start_serving=False)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._listeners.append(listener)

    async def start(self) -> None:
        for listener in self._listeners:
            await listener.start_serving()

    async def stop(self, grace: float) -> None:
        """Stop accepting; give calls in flight ``grace`` seconds, then cancel them."""
        for listener in self._listeners:
            listener.close()
        busy = [c.call for c in self._connections if c.call is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for connection in list(self._connections):
            connection.abort()
        for listener in self._listeners:
            await listener.wait_closed()

    async def resolve(self, details: _CallDetails) -> Any:
        """The method handler for a call, through the interceptors (outermost first, as gRPC does)."""

        async def find(call_details: _CallDetails) -> Any:
            for generic in self._generic_handlers:
                handler = generic.service(call_details)
                if handler is not None:
                    return handler
            return None

        continuation: Callable[[_CallDetails], Awaitable[Any]] = find
        for interceptor in reversed(self._interceptors):
            continuation = functools.partial(interceptor.intercept_service, continuation)
        return await continuation(details)


class _Request:
    __slots__ = ("headers", "keep_alive", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.method, self.path, self.headers, self.keep_alive = method, path, headers, keep_alive


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests one after the other, each a Connect call."""

    def __init__(self, server: ConnectServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.call: asyncio.Task[Any] | None = None  # the call being served, if any
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._body_done = False  # the current request's body has been read in full
        self._task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _READ_HIGH_WATER and self.transport is not None and not self._read_paused:
            self.transport.pause_reading()
            self._read_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        self._client_gone()
        return True  # a half-closed client may still read its answer; _serve closes when done

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._eof = True
        self.server._connections.discard(self)
        self._wake_reader()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("client went away"))
        self._client_gone()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _client_gone(self) -> None:
        # Like gRPC: a client that hangs up cancels its call (once the request has been read; before
        # that, the read itself fails).
        if self.call is not None and self._body_done and not self.call.done():
            self.call.cancel()

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    # -- reading
    async def _more(self) -> None:
        if self._eof:
            raise asyncio.IncompleteReadError(bytes(self._buffer), None)
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        self._data_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    async def _read_until(self, separator: bytes, limit: int) -> bytes:
        while True:
            index = self._buffer.find(separator)
            if index >= 0:
                end = index + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > limit:
                raise _BadRequest(431, "request head too large")
            await self._more()

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._more()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    # -- writing
    def _write(self, data: bytes) -> None:
        if self._closed or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client went away")
        self.transport.write(data)

    async def _drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("client went away")
        if self._write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    # -- requests
    async def _serve(self) -> None:
        try:
            while True:
                try:
                    head = await self._read_until(b"\r\n\r\n", _MAX_HEAD)
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests
                request = _parse_head(head)
                keep = await self._handle(request)
                if not keep or not request.keep_alive:
                    return
        except _BadRequest as err:
            with contextlib.suppress(ConnectionError):
                self._plain_error(err.status, str(err))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("Connect connection failed")
        finally:
            if self.transport is not None:
                self.transport.close()

    def _plain_error(self, status: int, message: str) -> None:
        body = message.encode()
        self._write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    async def _handle(self, request: _Request) -> bool:
        """Serve one call; False if the connection cannot carry another request."""
        body = _Body(self, request.headers)
        self._body_done = False
        if request.method != "POST":
            raise _BadRequest(405, "Connect calls are POST requests")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        streaming = content_type == cp.STREAM_CONTENT_TYPE
        if not streaming and content_type != cp.UNARY_CONTENT_TYPE:
            raise _BadRequest(415, f"unsupported content type {content_type!r}: "
                                   f"use {cp.UNARY_CONTENT_TYPE} or {cp.STREAM_CONTENT_TYPE}")
        encoding = request.headers.get("connect-content-encoding" if streaming else "content-encoding",
                                       "identity")
        metadata = tuple(Metadatum(k, v) for k, v in request.headers.items() if k not in _TRANSPORT_HEADERS)
        deadline = None
        if "connect-timeout-ms" in request.headers:
            try:
                deadline = time.monotonic() + int(request.headers["connect-timeout-ms"]) / 1000
            except ValueError:
                raise _BadRequest(400, "connect-timeout-ms must be an integer") from None
        context = ConnectContext(metadata, deadline)
        responder = _StreamResponder(self) if streaming else _UnaryResponder(self)
        if encoding != "identity":
            return await self._refuse(body, responder, f"compression {encoding!r} is not supported")
        handler = await self.server.resolve(_CallDetails(request.path, metadata))
        if handler is None:
            return await self._refuse(body, responder, f"unknown method {request.path}")
        if bool(handler.request_streaming or handler.response_streaming) != streaming:
            wanted = cp.UNARY_CONTENT_TYPE if streaming else cp.STREAM_CONTENT_TYPE
            raise _BadRequest(415, f"{request.path} takes {wanted}")
        self.call = asyncio.ensure_future(self._run(handler, body, context, responder, deadline))
        try:
            await self.call
        except asyncio.CancelledError:
            if self._task is not None and self._task.cancelling():
                raise  # the server is shutting down
            return False  # the client went away
        finally:
            self.call = None
            context._finish(cancelled=self._closed)
        if not await body.finished():
            # The handler did not read all of the request (it failed early, say). Read the rest so the
            # client, still sending, neither sees a reset nor loses the answer; then the connection
            # can carry the next call.
            try:
                async with asyncio.timeout(_DRAIN_TIMEOUT):
                    await body.discard()
            except (TimeoutError, _BadRequest, _RequestError, asyncio.IncompleteReadError):
                return False
        return True

    async def _refuse(self, body: _Body, responder: _Responder, message: str) -> bool:
        """Answer UNIMPLEMENTED without calling anything; the connection stays usable."""
        await body.discard()
        self._body_done = True
        responder.fail("UNIMPLEMENTED", message, ())
        return True

    async def _run(self, handler: Any, body: _Body, context: ConnectContext, responder: _Responder,
                   deadline: float | None) -> None:
        try:
            if handler.request_streaming:
                requests = _request_stream(body, handler.request_deserializer, on_end=self._end_of_body)
                argument: Any = requests
            else:
                argument = handler.request_deserializer(await body.single(unary=not responder.streaming))
                self._end_of_body()
            if deadline is None:
                await self._dispatch(handler, argument, context, responder)
            else:
                async with asyncio.timeout_at(asyncio.get_running_loop().time()
                                              + max(0.0, deadline - time.monotonic())):
                    await self._dispatch(handler, argument, context, responder)
        except _Abort as err:
            responder.fail(err.code, err.details, context.trailing_metadata())
        except TimeoutError:
            responder.fail("DEADLINE_EXCEEDED", "deadline exceeded", context.trailing_metadata())
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            raise
        except _RequestError as err:
            responder.fail(err.code, str(err), ())
        except _BadRequest as err:
            responder.fail("INVALID_ARGUMENT", str(err), ())
        except Exception as err:
            # What grpc.aio answers for an exception a servicer let through.
            log.exception("unexpected error in %s", type(err).__name__)
            responder.fail("UNKNOWN", f"Unexpected {type(err)}: {err}", context.trailing_metadata())

    def _end_of_body(self) -> None:
        self._body_done = True
        if self._eof:
            self._client_gone()

    async def _dispatch(self, handler: Any, argument: Any, context: ConnectContext,
                        responder: _Responder) -> None:
        if handler.unary_unary is not None or handler.stream_unary is not None:
            call = handler.unary_unary or handler.stream_unary
            result = call(argument, context)
            response = await result if inspect.isawaitable(result) else result
            responder.reply(handler.response_serializer(response), context)
            return
        call = handler.unary_stream or handler.stream_stream
        responses = call(argument, context)
        if not hasattr(responses, "__aiter__"):
            raise TypeError("stream handlers must be async generators (context.write is not supported)")
        stream = responses.__aiter__()
        try:
            async for item in stream:
                await responder.send(handler.response_serializer(item), context)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
        responder.end(context)


class _RequestError(Exception):
    """A request message that cannot be read (bad envelope, too large): the call fails with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Body:
    """The request body: ``Content-Length`` or chunked, read as the call needs it."""

    def __init__(self, conn: _Connection, headers: dict[str, str]) -> None:
        self._conn = conn
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            self._left = int(headers.get("content-length", "0")) if not self._chunked else 0
        except ValueError:
            raise _BadRequest(400, "bad content-length") from None
        self._ended = not self._chunked and self._left == 0

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the body."""
        conn = self._conn
        while not self._ended and self._left == 0:
            if not self._chunked:
                self._ended = True
                break
            line = await conn._read_until(b"\r\n", 1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await conn._read_until(b"\r\n", _MAX_HEAD)) != b"\r\n":
                    pass  # trailers: ignored
                self._ended = True
            else:
                self._left = size
        if self._ended:
            return b""
        if not conn._buffer:
            await conn._more()
        take = min(n, self._left, len(conn._buffer))
        data = bytes(conn._buffer[:take])
        del conn._buffer[:take]
        self._left -= take
        if self._chunked and self._left == 0:
            await conn._read_exactly(2)  # CRLF after the chunk
        return data

    async def read_exactly(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            data = await self.read(n - got)
            if not data:
                raise _RequestError("INVALID_ARGUMENT", "request body ends inside a message")
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    async def single(self, *, unary: bool) -> bytes:
        """The one request message of a unary or server-streaming call."""
        if unary:
            if not self._chunked and self._left > cp.MAX_MESSAGE_BYTES:
                raise _RequestError("RESOURCE_EXHAUSTED", "request message larger than 4 MiB")
            data = bytearray()
            while chunk := await self.read(1 << 16):
                data += chunk
                if len(data) > cp.MAX_MESSAGE_BYTES:
                    raise _RequestError("RESOURCE_EXHAUSTED", "request message larger than 4 MiB")
            return bytes(data)
        message = await _next_envelope(self)
        if message is None:
            raise _RequestError("INVALID_ARGUMENT", "the request stream holds no message")
        if await _next_envelope(self) is not None:
            raise _RequestError("INVALID_ARGUMENT", "a server-streaming call takes exactly one message")
        return message

    async def discard(self) -> None:
        while await self.read(1 << 16):
            pass

    async def finished(self) -> bool:
        """Whether the body was read to its end (only then can the connection carry another request)."""
        return self._ended


async def _next_envelope(body: _Body) -> bytes | None:
    header = await body.read(cp.ENVELOPE_HEADER)
    if not header:
        return None
    if len(header) < cp.ENVELOPE_HEADER:
        header += await body.read_exactly(cp.ENVELOPE_HEADER - len(header))
    flags, length = cp.parse_envelope_header(header)
    if length > cp.MAX_MESSAGE_BYTES:
        raise _RequestError("RESOURCE_EXHAUSTED", f"request message of {length} bytes is larger than 4 MiB")
    if flags & cp.FLAG_COMPRESSED:
        raise _RequestError("INTERNAL", "compressed messages are not supported")
    payload = await body.read_exactly(length)
    if flags & cp.FLAG_END_STREAM:
        return None  # a client's end-of-stream envelope (clients need not send one)
    return payload


async def _request_stream(body: _Body, deserialize: Callable[[bytes], Any],
                          on_end: Callable[[], None]) -> AsyncIterator[Any]:
    while (payload := await _next_envelope(body)) is not None:
        yield deserialize(payload)
    on_end()


class _Responder:
    streaming = False

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def reply(self, payload: bytes, context: ConnectContext) -> None:
        raise NotImplementedError

    async def send(self, payload: bytes, context: ConnectContext) -> None:
        raise NotImplementedError

    def end(self, context: ConnectContext) -> None:
        raise NotImplementedError

    def fail(self, code: str, message: str, trailing: Sequence[tuple[str, str | bytes]]) -> None:
        raise NotImplementedError


def _headers(pairs: Sequence[tuple[str, str | bytes]], prefix: str = "") -> str:
    return "".join(f"{prefix}{k}: {cp.metadata_header_value(k, v)}\r\n" for k, v in pairs)


class _UnaryResponder(_Responder):
    def reply(self, payload: bytes, context: ConnectContext) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {cp.UNARY_CONTENT_TYPE}\r\nContent-Length: {len(payload)}"
                f"\r\n{_headers(context._initial)}{_headers(context.trailing_metadata(), 'trailer-')}\r\n")
        self.conn._write(head.encode() + payload)

    def fail(self, code: str, message: str, trailing: Sequence[tuple[str, str | bytes]]) -> None:
        connect_code, status = cp.CODES.get(code, cp.CODES["UNKNOWN"])
        body = json.dumps({"code": connect_code, "message": message}).encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {cp.ERROR_CONTENT_TYPE}"
                f"\r\nContent-Length: {len(body)}\r\n{_headers(trailing, 'trailer-')}\r\n")
        self.conn._write(head.encode() + body)


class _StreamResponder(_Responder):
    streaming = True

    def __init__(self, conn: _Connection) -> None:
        super().__init__(conn)
        self._started = False

    def _start(self, context: ConnectContext | None) -> None:
        if not self._started:
            self._started = True
            initial = _headers(context._initial) if context is not None else ""
            self.conn._write(f"HTTP/1.1 200 OK\r\nContent-Type: {cp.STREAM_CONTENT_TYPE}\r\n"
                             f"Transfer-Encoding: chunked\r\n{initial}\r\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.conn._write(b"%x\r\n" % len(data) + data + b"\r\n")

    async def send(self, payload: bytes, context: ConnectContext) -> None:
        self._start(context)
        self._chunk(cp.envelope(payload))
        await self.conn._drain()

    def _finish(self, end: dict[str, Any]) -> None:
        self._chunk(cp.envelope(json.dumps(end).encode(), flags=cp.FLAG_END_STREAM))
        self.conn._write(b"0\r\n\r\n")

    def end(self, context: ConnectContext) -> None:
        self._start(context)
        self._finish(_end_metadata(context.trailing_metadata()))

    def fail(self, code: str, message: str, trailing: Sequence[tuple[str, str | bytes]]) -> None:
        self._start(None)
        connect_code, _ = cp.CODES.get(code, cp.CODES["UNKNOWN"])
        end = _end_metadata(trailing)
        end["error"] = {"code": connect_code, "message": message}
        self._finish(end)


def _end_metadata(trailing: Sequence[tuple[str, str | bytes]]) -> dict[str, Any]:
    metadata: dict[str, list[str]] = {}
    for key, value in trailing:
        metadata.setdefault(key, []).append(cp.metadata_header_value(key, value))
    return {"metadata": metadata} if metadata else {}


def _parse_head(head: bytes) -> _Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise _BadRequest(400, "bad request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(505 if len(parts) == 3 else 400, "expected an HTTP/1.1 request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if parts[2] == "HTTP/1.1" else "keep-alive" in connection
    return _Request(parts[0], parts[1], headers, keep_alive)
