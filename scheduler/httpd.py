"""The scheduler's HTTP endpoint (``--http-listen``): ``/metrics``, ``/http_sd`` and ``/healthz``.

Served from a daemon thread (``http.server``), reading only what ``SchedulerMetrics`` caches, so a scrape
never touches etcd or the scheduler's event loop. The page holds no secrets (counts, host addresses) and
is read-only, as Prometheus' targets conventionally are.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler.metrics import SchedulerMetrics


class HttpServer:
    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(address: str, metrics: SchedulerMetrics) -> HttpServer:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"shoal-scheduler: invalid --http-listen {address!r}: expected HOST:PORT")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            elif path == "/http_sd":
                self._send(200, "application/json", json.dumps(metrics.http_sd()).encode())
            elif path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /http_sd or /healthz\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    except OSError as err:
        raise SystemExit(f"shoal-scheduler: cannot serve HTTP on {address}: {err.strerror or err}") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return HttpServer(server, thread)


__all__ = ["HttpServer", "serve"]
