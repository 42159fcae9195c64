"""The agent's own Prometheus metrics, the gRPC timing interceptor and the ``/metrics`` HTTP server.

``AgentMetrics`` holds the ``shoal_agent_*`` families in a registry of its own (never the process-global
one, so tests and several agents in one process do not collide); the daemon registers the cAdvisor
collector (``agent.usage.cadvisor.UsageCollector``) in the same registry and serves it with
``serve_metrics``. The server is prometheus-client's threaded WSGI server: a scrape runs in its thread and
reads only already-taken snapshots and counters, so it never waits for the event loop or the sampler.

``RpcMetricsInterceptor`` times every RPC by full method name and final status code; for a streaming
RPC the time runs until the stream ends (so ``WatchUsage`` durations are a watch's lifetime).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from agent.errors import InvalidArgument, ShoalError

START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0)
SAMPLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AgentMetrics:
    """The agent's own counters and histograms. Call the ``record_*`` methods from anywhere (the
    prometheus-client types are thread-safe)."""

    def __init__(self, *, version: str, host_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.container_starts = Counter(
            "shoal_agent_container_starts", "Container starts by result (ok, failed).", ["result"],
            registry=r)
        self.container_start_seconds = Histogram(
            "shoal_agent_container_start_seconds", "Time from a start request to the container running.",
            buckets=START_BUCKETS, registry=r)
        self.rpc_seconds = Histogram(
            "shoal_agent_rpc_seconds", "gRPC handling time by method and status code (streams: lifetime).",
            ["method", "code"], buckets=RPC_BUCKETS, registry=r)
        self.images_pulled = Counter("shoal_agent_images_pulled", "Images pulled from registries.",
                                     registry=r)
        self.sample_seconds = Histogram(
            "shoal_agent_sample_seconds", "Time to take one usage snapshot of the host and its containers.",
            buckets=SAMPLE_BUCKETS, registry=r)
        self.evictions = Counter(
            "shoal_agent_container_evictions",
            "Containers killed for going over a limit the kernel does not enforce (reason: storage).",
            ["reason"], registry=r)
        self.evictions.labels(reason="storage")
        info = Gauge("shoal_agent_info", "Always 1; the agent's version and host id as labels.",
                     ["version", "host_id"], registry=r)
        info.labels(version=version, host_id=host_id).set(1)
        # Both results exist from the start, so rate() over failures is 0 rather than absent.
        for result in ("ok", "failed"):
            self.container_starts.labels(result=result)

    def record_start(self, *, seconds: float, ok: bool) -> None:
        self.container_starts.labels(result="ok" if ok else "failed").inc()
        if ok:
            self.container_start_seconds.observe(seconds)

    def record_eviction(self, reason: str) -> None:
        self.evictions.labels(reason=reason).inc()

    def record_pull(self) -> None:
        self.images_pulled.inc()

    def record_sample(self, seconds: float) -> None:
        self.sample_seconds.observe(seconds)

    def record_rpc(self, *, method: str, code: str, seconds: float) -> None:
        self.rpc_seconds.labels(method=method, code=code).observe(seconds)


def _status_name(context: Any, err: BaseException | None) -> str:
    if isinstance(err, asyncio.CancelledError):
        return "CANCELLED"
    code = None
    try:
        code = context.code()
    except Exception:  # not every context implementation offers code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "OK" if err is None else "UNKNOWN"


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Pass to ``grpc.aio.server(interceptors=[...])``."""

    def __init__(self, metrics: AgentMetrics, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._metrics = metrics
        self._clock = clock

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        record = self._metrics.record_rpc
        clock = self._clock

        def wrap_unary(inner: Callable[..., Any]) -> Callable[..., Any]:
            async def timed(request: Any, context: Any) -> Any:
                start, err = clock(), None
                try:
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result
                except BaseException as e:
                    err = e
                    raise
                finally:
                    record(method=method, code=_status_name(context, err), seconds=clock() - start)
            return timed

        def wrap_stream(inner: Callable[..., Any]) -> Callable[..., Any]:
            async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
                start, err = clock(), None
                try:
                    result = inner(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result  # a handler that writes with context.write()
                except BaseException as e:
                    err = e
                    raise
                finally:
                    record(method=method, code=_status_name(context, err), seconds=clock() - start)
            return timed

        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **kw)
        return handler


@dataclass
class MetricsServer:
    """A running ``/metrics`` server; ``port`` is the bound port (useful when 0 was asked)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def parse_listen_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → ``(host, port)``; ``InvalidArgument`` if malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgument(f"--metrics-listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9101")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as err:
            raise InvalidArgument(f"--metrics-listen {address!r}: {host!r} is not an IPv6 address") from err
    elif ":" in host:
        raise InvalidArgument(f"--metrics-listen {address!r}: write an IPv6 address as [ADDR]:PORT")
    return host, int(port_text)


class _Server(ThreadingWSGIServer):
    def server_bind(self) -> None:
        # Not HTTPServer's: it names the server with socket.getfqdn(), a reverse DNS lookup that stalls
        # start-up for 10 s wherever a nameserver is routed to but does not answer.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr is noise


def serve_metrics(address: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` over HTTP at ``address`` (``HOST:PORT``) in a daemon thread.

    Bound where asked: the page is read-only and holds no secrets. ``ShoalError`` if the address cannot
    be bound (taken, not local)."""
    host, port = parse_listen_address(address)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    except OSError as err:
        raise ShoalError(f"cannot serve metrics on {address}: {err.strerror or err}") from err
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(host=host, port=server.server_address[1], _server=server, _thread=thread)
