"""The ``--etcd`` flag: a comma-separated list of etcd client URLs, as one gRPC target for aetcd.

``http://10.0.0.1:2379,http://10.0.0.2:2379`` becomes ``ipv4:10.0.0.1:2379,10.0.0.2:2379``: one channel
over every member, which gRPC's ``round_robin`` policy spreads calls across and fails over between (a
member that dies drops out until it answers again). gRPC's ``ipv4:``/``ipv6:`` targets take addresses, not
names, so host names are resolved once, when the store opens (``resolve``); a single named endpoint is
left to gRPC's DNS resolver instead (``dns:///name:port``), which follows changes of its addresses.
TLS to etcd is not supported yet: ``https://`` is refused with a message saying so.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_PORT = 2379


@dataclass(frozen=True)
class Endpoint:
    host: str  # an IP address or a name, without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """``http://HOST:PORT[,http://HOST:PORT...]`` (the scheme and port may be left out) → endpoints.
    Raises ``ValueError`` with the offending item."""
    endpoints: list[Endpoint] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"--etcd {text!r}: empty endpoint (a stray comma?)")
        url = urllib.parse.urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme == "https":
            raise ValueError(f"--etcd {item}: TLS to etcd is not supported yet; use http:// on a network "
                             "only the schedulers and etcd share")
        if url.scheme != "http" or url.path not in ("", "/") or url.query or url.username:
            raise ValueError(f"--etcd {item}: expected http://HOST:PORT")
        try:
            port = url.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"--etcd {item}: bad port") from None
        if not url.hostname:
            raise ValueError(f"--etcd {item}: no host")
        endpoints.append(Endpoint(url.hostname, port))
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"--etcd {text!r}: an endpoint is listed twice")
    return tuple(endpoints)


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


Resolver = Callable[[str, int], list[str]]


def resolve_with_getaddrinfo(host: str, port: int) -> list[str]:
    """The host's addresses."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(endpoints: tuple[Endpoint, ...], resolver: Resolver = resolve_with_getaddrinfo,
            ) -> tuple[Endpoint, ...]:
    """Endpoints with names replaced by their addresses (one endpoint per address; a name's IPv4 addresses
    when it has any, else its IPv6 ones), when there are several endpoints; a single endpoint is returned
    as it is."""
    if len(endpoints) == 1:
        return endpoints
    out: list[Endpoint] = []
    for ep in endpoints:
        if _is_ip(ep.host, 4) or _is_ip(ep.host, 6):
            out.append(ep)
            continue
        try:
            addresses = resolver(ep.host, ep.port)
        except OSError as err:
            raise ValueError(f"--etcd {ep}: cannot resolve {ep.host}: {err}") from None
        v4 = [a for a in addresses if _is_ip(a, 4)]
        out.extend(Endpoint(a, ep.port) for a in (v4 or addresses))
    return tuple(dict.fromkeys(out))


def grpc_target(endpoints: tuple[Endpoint, ...]) -> str:
    """The gRPC target naming every endpoint (resolved first when there are several)."""
    if not endpoints:
        raise ValueError("no etcd endpoint")
    if len(endpoints) == 1 and not (_is_ip(endpoints[0].host, 4) or _is_ip(endpoints[0].host, 6)):
        return f"dns:///{endpoints[0].host}:{endpoints[0].port}"
    if all(_is_ip(ep.host, 4) for ep in endpoints):
        return "ipv4:" + ",".join(f"{ep.host}:{ep.port}" for ep in endpoints)
    if all(_is_ip(ep.host, 6) for ep in endpoints):
        return "ipv6:" + ",".join(f"[{ep.host}]:{ep.port}" for ep in endpoints)
    if all(_is_ip(ep.host, 4) or _is_ip(ep.host, 6) for ep in endpoints):
        raise ValueError(f"--etcd {','.join(map(str, endpoints))}: IPv4 and IPv6 endpoints cannot be mixed "
                         "(gRPC takes one address family per target)")
    raise ValueError(f"etcd endpoints {', '.join(map(str, endpoints))} are not addresses: resolve them first")


__all__ = ["DEFAULT_PORT", "Endpoint", "grpc_target", "parse_endpoints", "resolve"]
