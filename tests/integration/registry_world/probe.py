"""A deliberately dumb HTTP client for asserting on exactly what the test servers send: one request per
connection, no redirects followed, no retries, and a body read that reports how far it got."""

from __future__ import annotations

import base64
import hashlib
import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.tokenserver import Credentials

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None  # why the body ended early (IncompleteRead, reset …), None if complete

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


def basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def fetch(base: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          ca_bundle: Path | None = None, verify: bool = True) -> Answer:
    """One request to ``base`` (``http(s)://127.0.0.1:PORT``); connection errors before a status raise."""
    scheme, _, hostport = base.partition("://")
    host, _, port = hostport.partition(":")
    assert host == "127.0.0.1", "tests talk to loopback only"
    conn: http.client.HTTPConnection
    if scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        if not verify:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT_S, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        got = {k.lower(): v for k, v in resp.getheaders()}
        body, error = bytearray(), None
        try:
            while chunk := resp.read1(65536) if method != "HEAD" else b"":
                body += chunk
            if resp.length:  # http.client counts down what Content-Length promised
                error = f"IncompleteRead: {resp.length} bytes missing"
        except (http.client.IncompleteRead, ConnectionError) as e:
            error = f"{type(e).__name__}: {e}"
        return Answer(resp.status, got, bytes(body), error)
    finally:
        conn.close()
