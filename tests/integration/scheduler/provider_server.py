"""A provider's webhook for tests: a real HTTP(S) server on loopback, in a thread, that records every
request it receives and answers each from a script of answers (the last one repeats).

An answer is a status code, optionally with headers and a body; ``HANG`` makes the server hold the
request without answering until the server is closed (for timeouts, with no sleep anywhere).
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

HANG = -1


@dataclass(frozen=True)
class Answer:
    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_cert_subject: str = ""   # the client certificate's subject, with TLS and one was given


@dataclass
class ProviderServer:
    url: str
    answers: list[Answer]
    received: list[Received] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)


def _handler(state: ProviderServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            subject = ""
            if isinstance(self.connection, ssl.SSLSocket):
                cert = self.connection.getpeercert()
                if cert:
                    subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
            state.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                            body, subject))
            answer = state.answers[min(len(state.received), len(state.answers)) - 1]
            if answer.status == HANG:
                state.released.wait()
                return
            payload = answer.body.replace("{authorization}", self.headers.get("Authorization", "")).encode()
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def provider_server(*answers: Answer, tls: ssl.SSLContext | None = None) -> Iterator[ProviderServer]:
    """A server on 127.0.0.1 (a free port) answering with ``answers`` in turn; with ``tls``, HTTPS."""
    state = ProviderServer(url="", answers=list(answers) or [Answer(200)])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/shoal"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="provider-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.released.set()
        server.shutdown()
        server.server_close()
        thread.join()
