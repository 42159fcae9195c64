"""The scheduler's HTTP endpoint (``--http-listen``): ``/metrics``, ``/http_sd`` and ``/healthz``.

Served from daemon threads (``http.server``), reading only what ``SchedulerMetrics`` has published, so a
scrape never touches etcd or the scheduler's event loop. ``/metrics`` answers in the format the scraper
asks for (OpenMetrics for Prometheus, else the classic text format), gzipped when it accepts gzip;
``?name[]=NAME`` (repeatable, as prometheus_client's own handler takes it) answers only those samples and
collects only the metrics that hold them: at 5,000 hosts rendering the whole page kept a scraping thread
busy in Python, competing for the GIL with the event loop, and a client polling one counter paid that on
every poll.
``/http_sd`` is Prometheus' HTTP service discovery (``?kind=agent`` or ``?kind=replica`` for one kind of
target); before the cluster was first read from etcd it answers 503, because an empty list would make
Prometheus drop every target while a failed request makes it keep the ones it has. The pages hold no
secrets (counts, host addresses) and are read-only, as Prometheus' targets conventionally are; like the
agents' metrics, bind them to loopback or a management network.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder

from scheduler.liveness import LoopAlive
from scheduler.metrics import TARGET_KINDS, SchedulerMetrics

log = logging.getLogger(__name__)

GZIP_MIN_BYTES = 1024  # smaller pages are sent as they are


class HttpServer:
    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # Not HTTPServer's: it names the server with socket.getfqdn(), a reverse DNS lookup that stalls
        # start-up for 10 s wherever a nameserver is routed to but does not answer.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(address: str, metrics: SchedulerMetrics, *, alive: LoopAlive | None = None,
          hang_limit: float = 0.0) -> HttpServer:
    """Serve on ``HOST:PORT`` (``[ADDR]:PORT`` for IPv6; port 0 picks a free one, see ``.port``) from a
    daemon thread. Exits with a message on a bad address or one that cannot be bound. ``/healthz``
    answers 503 while ``alive``'s loop has been silent for more than ``hang_limit`` seconds (if > 0)."""
    host, _, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (not host or not port.isdigit() or int(port) > 65535 or "[" in host or "]" in host
            or (":" in host and not bracketed)):
        raise SystemExit(f"shoal-scheduler: invalid --http-listen {address!r}: expected HOST:PORT "
                         "([ADDR]:PORT for IPv6)")
    server_class = _Server6 if bracketed else _Server
    try:
        server = server_class((host, int(port)), _handler(metrics, alive, hang_limit))
    except OSError as err:
        raise SystemExit(f"shoal-scheduler: cannot serve HTTP on {address}: {err.strerror or err}") from None
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return HttpServer(server, thread)


def _handler(metrics: SchedulerMetrics, alive: LoopAlive | None,
             hang_limit: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            try:
                if url.path == "/metrics":
                    self._metrics(urllib.parse.parse_qs(url.query))
                elif url.path == "/http_sd":
                    self._http_sd(urllib.parse.parse_qs(url.query))
                elif url.path == "/healthz":
                    self._healthz()
                else:
                    self._send(404, "text/plain; charset=utf-8",
                               b"not found: try /metrics, /http_sd or /healthz\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away
            except Exception:
                log.exception("serving %s", url.path)
                self._send(500, "text/plain; charset=utf-8", b"internal error (see the scheduler's log)\n")

        def _healthz(self) -> None:
            # Served from this thread: it answers while the event loop is hung, and says so.
            silent = alive.silent_for() if alive is not None else 0.0
            if hang_limit > 0 and silent > hang_limit:
                self._send(503, "text/plain; charset=utf-8",
                           f"hung: the event loop has not run for {silent:.1f}s "
                           f"(--leader-hang-limit {hang_limit:g}s)\n".encode())
                return
            self._send(200, "text/plain; charset=utf-8", b"ok\n")

        def _metrics(self, query: dict[str, list[str]]) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            names = query.get("name[]")
            self._send(200, content_type,
                       encoder(metrics.registry.restricted_registry(names) if names else metrics.registry))

        def _http_sd(self, query: dict[str, list[str]]) -> None:
            kinds = query.get("kind", [])
            if len(kinds) > 1 or (kinds and kinds[0] not in TARGET_KINDS):
                self._send(400, "text/plain; charset=utf-8",
                           f"kind must be one of {', '.join(TARGET_KINDS)}\n".encode())
                return
            if not metrics.loaded:
                self._send(503, "text/plain; charset=utf-8",
                           b"the scheduler has not read the cluster from etcd yet\n")
                return
            groups = metrics.http_sd(kinds[0] if kinds else None)
            self._send(200, "application/json", json.dumps(groups, separators=(",", ":")).encode())

        def _send(self, code: int, kind: str, body: bytes) -> None:
            gzipped = len(body) >= GZIP_MIN_BYTES and "gzip" in self.headers.get("Accept-Encoding", "")
            if gzipped:
                body = gzip.compress(body, compresslevel=5)
            self.send_response(code)
            self.send_header("Content-Type", kind)
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the log

    return Handler


__all__ = ["HttpServer", "serve"]
