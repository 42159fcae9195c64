"""Parsing the values users type: sizes, cpus, pids, durations, env, restart policies, published ports.

Pure functions over text with no imports beyond ``re`` and the error tree, because the ``shoal`` CLI runs
them on every invocation to reject ``--memory 12Q`` before calling the agent, with the very message the
agent would give. The runtime's value types are built from these results in ``runtime/spec.py``,
``runtime/restart.py`` and ``network/ports.py``, so there is one parser and one message for each.
"""

from __future__ import annotations

import re

from agent.errors import InvalidArgument, quoted
from agent.limits import MAX_STORAGE_BYTES, MIN_CPU_MILLIS, MIN_MEMORY_BYTES, MIN_STORAGE_BYTES

# Patterns, compiled (and cached by re) on first use: compiling at import cost every CLI process.
_SIZE_RE = r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB]?)\s*$"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# [[HOSTIP:][HOSTPORT]:]CONTAINERPORT[/PROTO]; a missing or 0 host port means "the host picks one".
_PORT_SPEC = r"^(?:(?:(?P<ip>[0-9.]+):)?(?P<host>\d*):)?(?P<ctr>\d+)(?:/(?P<proto>[a-z]+))?$"
RESTART_MODES = ("no", "on-failure", "always")


def parse_size(raw: str, *, what: str = "size") -> int:
    """``64M``, ``1g``, ``512k``, ``1.5GiB``, ``1048576`` → bytes (binary units, like Docker)."""
    m = re.match(_SIZE_RE, raw)
    if not m:
        raise InvalidArgument(
            f"invalid {what} {raw!r}: expected a number with an optional unit k, m, g or t (e.g. 64M)"
        )
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * _UNITS[unit])


def parse_memory(raw: str, *, what: str = "memory limit") -> int:
    value = parse_size(raw, what=what)
    if value < MIN_MEMORY_BYTES:
        raise InvalidArgument(f"{what} {raw!r} is too small: the minimum is {MIN_MEMORY_BYTES >> 20}M")
    return value


def parse_storage_size(raw: str, *, what: str = "storage size") -> int:
    """``--storage-size 1G``: the container's writable-layer limit, in bytes."""
    value = parse_size(raw, what=what)
    if value < MIN_STORAGE_BYTES:
        raise InvalidArgument(f"{what} {raw!r} is too small: the minimum is {MIN_STORAGE_BYTES >> 20}M")
    if value > MAX_STORAGE_BYTES:
        raise InvalidArgument(f"{what} {raw!r} is too large: the maximum is {MAX_STORAGE_BYTES >> 50}P")
    return value


def parse_storage_opt(raw: str) -> int:
    """Docker's ``--storage-opt size=1G``, the one storage option Shoal knows: the writable-layer limit."""
    key, sep, value = raw.partition("=")
    if not sep or key.strip().lower() != "size":
        raise InvalidArgument(f"unsupported storage option {raw!r}: only size=SIZE is known (e.g. size=1G)")
    return parse_storage_size(value, what="storage size")


def parse_cpus(raw: str, *, what: str = "cpu limit") -> int:
    """``0.5`` cores → 500 millicores; ``250m`` is accepted too (Kubernetes style)."""
    text = raw.strip()
    try:
        millis = int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {raw!r}: expected cores like 0.5 or 2") from None
    if millis < MIN_CPU_MILLIS:
        raise InvalidArgument(f"{what} {raw!r} is too small: the minimum is 0.01 cores")
    return millis


def parse_pids(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"invalid pids limit {raw!r}: expected a whole number") from None
    if value < 1:
        raise InvalidArgument(f"pids limit must be at least 1, got {value}")
    return value


def parse_duration(raw: str, *, what: str = "duration") -> float:
    """``30s``, ``1.5m``, ``500ms``, ``2h`` or plain seconds → seconds."""
    m = re.match(_DURATION_RE, raw)
    if not m:
        raise InvalidArgument(f"invalid {what} {raw!r}: expected e.g. 500ms, 30s, 2m or 1h")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_env(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    for item in items:
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"invalid environment variable {quoted(item)}: expected KEY=VALUE")
    return tuple(items)


def parse_restart_text(raw: str) -> tuple[str, int]:
    """``no``, ``always``, ``on-failure`` or ``on-failure:5`` → (mode name, max retries)."""
    text = raw.strip()
    mode, sep, count_text = text.partition(":")
    if mode not in RESTART_MODES:
        raise InvalidArgument(
            f"invalid restart policy {raw!r}: use no, always, on-failure or on-failure:MAX"
        )
    if not sep:
        return mode, 0
    if mode != "on-failure":
        raise InvalidArgument(
            f"invalid restart policy {raw!r}: only on-failure takes a maximum (on-failure:5)"
        )
    try:
        count = int(count_text)
    except ValueError:
        raise InvalidArgument(f"invalid restart policy {raw!r}: the maximum must be a whole number") from None
    if count < 0:
        raise InvalidArgument(f"restart retries must not be negative, got {count}")
    return mode, count


def parse_port_text(spec: str) -> tuple[str, int, int, str]:
    """``"8080:80"``, ``"127.0.0.2:53:53/udp"``, ``"80"`` → (host address or "" for every address, host
    port — 0 when the host is to pick one, as Docker's ``-p 80`` —, container port, protocol);
    ``InvalidArgument`` says what is wrong."""
    match = re.match(_PORT_SPEC, spec.strip())
    if match is None:
        raise InvalidArgument(
            f"bad port spec {spec!r}: expected [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp], e.g. 8080:80 "
            "(or just CONTAINERPORT for a port the host picks)"
        )
    protocol = match["proto"] or "tcp"
    if protocol not in ("tcp", "udp"):
        raise InvalidArgument(f"bad port spec {spec!r}: protocol must be tcp or udp, not {protocol!r}")
    host_port, container_port = int(match["host"] or 0), int(match["ctr"])
    if not 0 <= host_port <= 65535:
        raise InvalidArgument(f"bad port spec {spec!r}: port {host_port} is outside 1-65535")
    if not 1 <= container_port <= 65535:
        raise InvalidArgument(f"bad port spec {spec!r}: port {container_port} is outside 1-65535")
    host_ip = ""
    if match["ip"] is not None:
        import ipaddress  # only when an address is given: the CLI's start-up does not pay for it

        try:
            address = ipaddress.IPv4Address(match["ip"])
        except ValueError:
            raise InvalidArgument(f"bad port spec {spec!r}: {match['ip']!r} is not an IPv4 address") from None
        if address.is_loopback:
            # DNAT to a bridge address from 127/8 is dropped as martian; Docker needs a userland proxy.
            raise InvalidArgument(
                f"bad port spec {spec!r}: publishing on a loopback address is not supported"
            )
        host_ip = "" if address.is_unspecified else str(address)
    return host_ip, host_port, container_port, protocol
