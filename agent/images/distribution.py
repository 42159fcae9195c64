"""The OCI distribution protocol client: talking to one registry over HTTP(S).

``RegistryClient`` speaks the read side of the distribution API for one registry ("host[:port]"):
``get_manifest`` (always sending ``Accept`` for OCI manifest + index and Docker v2 manifest + list, and
identifying the manifest by the sha256 of the bytes received) and ``fetch_blob`` (streams a blob into a
file while hashing; resumes a cut download with ``Range`` when the server answers 206, restarts when it
ignores the range; size and digest checked before returning). Every request has a timeout and bounded
retries with capped exponential backoff and jitter (connection errors, timeouts, 429 and 5xx).

Authentication follows the registry's challenges: anonymous first, then HTTP basic or the bearer-token
flow (``WWW-Authenticate: Bearer realm=…,service=…,scope=…``), with tokens cached per scope. Secrets
only ever travel in headers; no message raised here contains a header. Redirects (to blob storage) are
followed by httpx, which drops ``Authorization`` when the redirect leaves the registry's origin.

Transport policy (``plain_http_allowed``) is a pure function: HTTPS always comes first (system CAs or a
given bundle); plain HTTP is tried only for registries listed as insecure or on a loopback address, and
only when the server does not speak TLS at all — a TLS server with an untrusted certificate is an error.

httpx was chosen over urllib3 because its sync client gives streaming bodies, redirect handling that
strips credentials across origins, per-phase timeouts, ``verify=`` with an ``ssl.SSLContext`` and a
``MockTransport`` that lets unit tests run a fake registry in-process behind the same interface.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import ipaddress
import json
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from agent.errors import DigestMismatch, InvalidArgument, NotFound, Unauthenticated, Unavailable
from agent.images.abort import Abort
from agent.images.auth import Credentials

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST = 4 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "shoal-agent"


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as received: the exact bytes, their media type and their sha256 digest."""

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class ClientSettings:
    """Transport knobs for one registry client."""

    timeout: float = 30.0
    retries: int = 4
    ca_bundle: Path | None = None
    insecure: tuple[str, ...] = ()
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    # Overall limits, whatever the registry does between bytes (``timeout`` bounds one read only).
    blob_deadline: float = 3600.0
    manifest_deadline: float = 300.0


# -- transport policy (pure) -------------------------------------------------------------------------


def split_host_port(registry: str) -> tuple[str, int | None]:
    """``"127.0.0.1:5000"`` → ("127.0.0.1", 5000); ``"[::1]:5000"`` → ("::1", 5000)."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, colon, port = registry.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return registry, None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_allowed(registry: str, insecure: tuple[str, ...]) -> bool:
    """True if ``registry`` may be reached over plain HTTP: listed (as host:port or bare host) or loopback."""
    host, _port = split_host_port(registry)
    return is_loopback(host) or registry in insecure or host in insecure


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)], attempt from 0."""
    return float(rng() * min(cap, base * (2**attempt)))


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="r",service="s",scope="a,b"`` → ("bearer", {"realm": "r", ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def _is_cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_tls_protocol_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "SSL" in type(seen).__name__ or "WRONG_VERSION" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _registry_error(resp: httpx.Response) -> str:
    """The registry's own error text (``{"errors": [{"code", "message"}]}``) or the HTTP reason."""
    try:
        errors = resp.json().get("errors")
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except Exception:  # any non-JSON or odd body: fall back to the status line
        return f"HTTP {resp.status_code} {resp.reason_phrase}"


class _Cut(Exception):
    """Internal: a blob body ended before its declared size."""


class RegistryClient:
    """One registry's distribution API. Thread-safe: one httpx connection pool, locks around caches."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None,
        settings: ClientSettings,
        auth_hint: str,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self._credentials = credentials
        self._settings = settings
        self._auth_hint = auth_hint  # the credentials file, for messages
        self._sleep = sleep  # tests: no real backoff; None waits on the request's Abort instead
        verify: ssl.SSLContext | bool = True
        if settings.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_bundle))
        self._http = httpx.Client(
            transport=transport,
            verify=verify,
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
        )
        self._lock = threading.Lock()
        self._base: str | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope → (token, expiry on the monotonic clock)
        self._basic = False  # the registry asked for basic auth: send it pre-emptively from now on

    def close(self) -> None:
        self._http.close()

    # -- public API ---------------------------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str, *, abort: Abort | None = None) -> Manifest:
        """The manifest or index ``repo:reference`` (tag or digest), verified against the digest header
        and, when ``reference`` is a digest, against it. Bounded by ``manifest_deadline`` and ``abort``
        like a blob."""
        with self._bounded(abort, seconds=self._settings.manifest_deadline,
                           what="the deadline for a manifest") as local:
            return self._get_manifest(repo, reference, abort=local)

    def _get_manifest(self, repo: str, reference: str, *, abort: Abort) -> Manifest:
        url = f"{self._base_url()}/v2/{repo}/manifests/{reference}"
        what = f"{self.registry}/{repo}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        resp = self._send("GET", url, repo=repo, headers={"Accept": MANIFEST_ACCEPT}, what=what, abort=abort)
        with contextlib.closing(resp), abort.listen(functools.partial(_interrupt, resp)):
            if resp.status_code == 404:
                raise NotFound(f"manifest {what} not found: {_registry_error(resp)}")
            self._check_status(resp, what=f"manifest {what}")
            data = b""
            try:
                for chunk in resp.iter_raw():
                    abort.check(f"manifest {what}")
                    data += chunk
                    if len(data) > MAX_MANIFEST:
                        raise InvalidArgument(f"manifest {what} is larger than {MAX_MANIFEST} bytes")
            except httpx.TransportError as exc:
                abort.check(f"manifest {what}")  # a socket we shut down ourselves: say why
                raise Unavailable(f"manifest {what} from {self.registry}: {_describe(exc)}") from None
            header_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if header_digest and header_digest != digest:
            raise DigestMismatch(
                f"manifest {what}: received bytes hash to {digest}, the registry says {header_digest}")
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatch(
                f"manifest {what}: received bytes hash to {digest}, not the requested digest")
        return Manifest(data=data, media_type=_media_type(data) or header_type, digest=digest)

    def fetch_blob(
        self,
        repo: str,
        digest: str,
        *,
        size: int,
        out: BinaryIO,
        progress: Callable[[int], None] | None = None,
        abort: Abort | None = None,
    ) -> None:
        """Streams blob ``digest`` into ``out`` (seekable, truncatable, positioned at 0) and verifies it.

        A body cut short is resumed with ``Range: bytes=N-`` (kept if the server answers 206, restarted
        from zero if it answers 200). Only an attempt that gets further into the blob than any attempt
        before it resets the retry budget, so a registry that keeps answering 200 with a short body (and
        ignores Range) fails after ``retries`` attempts instead of looping forever. The whole download
        has a deadline (``blob_deadline``); when it passes, or ``abort`` is set (the caller went away,
        the agent is stopping), the socket being read is shut down so even a read blocked right now
        returns. Raises DigestMismatch (wrong size or hash), NotFound, Unauthenticated, Unavailable
        (``Aborted`` for a deadline or a cancellation).
        """
        url = f"{self._base_url()}/v2/{repo}/blobs/{digest}"
        with self._bounded(abort, seconds=self._settings.blob_deadline,
                           what="the agent's --pull-blob-deadline") as local:
            self._fetch_blob(url, repo, digest, size=size, out=out, progress=progress, abort=local)

    def _fetch_blob(
        self,
        url: str,
        repo: str,
        digest: str,
        *,
        size: int,
        out: BinaryIO,
        progress: Callable[[int], None] | None,
        abort: Abort,
    ) -> None:
        what = f"blob {digest}"
        hasher = hashlib.sha256()
        written = 0
        furthest = 0  # the most bytes any attempt has delivered: progress is only getting past it
        failures = 0
        while True:
            abort.check(f"{what} from {self.registry}")
            headers = {"Range": f"bytes={written}-"} if written else {}
            try:
                resp = self._send("GET", url, repo=repo, headers=headers, what=what, abort=abort)
                with contextlib.closing(resp), abort.listen(functools.partial(_interrupt, resp)):
                    if resp.status_code == 404:
                        raise NotFound(f"{what} not found in {self.registry}/{repo}: {_registry_error(resp)}")
                    if written and resp.status_code == 200:  # range ignored: start over
                        out.seek(0)
                        out.truncate()
                        hasher, written = hashlib.sha256(), 0
                    elif written and resp.status_code == 206:
                        content_range = resp.headers.get("Content-Range", "")
                        if not content_range.startswith(f"bytes {written}-"):
                            raise DigestMismatch(f"{what}: asked for bytes {written}-, got {content_range!r}")
                    else:
                        self._check_status(resp, what=what)
                    for chunk in resp.iter_raw():
                        abort.check(f"{what} from {self.registry}")
                        if written + len(chunk) > size:
                            raise DigestMismatch(
                                f"{what} is larger than the {size} bytes its descriptor says")
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        if progress is not None:
                            progress(written)
                if written < size:
                    raise _Cut(f"body ended after {written} of {size} bytes")
                break
            except (httpx.TransportError, _Cut) as exc:
                # A socket we shut down ourselves surfaces as a transport error: report why instead.
                abort.check(f"{what} from {self.registry} (at byte {written} of {size})")
                failures = 0 if written > furthest else failures + 1
                furthest = max(furthest, written)
                if failures > self._settings.retries:
                    raise Unavailable(
                        f"{what} from {self.registry}: download kept failing at byte {written} of {size}"
                        f" after {failures} attempts without progress: {_describe(exc)}"
                    ) from None
                self._pause(max(failures - 1, 0), abort)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"{what} from {self.registry}/{repo} hashes to {actual}")

    @contextlib.contextmanager
    def _bounded(self, abort: Abort | None, *, seconds: float, what: str) -> Iterator[Abort]:
        """A child of ``abort`` (or a fresh signal) that is also set once ``seconds`` have passed."""
        parent = abort if abort is not None else Abort()
        with parent.scope() as local:
            timer = threading.Timer(seconds, local.set, args=(f"not finished within {_seconds(seconds)}"
                                                              f" ({what})",))
            timer.daemon = True
            timer.start()
            try:
                yield local
            finally:
                timer.cancel()

    # -- transport ----------------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, base=self._settings.backoff_base, cap=self._settings.backoff_cap)

    def _base_url(self) -> str:
        """``https://registry`` or, for a registry that may use plain HTTP and does not speak TLS,
        ``http://registry``; probed once with ``GET /v2/``."""
        with self._lock:
            if self._base is not None:
                return self._base
        https = f"https://{self.registry}"
        try:
            self._http.get(f"{https}/v2/").close()
            base = https
            definitive = True
        except httpx.TooManyRedirects:
            raise self._redirect_loop(f"{https}/v2/") from None
        except httpx.TransportError as exc:
            # A TLS-level failure is a definitive answer; a refused or timed-out connection is not (the
            # registry may be restarting), so that choice is not cached.
            definitive = _is_tls_protocol_error(exc)
            if _is_cert_error(exc):
                raise Unavailable(
                    f"registry {self.registry}: TLS certificate not trusted ({_describe(exc)});"
                    " give its CA bundle in the agent's registry settings"
                ) from None
            if not plain_http_allowed(self.registry, self._settings.insecure):
                if _is_tls_protocol_error(exc):
                    raise Unavailable(
                        f"registry {self.registry} does not speak HTTPS ({_describe(exc)}); plain HTTP is"
                        " allowed only for registries listed as insecure"
                    ) from None
                base = https  # maybe down right now: let the retrying requests decide
            else:
                base = f"http://{self.registry}"
        if definitive:
            with self._lock:
                self._base = base
        return base

    def _pause(self, attempt: int, abort: Abort) -> None:
        """The backoff before retry ``attempt`` + 1, cut short by ``abort`` (then raises Aborted)."""
        delay = self._delay(attempt)
        if self._sleep is not None:
            self._sleep(delay)
        else:
            abort.wait(delay)
        abort.check(f"registry {self.registry}")

    def _send(
        self, method: str, url: str, *, repo: str, headers: dict[str, str], what: str, abort: Abort
    ) -> httpx.Response:
        """A streamed response (caller closes it) after auth and retries; 401/403 become Unauthenticated."""
        last: str = ""
        for attempt in range(self._settings.retries + 1):
            abort.check(what)
            if attempt:
                self._pause(attempt - 1, abort)
            try:
                resp = self._send_authed(method, url, repo=repo, headers=headers)
            except httpx.TooManyRedirects:
                raise self._redirect_loop(what) from None
            except httpx.TransportError as exc:
                if _is_cert_error(exc):
                    raise Unavailable(f"{what}: TLS certificate of {self.registry} not trusted") from None
                last = _describe(exc)
                continue
            if resp.status_code in RETRY_STATUSES:
                last = f"HTTP {resp.status_code} {resp.reason_phrase}"
                resp.close()
                continue
            return resp
        raise Unavailable(
            f"{what}: registry {self.registry} unavailable after {self._settings.retries + 1} attempts:"
            f" {last}"
        )

    def _send_authed(self, method: str, url: str, *, repo: str, headers: dict[str, str]) -> httpx.Response:
        scope = f"repository:{repo}:pull"
        request_headers = dict(headers)
        auth = self._auth_header(scope)
        if auth is not None:
            request_headers["Authorization"] = auth
        resp = self._http.send(self._http.build_request(method, url, headers=request_headers), stream=True)
        if resp.status_code != 401:
            if resp.status_code == 403:
                resp.close()
                raise Unauthenticated(self._denied_message(repo))
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        resp.close()
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and "realm" in params:
            token = self._fetch_token(params, default_scope=scope)
            request_headers["Authorization"] = f"Bearer {token}"
        elif scheme == "basic" and self._credentials is not None and self._credentials.has_basic:
            if auth is not None and auth.startswith("Basic "):
                raise Unauthenticated(self._denied_message(repo))
            with self._lock:
                self._basic = True
            request_headers["Authorization"] = self._basic_header()
        else:
            raise Unauthenticated(self._required_message())
        resp = self._http.send(self._http.build_request(method, url, headers=request_headers), stream=True)
        if resp.status_code in (401, 403):
            resp.close()
            raise Unauthenticated(self._denied_message(repo))
        return resp

    def _auth_header(self, scope: str) -> str | None:
        with self._lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            if self._basic:
                return self._basic_header()
        return None

    def _basic_header(self) -> str:
        assert self._credentials is not None
        raw = f"{self._credentials.username}:{self._credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _fetch_token(self, params: dict[str, str], *, default_scope: str) -> str:
        """Bearer token from the challenge's realm (OAuth2 refresh-token grant for an identity token,
        else GET with basic credentials if any, else anonymous)."""
        scope = params.get("scope") or default_scope
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        creds = self._credentials
        realm = params["realm"]
        try:
            if creds is not None and creds.identity_token:
                resp = self._http.post(realm, data={
                    "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": USER_AGENT, **query,
                })
            else:
                basic = creds is not None and creds.has_basic
                headers = {"Authorization": self._basic_header()} if basic else {}
                resp = self._http.get(realm, params=query, headers=headers)
        except httpx.TooManyRedirects:
            raise self._redirect_loop(f"the token server of {self.registry}") from None
        except httpx.TransportError as exc:
            raise Unavailable(
                f"token server of {self.registry} unreachable: {_describe(exc)}"
            ) from None
        if resp.status_code in (401, 403):
            raise Unauthenticated(
                self._required_message() if creds is None else
                f"the token server of {self.registry} refused the credentials in {self._auth_hint}")
        if resp.status_code != 200:
            raise Unavailable(f"token server of {self.registry} answered HTTP {resp.status_code}")
        try:
            doc = resp.json()
            token = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token server of {self.registry} returned no token")
        with self._lock:
            # Renew a little early so a token does not expire between the check and the request.
            self._tokens[scope] = (token, time.monotonic() + max(0.0, expires_in - 10))
        return token

    def _required_message(self) -> str:
        return f"authentication required for {self.registry}: add credentials to {self._auth_hint}"

    def _denied_message(self, repo: str) -> str:
        if self._credentials is None:
            return self._required_message()
        return (f"{self.registry} refused access to {repo} with the credentials in {self._auth_hint}:"
                " check the user, password and its permissions")

    def _redirect_loop(self, what: str) -> InvalidArgument:
        """A registry that redirects without end is misconfigured (or hostile): retrying cannot help."""
        return InvalidArgument(
            f"{what}: registry {self.registry} redirected more than {self._http.max_redirects} times"
            " (a redirect loop); check the registry's address and its storage configuration"
        )

    def _check_status(self, resp: httpx.Response, *, what: str) -> None:
        if 200 <= resp.status_code < 300:
            return
        resp.read()
        detail = _registry_error(resp)
        if resp.status_code == 400 or resp.status_code == 406:
            raise InvalidArgument(f"{what}: {self.registry} rejected the request: {detail}")
        raise Unavailable(f"{what}: {self.registry} answered {detail}")


def _media_type(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ""
    value = doc.get("mediaType") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def _interrupt(resp: httpx.Response, _reason: str = "") -> None:
    """Wakes a thread blocked reading ``resp``: shutting the socket down (unlike closing it) makes a
    pending ``recv`` return at once. Runs in whichever thread set the Abort."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _seconds(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{int(value) // 60}m"
    return f"{value:g}s"


def _describe(exc: BaseException) -> str:
    """An exception as text with no request details (httpx messages never include headers)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
