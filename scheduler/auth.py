"""Who may call the scheduler: roles from mTLS certificates.

The certificate kinds ``shoal certs`` issues are roles, in the subject's organizational unit
(``OU=client``). The scheduler's API (services, hosts, replicas) is for ``client`` and ``scheduler``
certificates; host registration is for ``agent`` certificates only, so a person's certificate cannot
pose as a host and an agent's cannot change services. A unix socket is the local administrator. A plain
TCP listener (``--insecure-tcp``, loopback tests only) has no identity and is allowed everything.

(The agent has the same rules in ``agent/roles.py``; the scheduler may not import the agent, and the
rule is a few lines.)
"""

from __future__ import annotations

import functools
from typing import Any

from scheduler.errors import PermissionDenied

API_CALLERS = frozenset({"client", "scheduler"})
REGISTRATION_CALLERS = frozenset({"agent"})
KINDS = frozenset({"agent", "scheduler", "client"})


def role_of(context: Any) -> str | None:
    """The caller's role; None over a unix socket or plain TCP (no certificate)."""
    if (context.peer() or "").startswith("unix:"):
        return None
    pems = (context.auth_context() or {}).get("x509_pem_cert")
    if not pems:
        return None
    return _role_of_pem(bytes(pems[0])) or ""


@functools.lru_cache(maxsize=256)
def _role_of_pem(pem: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    units = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    roles = units & KINDS
    return roles.pop() if len(roles) == 1 else None


def authorize(context: Any, allowed: frozenset[str]) -> None:
    role = role_of(context)
    if role is None or role in allowed:
        return
    if role == "":
        raise PermissionDenied("the client certificate carries no Shoal role: issue one with "
                               "`shoal certs issue --kind client`")
    raise PermissionDenied(f"certificates of role {role!r} may not call this API (allowed: "
                           f"{', '.join(sorted(allowed))})")


__all__ = ["API_CALLERS", "REGISTRATION_CALLERS", "authorize", "role_of"]
