"""Who may call the agent's API: roles from mTLS certificates, and what only the unix socket may do.

The certificate kinds ``shoal certs`` issues are roles (``agent.certs.role_of``). Over TCP every caller
presents a certificate from the cluster CA (gRPC refuses others before any method runs); the agent then
accepts the roles in ``AGENT_CALLERS`` — schedulers and clients — and refuses an agent certificate, so a
compromised host cannot drive its peers. The unix socket (0600, root only) is the local administrator:
it may do everything, including what names files on the agent's host (``ImportImageRequest.path``).
A TCP listener without TLS (``--insecure-tcp``, loopback tests only) has no identity: it is treated
like a client, never like the local socket.

Certificates are parsed once each (cached by their PEM bytes); ``cryptography`` is imported on first use.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

from agent.errors import PermissionDenied

AGENT_CALLERS = frozenset({"scheduler", "client"})


class Transport(enum.Enum):
    UNIX = "unix"
    TLS = "tls"
    INSECURE_TCP = "insecure-tcp"


@dataclass(frozen=True)
class Caller:
    transport: Transport
    role: str | None = None  # from the certificate, over TLS

    @property
    def local(self) -> bool:
        return self.transport is Transport.UNIX


def caller_of(context: Any) -> Caller:
    """The caller of a gRPC (or Connect) call, from its ``ServicerContext``."""
    peer = context.peer() or ""
    if peer.startswith("unix:"):
        return Caller(Transport.UNIX)
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert")
    if not pems:
        return Caller(Transport.INSECURE_TCP)
    return Caller(Transport.TLS, role=_role_of_pem(bytes(pems[0])))


@functools.lru_cache(maxsize=256)
def _role_of_pem(pem: bytes) -> str | None:
    from cryptography import x509

    from agent.certs import role_of

    return role_of(x509.load_pem_x509_certificate(pem))


def authorize(caller: Caller, *, allowed: frozenset[str] = AGENT_CALLERS) -> None:
    """``PermissionDenied`` unless ``caller`` may use the API at all."""
    if caller.transport is not Transport.TLS or caller.role in allowed:
        return
    if caller.role is None:
        raise PermissionDenied("the client certificate carries no Shoal role (it predates roles or was not "
                               "issued by `shoal certs`): issue a new one with "
                               "`shoal certs issue --kind client`")
    raise PermissionDenied(f"certificates of role {caller.role!r} may not call this API (allowed: "
                           f"{', '.join(sorted(allowed))})")


def require_local(caller: Caller, *, what: str) -> None:
    """``PermissionDenied`` unless the call came over the unix socket."""
    if not caller.local:
        raise PermissionDenied(f"{what} is only allowed over the agent's unix socket (it names a file on the "
                               "agent's host); upload the bytes instead")


__all__ = ["AGENT_CALLERS", "Caller", "Transport", "authorize", "caller_of", "require_local"]
