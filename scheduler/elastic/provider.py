"""Telling the provider: a host group's request as the documented JSON, delivered to its webhook and/or
command, and what one attempt does to the request's delivery state.

The contract is docs/elastic-hosts.md ("The provider contract"). ``request_json`` builds the document;
``deliver`` makes one attempt — to the webhook (HTTP POST, ``Idempotency-Key``, a bearer token read from
its file at every attempt so a rotated token is picked up, an mTLS client certificate, redirects never
followed) and to the command (JSON on stdin, ``SHOAL_REQUEST_ID`` in a small clean environment, killed
with its process group at the timeout) — and says whether it was accepted, with an error a person can
act on otherwise (never the token). ``after_attempt`` is the pure transition the loop records:
delivered, or pending again after an exponential backoff.

When a group names both a webhook and a command, every attempt goes to both and the request is delivered
when both accept the same attempt. A target that accepted an earlier attempt gets the request again with
the same id: the contract already requires a provider to treat a repeated id as the same request (a
retried webhook never buys twice), so per-target delivery state would add a field to the record and a
second retry schedule without making anything safer.

Callers: the leader's elastic loop (``scheduler.elastic.loop``), through the ``Provider`` protocol, so its
tests can put a fake in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from scheduler.model import (
    LABEL_GROUP,
    CommandProvider,
    DeliveryState,
    HostGroupSpec,
    HostId,
    HostRecord,
    ProviderRequest,
    ProviderRequestKind,
    WebhookProvider,
)

FIRST_BACKOFF = 0.5     # seconds before the first retry; doubles per failed attempt
MAX_BACKOFF = 60.0
MAX_ERROR = 600         # characters of an attempt's error kept in the record (etcd, describe)
STDERR_TAIL = 2048      # bytes of a command's stderr kept for the error
BODY_EXCERPT = 200      # characters of a refusing webhook's answer kept for the error
# What a provider command finds in its environment: nothing of the scheduler's (its etcd endpoints,
# credentials in variables, proxies), only a usable PATH, a locale, and the request.
COMMAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_AGENT = "shoal-scheduler"


class IllegalTransition(ValueError):
    """An attempt recorded on a request that is already delivered."""


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt: accepted, or the reason it was not (for a person)."""

    ok: bool
    error: str = ""


# -- the document ---------------------------------------------------------------------------------------

def rfc3339(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC, whole seconds (``2026-12-02T10:15:00Z``)."""
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_json(request: ProviderRequest, group_spec: HostGroupSpec,
                 hosts: Mapping[HostId, HostRecord]) -> dict[str, Any]:
    """The request as the provider receives it. ``hosts`` names the hosts of a scale-in (a host no longer
    registered is sent with its id alone: the provider knows its machines by it)."""
    out: dict[str, Any] = {"kind": request.kind.value, "request_id": request.id, "group": group_spec.name}
    if request.kind is ProviderRequestKind.SCALE_OUT:
        shape = request.shape
        labels = dict(shape.labels) if shape is not None else {}
        labels[LABEL_GROUP] = group_spec.name  # a new host must join the group it was bought for
        out["count"] = request.count
        out["shape"] = {"cpu_millis": shape.cpu_millis if shape is not None else 0,
                        "memory_bytes": shape.memory_bytes if shape is not None else 0,
                        "labels": dict(sorted(labels.items()))}
    else:
        named = []
        for host in request.hosts:
            record = hosts.get(host)
            named.append({"id": host, "name": record.name if record is not None else "",
                          "address": record.address if record is not None else ""})
        out["hosts"] = named
    out["reason"] = request.reason
    out["time"] = rfc3339(request.created_at)
    return out


# -- the delivery state ---------------------------------------------------------------------------------

def backoff(attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: 0.5 s, 1 s, 2 s, ... up to 60 s."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(max(attempts - 1, 0), 16))


def after_attempt(request: ProviderRequest, *, ok: bool, error: str, now: float) -> ProviderRequest:
    """The request after one attempt made at ``now``: delivered, or pending with the error and the time
    of the next attempt. Only a pending request is attempted (``IllegalTransition`` otherwise)."""
    if request.state is not DeliveryState.PENDING:
        raise IllegalTransition(f"request {request.id} is {request.state.value}: it is not attempted again")
    attempts = request.attempts + 1
    if ok:
        return dataclasses.replace(request, state=DeliveryState.DELIVERED, attempts=attempts,
                                   delivered_at=now, next_attempt_at=0.0, last_error="")
    return dataclasses.replace(request, attempts=attempts, next_attempt_at=now + backoff(attempts),
                               last_error=_bounded(error or "not accepted"))


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 1] + "…"


# -- one attempt ----------------------------------------------------------------------------------------

class Provider(Protocol):
    """Delivers requests (the elastic loop's view of the provider)."""

    async def deliver(self, request: ProviderRequest, *, group: HostGroupSpec,
                      hosts: Mapping[HostId, HostRecord]) -> Attempt:
        """One attempt to every target the group names; never raises for a refusal or a failure."""
        ...


class ProviderClient:
    """The real provider: the group's webhook and/or command."""

    async def deliver(self, request: ProviderRequest, *, group: HostGroupSpec,
                      hosts: Mapping[HostId, HostRecord]) -> Attempt:
        body = json.dumps(request_json(request, group, hosts), separators=(",", ":")).encode()
        targets: list[tuple[str, asyncio.Task[Attempt]]] = []
        if group.webhook is not None:
            targets.append(("webhook", asyncio.ensure_future(
                post_webhook(group.webhook, body, request_id=request.id))))
        if group.command is not None:
            targets.append(("command", asyncio.ensure_future(
                run_command(group.command, body, request_id=request.id, kind=request.kind.value,
                            group=group.name))))
        if not targets:
            return Attempt(False, f"host group {group.name} names no provider (no webhook, no command)")
        results = [(name, await task) for name, task in targets]
        failed = [f"{name}: {a.error}" for name, a in results if not a.ok]
        return Attempt(True) if not failed else Attempt(False, "; ".join(failed))


# -- the webhook ----------------------------------------------------------------------------------------

def _tls_context(webhook: WebhookProvider) -> ssl.SSLContext:
    for what, path in (("ca_file", webhook.ca_file), ("cert_file", webhook.cert_file),
                       ("key_file", webhook.key_file)):
        if path and not os.access(path, os.R_OK):
            reason = "no such file" if not os.path.exists(path) else "not readable"
            raise _Refused(f"cannot read {what} {path}: {reason}")
    context = ssl.create_default_context(cafile=webhook.ca_file or None)
    if webhook.cert_file:
        context.load_cert_chain(webhook.cert_file, webhook.key_file or None)
    return context


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise _Refused(f"cannot read token_file {path}: {err.strerror or err}") from None
    if not token:
        raise _Refused(f"token_file {path} is empty")
    if any(c in token for c in "\r\n"):
        raise _Refused(f"token_file {path} holds more than one line")
    return token


class _Refused(Exception):
    """An attempt that cannot be made (its message is the attempt's error)."""


def _certificate_hint(text: str, url: str, webhook: WebhookProvider, *, closed: bool = False) -> str:
    """``text``, with what to do when a TLS provider hung up on a caller without a client certificate:
    the connection closed without an answer, or reset (when the reset overtakes TLS 1.3's
    certificate-required alert)."""
    if (closed or "reset by peer" in text) and url.startswith("https:") and not webhook.cert_file:
        return text + " (does it require a client certificate? set cert_file and key_file)"
    return text


async def post_webhook(webhook: WebhookProvider, body: bytes, *, request_id: str,
                       transport: httpx.AsyncBaseTransport | None = None) -> Attempt:
    """POST ``body`` to the webhook; a 2xx answer within ``timeout_seconds`` (all of it: connecting,
    sending, the answer) accepts it."""
    url = webhook.url
    token = ""
    try:
        token = _read_token(webhook.token_file) if webhook.token_file else ""
        verify: ssl.SSLContext | bool = _tls_context(webhook) if url.startswith("https:") else True
    except _Refused as err:
        return Attempt(False, str(err))
    except (OSError, ssl.SSLError) as err:  # readable but not what is needed (a key of another cert)
        return Attempt(False, f"cannot load the TLS files (ca_file, cert_file, key_file): {err}")
    headers = {"Content-Type": "application/json", "Idempotency-Key": request_id, "User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = webhook.timeout_seconds
    try:
        async with asyncio.timeout(timeout), httpx.AsyncClient(
                verify=verify, follow_redirects=False, timeout=timeout, transport=transport,
                trust_env=False) as client:
            response = await client.post(url, content=body, headers=headers)
            answer = (await response.aread()).decode("utf-8", "replace")
    except TimeoutError:
        return Attempt(False, f"{url}: no answer within {timeout:g}s")
    except httpx.TimeoutException:
        return Attempt(False, f"{url}: no answer within {timeout:g}s")
    except httpx.HTTPError as err:
        text = _http_error(err)
        if isinstance(err, httpx.ReadError | httpx.RemoteProtocolError) and text == type(err).__name__:
            text = _certificate_hint("the provider closed the connection without an answer", url, webhook,
                                     closed=True)
        else:
            text = _certificate_hint(text, url, webhook)
        return Attempt(False, _without(f"{url}: {text}", token))
    except OSError as err:  # TLS 1.3 checks our certificate after the handshake: its alert comes on the
        # first read as a bare ssl.SSLError, which httpx does not wrap
        text = f"{url}: {err}"
        if isinstance(err, ssl.SSLError) and "CERTIFICATE_REQUIRED" in str(err):
            text += " (the provider requires a client certificate: set cert_file and key_file)"
        else:
            text = _certificate_hint(text, url, webhook)
        return Attempt(False, _without(text, token))
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True)
    if response.is_redirect:
        where = response.headers.get("location", "")
        return Attempt(False, _without(f"{url}: answered {status} redirecting to {where!r}; redirects are "
                                       "not followed (give the final URL in provider.webhook.url)", token))
    excerpt = " ".join(answer.split())[:BODY_EXCERPT]
    text = f"{url}: answered {status} {response.reason_phrase}" + (f": {excerpt}" if excerpt else "")
    if status == 401 or status == 403:
        text += " (check token_file and the client certificate)"
    return Attempt(False, _without(text, token))


def _http_error(err: httpx.HTTPError) -> str:
    """httpx's message, with the innermost cause when it adds something (``[SSL:
    CERTIFICATE_VERIFY_FAILED] ...``, ``Connection refused``): httpx's own message is often empty."""
    cause: BaseException = err
    while (nxt := cause.__cause__ or cause.__context__) is not None:
        cause = nxt
    own, inner = str(err), str(cause)
    if not own:
        return inner or type(err).__name__
    return f"{own} ({inner})" if inner and inner not in own else own


def _without(text: str, secret: str) -> str:
    """``text`` with ``secret`` blanked out: a provider echoing the Authorization header must not put
    the token into etcd, logs and ``describe``."""
    return text.replace(secret, "<token>") if secret else text


# -- the command ----------------------------------------------------------------------------------------

async def run_command(command: CommandProvider, body: bytes, *, request_id: str, kind: str,
                      group: str) -> Attempt:
    """Run the command with ``body`` on stdin; exit status 0 within ``timeout_seconds`` accepts it. The
    command runs in a session of its own, from ``/``, with only ``PATH``, ``LANG`` and the request's
    ``SHOAL_*`` variables; at the timeout its whole process group is killed."""
    argv = command.argv
    env = {"PATH": COMMAND_PATH, "LANG": "C.UTF-8", "SHOAL_REQUEST_ID": request_id,
           "SHOAL_REQUEST_KIND": kind, "SHOAL_GROUP": group}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/", start_new_session=True)
    except OSError as err:
        return Attempt(False, f"cannot run {argv[0]}: {err.strerror or err}")
    tail = bytearray()

    async def feed() -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it need not read it all
            process.stdin.write(body)
            await process.stdin.drain()
            process.stdin.close()
            await process.stdin.wait_closed()

    async def drain_stderr() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(65536):
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]

    try:
        async with asyncio.timeout(command.timeout_seconds):
            await asyncio.gather(feed(), drain_stderr())
            code = await process.wait()
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        return Attempt(False, f"{argv[0]}: no exit within {command.timeout_seconds:g}s (killed)"
                       + _stderr_suffix(tail))
    except BaseException:
        _kill_group(process.pid)  # the loop is going away (a term ends): leave nothing running
        with contextlib.suppress(Exception):
            await process.wait()
        raise
    if code == 0:
        return Attempt(True)
    how = f"exited with status {code}" if code > 0 else f"killed by signal {-code}"
    return Attempt(False, f"{argv[0]} {how}" + _stderr_suffix(tail))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stderr_suffix(tail: bytes | bytearray) -> str:
    text = " ".join(tail.decode("utf-8", "replace").split())
    return f": {text}" if text else ""


__all__ = [
    "FIRST_BACKOFF", "MAX_BACKOFF", "Attempt", "IllegalTransition", "Provider", "ProviderClient",
    "after_attempt", "backoff", "post_webhook", "request_json", "rfc3339", "run_command",
]
