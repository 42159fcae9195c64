"""Container specs as the runtime sees them, and parsing of the values users type.

Protobuf messages stop at the server; the runtime works on these frozen dataclasses. Parsing lives here so
the CLI and the server agree on what ``--memory 64M`` or ``--cpus 0.5`` mean and reject the same input with
the same message.
"""

from __future__ import annotations

import re
import secrets
import signal as signals
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, NewType

from agent.errors import InvalidArgument, quoted
from agent.limits import (
    MAX_CPU_MILLIS,
    MAX_MEMORY_BYTES,
    MAX_PIDS,
    MAX_STORAGE_BYTES,
    MIN_CPU_MILLIS,
    MIN_MEMORY_BYTES,
    MIN_STORAGE_BYTES,
)
from agent.network.ports import PortMapping
from agent.parsing import (  # the parsers live in agent/parsing.py, which the CLI imports cheaply
    parse_cpus,
    parse_duration,
    parse_env,
    parse_memory,
    parse_pids,
    parse_size,
    parse_storage_size,
)
from agent.runtime.health import HealthCheck, ProbeKind
from agent.runtime.restart import RestartMode, RestartPolicy

ContainerId = NewType("ContainerId", str)

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


class NetworkMode(Enum):
    NONE = "none"      # own network namespace, loopback only
    HOST = "host"      # the host's network namespace
    BRIDGE = "bridge"  # own namespace with eth0 on the host bridge (agent started with --subnet)


@dataclass(frozen=True)
class Resources:
    """Limits (what the kernel enforces) and requests (what the host reserves for the container). None
    means unlimited for a limit, and "the same as the limit" for a request (as in Kubernetes)."""

    memory_bytes: int | None = None
    cpu_millis: int | None = None
    pids_max: int | None = None
    memory_request_bytes: int | None = None
    cpu_request_millis: int | None = None
    storage_bytes: int | None = None  # the writable layer's limit (see agent.rootfs.storage_limit)

    @property
    def memory_reserved(self) -> int:
        """Bytes the host reserves for it (0 when neither a request nor a limit is set)."""
        return self.memory_request_bytes if self.memory_request_bytes is not None else self.memory_bytes or 0

    @property
    def cpu_reserved(self) -> int:
        return self.cpu_request_millis if self.cpu_request_millis is not None else self.cpu_millis or 0

    def validate(self) -> Resources:
        """Itself, or ``InvalidArgument`` naming the first value no container could run with. The same
        bounds as the CLI's parsers and the cgroup layer (``agent.limits``)."""
        for value, what in ((self.memory_bytes, "memory limit"), (self.cpu_millis, "cpu limit"),
                            (self.pids_max, "pids limit"), (self.memory_request_bytes, "memory request"),
                            (self.cpu_request_millis, "cpu request"), (self.storage_bytes, "storage limit")):
            if value is not None and value < 0:
                raise InvalidArgument(f"{what} must not be negative")
        if self.memory_bytes is not None and self.memory_bytes < MIN_MEMORY_BYTES:
            raise InvalidArgument(f"memory limit {self.memory_bytes} bytes is too small: the minimum is "
                                  f"{MIN_MEMORY_BYTES >> 20}M")
        if self.cpu_millis is not None and self.cpu_millis < MIN_CPU_MILLIS:
            raise InvalidArgument(f"cpu limit {self.cpu_millis}m is too small: the minimum is "
                                  f"{MIN_CPU_MILLIS}m (0.01 cores)")
        if self.storage_bytes is not None and self.storage_bytes < MIN_STORAGE_BYTES:
            raise InvalidArgument(f"storage limit {self.storage_bytes} bytes is too small: the minimum is "
                                  f"{MIN_STORAGE_BYTES >> 20}M")
        if self.storage_bytes is not None and self.storage_bytes > MAX_STORAGE_BYTES:
            raise InvalidArgument(f"storage limit {self.storage_bytes} bytes is too large: the maximum is "
                                  f"{MAX_STORAGE_BYTES >> 50}P")
        if self.pids_max is not None and self.pids_max < 1:
            raise InvalidArgument(f"pids limit must be at least 1, got {self.pids_max}")
        for value, what, most in ((self.memory_bytes, "memory limit", MAX_MEMORY_BYTES),
                                  (self.memory_request_bytes, "memory request", MAX_MEMORY_BYTES)):
            if value is not None and value > most:
                raise InvalidArgument(f"{what} {value} bytes is too large: the maximum is {most >> 40}T")
        for value, what in ((self.cpu_millis, "cpu limit"), (self.cpu_request_millis, "cpu request")):
            if value is not None and value > MAX_CPU_MILLIS:
                raise InvalidArgument(f"{what} {value}m is too large: the maximum is {MAX_CPU_MILLIS}m "
                                      f"({MAX_CPU_MILLIS // 1000} cores)")
        if self.pids_max is not None and self.pids_max > MAX_PIDS:
            raise InvalidArgument(f"pids limit {self.pids_max} is too large: the kernel allows at most "
                                  f"{MAX_PIDS}")
        if (self.memory_request_bytes is not None and self.memory_bytes is not None
                and self.memory_request_bytes > self.memory_bytes):
            raise InvalidArgument(f"memory request {self.memory_request_bytes} bytes exceeds the memory "
                                  f"limit {self.memory_bytes} bytes")
        if (self.cpu_request_millis is not None and self.cpu_millis is not None
                and self.cpu_request_millis > self.cpu_millis):
            raise InvalidArgument(f"cpu request {self.cpu_request_millis}m exceeds the cpu limit "
                                  f"{self.cpu_millis}m")
        return self


@dataclass(frozen=True)
class ContainerSpec:
    """What the caller asked for; merged with the image config at create time."""

    image: str
    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    resources: Resources = field(default_factory=Resources)
    read_only: bool = False
    network: NetworkMode = NetworkMode.NONE
    labels: tuple[tuple[str, str], ...] = ()
    auto_remove: bool = False
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    health: HealthCheck | None = None
    ports: tuple[PortMapping, ...] = ()  # published ports, bridge network only


def new_container_id() -> ContainerId:
    return ContainerId(secrets.token_hex(32))


def validate_id(raw: str) -> ContainerId:
    if not _ID_RE.fullmatch(raw):
        raise InvalidArgument(
            f"invalid container id {quoted(raw)}: use 1-64 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return ContainerId(raw)


def validate_name(raw: str) -> str:
    if not _NAME_RE.fullmatch(raw):
        raise InvalidArgument(
            f"invalid container name {quoted(raw)}: use letters, digits, '_', '.', '-' (at most 128), "
            "starting with a letter or digit"
        )
    return raw


def merge_env(base: tuple[str, ...], overrides: tuple[str, ...]) -> tuple[str, ...]:
    """Image env then spec env; a later KEY replaces an earlier one in place."""
    merged: dict[str, str] = {}
    for item in (*base, *overrides):
        key, _, value = item.partition("=")
        merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def parse_signal(raw: str | int, *, default: int) -> int:
    """``TERM``, ``SIGKILL``, ``9`` (or an int) → a signal number; empty → ``default``."""
    if isinstance(raw, int):
        return raw
    text = raw.strip().upper()
    if not text:
        return default
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgument(
            f"unknown signal {quoted(raw)}: use a name like TERM or KILL, or a number") from None


def spec_to_dict(spec: ContainerSpec) -> dict[str, Any]:
    """The spec as config.json stores it."""
    raw = asdict(spec)
    raw["network"] = spec.network.value
    raw["labels"] = dict(spec.labels)
    raw["restart"] = {"mode": spec.restart.mode.value, "max_retries": spec.restart.max_retries}
    if spec.health is not None:
        raw["health"] = {**asdict(spec.health), "kind": spec.health.kind.value}
    raw["ports"] = [p.to_dict() for p in spec.ports]
    return raw


def spec_from_dict(raw: dict[str, Any]) -> ContainerSpec:
    """The inverse of ``spec_to_dict``; keys an older agent did not write get their defaults."""
    data = dict(raw)
    data["resources"] = Resources(**data["resources"])
    data["network"] = NetworkMode(data["network"])
    data["labels"] = tuple(sorted(data["labels"].items()))
    for key in ("entrypoint", "command", "env"):
        data[key] = tuple(data[key])
    policy = data.pop("restart", None)
    if policy is not None:
        data["restart"] = RestartPolicy(RestartMode(policy["mode"]), max_retries=policy["max_retries"])
    data["ports"] = tuple(PortMapping.from_dict(p) for p in data.get("ports", ()))
    check = data.pop("health", None)
    if check is not None:
        data["health"] = HealthCheck(**{**check, "kind": ProbeKind(check["kind"]),
                                        "command": tuple(check["command"])})
    return ContainerSpec(**data)


# The parsers are re-exported: callers keep importing them from here (their home is agent/parsing.py).
__all__ = [
    "ContainerId", "ContainerSpec", "NetworkMode", "Resources", "merge_env", "new_container_id",
    "parse_cpus", "parse_duration", "parse_env", "parse_memory", "parse_pids", "parse_signal", "parse_size",
    "parse_storage_size",
    "spec_from_dict", "spec_to_dict", "validate_id", "validate_name",
]
