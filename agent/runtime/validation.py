"""What a create may ask for: every value of a spec checked against what will later carry it.

A value is refused at create, as ``InvalidArgument`` with a message saying which field and what is
allowed, when something further down would fail on it: ``execve`` (a NUL in an argument, an argument
over the kernel's ``MAX_ARG_STRLEN``), ``sethostname`` (more than 64 bytes), the supervisor's request
size, the API's own types (uid and gid are int32 in ``Container``; a page of ``ListContainers`` must fit
a client's 4 MiB message limit, so no single container may come near it) and the health monitor's clock
(NaN or a nanosecond interval). Docker accepts several of these and fails at start, leaving a container
that can never run; Kubernetes validates its objects at admission the same way. Pure functions over the
runtime's values; callers echo nothing unbounded (``agent.errors.quoted``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from agent.errors import InvalidArgument, quoted
from agent.limits import MAX_ID
from agent.runtime.health import HealthCheck, ProbeKind
from agent.runtime.spec import ContainerSpec
from agent.security import seccomp_profile

# The encoded ContainerSpec (labels, argv, env, ...): Kubernetes caps a whole object at 1.5 MiB; a
# container's description must leave room for several per ListContainers page.
MAX_SPEC_BYTES = 256 << 10
# The kernel's MAX_ARG_STRLEN (32 pages), counting the terminating NUL: execve fails with E2BIG above.
MAX_ARG_BYTES = 128 << 10
# argv + environment of the container's process, image values included, counted as execve counts them
# (each string plus its NUL). Linux allows a quarter of the stack limit (2 MiB by default); Shoal keeps
# a quarter of that so the start request stays far below the supervisor's 4 MiB request cap even when
# every character needs a JSON escape.
MAX_EXEC_BYTES = 512 << 10
# HOST_NAME_MAX; the characters are RFC 1123's plus '_' (which the kernel and Docker accept).
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})$")
# A user or group name (POSIX portable filename characters, plus '$' for machine accounts) or a number.
_USER_PART_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.$-]{0,63}$")
PATH_MAX = 4096
# Health timing: faster than this is a busy loop in the agent (the kubelet's minimum period is 1 s);
# longer than a day is a typo, and the event loop's timers overflow on huge values.
MIN_HEALTH_INTERVAL = 0.1
MIN_HEALTH_TIMEOUT = 0.01
MAX_HEALTH_SECONDS = 86_400.0


def validate_spec(spec: ContainerSpec) -> ContainerSpec:
    """``spec`` itself, or ``InvalidArgument`` naming the first value no container could run with."""
    check_strings(spec.entrypoint, what="entrypoint argument")
    check_strings(spec.command, what="command argument")
    check_strings(spec.env, what="environment variable")
    check_exec_size((*spec.entrypoint, *spec.command), spec.env, source="the request")
    if spec.working_dir:
        check_path(spec.working_dir, what="working directory")
    if spec.user:
        check_user(spec.user)
    if spec.hostname:
        check_hostname(spec.hostname)
    if spec.health is not None:
        check_health(spec.health)
    seccomp_profile.validate_option(spec.seccomp)
    return spec


def check_strings(values: Iterable[str], *, what: str) -> None:
    for value in values:
        if "\0" in value:
            raise InvalidArgument(f"{what} {quoted(value)} contains a NUL character, which no process "
                                  "argument or environment variable can hold")
        size = len(value.encode()) + 1
        if size > MAX_ARG_BYTES:
            raise InvalidArgument(f"{what} {quoted(value, limit=40)} is {size} bytes: the kernel allows "
                                  f"at most {MAX_ARG_BYTES} per argument or variable")


def check_exec_size(argv: Iterable[str], env: Iterable[str], *, source: str) -> None:
    """The whole of argv and the environment, as execve counts it."""
    total = sum(len(s.encode()) + 1 for s in (*argv, *env))
    if total > MAX_EXEC_BYTES:
        raise InvalidArgument(f"the command and environment from {source} are {total} bytes together: "
                              f"the most a container may have is {MAX_EXEC_BYTES} (put large data in a "
                              "file or a volume instead)")


def check_path(path: str, *, what: str) -> None:
    if "\0" in path:
        raise InvalidArgument(f"{what} {quoted(path)} contains a NUL character")
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} {quoted(path)} must be an absolute path (start with '/')")
    if len(path.encode()) >= PATH_MAX:
        raise InvalidArgument(f"{what} {quoted(path, limit=40)} is longer than PATH_MAX ({PATH_MAX} bytes)")


def check_user(user: str) -> None:
    """``uid[:gid]`` or ``name[:group]``: names of portable characters, numbers the API can carry."""
    parts = user.split(":")
    if len(parts) > 2 or not all(_USER_PART_RE.fullmatch(p) for p in parts):
        raise InvalidArgument(f"invalid user {quoted(user)}: use uid[:gid] or name[:group] (letters, "
                              "digits, '_', '.', '-', at most 64 each)")
    for part, kind in zip(parts, ("uid", "gid"), strict=False):
        if part.isdigit():
            check_id(int(part), what=kind)


def check_id(value: int, *, what: str, where: str = "") -> None:
    """A uid or gid; ``where`` says where it came from (``of user 'app' in image x``)."""
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{what} {value}{' ' + where if where else ''} is out of range: Shoal "
                              f"supports 0-{MAX_ID}")


def check_hostname(hostname: str) -> None:
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise InvalidArgument(f"invalid hostname {quoted(hostname)}: use at most 64 letters, digits, "
                              "'-', '_' or '.', starting with a letter or digit")


def check_health(check: HealthCheck) -> None:
    if check.kind is ProbeKind.EXEC:
        check_strings(check.command, what="health check command argument")
        check_exec_size(check.command, (), source="the health check")
    if check.kind is ProbeKind.HTTP and (len(check.path) > 2048 or any(
            ord(c) < 0x21 or c == "\x7f" for c in check.path)):
        raise InvalidArgument(f"health check path {quoted(check.path)} must be at most 2048 characters "
                              "without spaces or control characters")
    for value, what, least in ((check.interval, "interval", MIN_HEALTH_INTERVAL),
                               (check.timeout, "timeout", MIN_HEALTH_TIMEOUT),
                               (check.start_period, "start period", 0.0)):
        if not math.isfinite(value) or not least <= value <= MAX_HEALTH_SECONDS:
            raise InvalidArgument(f"health check {what} {value:g}s is out of range: use {least:g}s to "
                                  f"{MAX_HEALTH_SECONDS:g}s")


__all__ = [
    "MAX_ARG_BYTES", "MAX_EXEC_BYTES", "MAX_SPEC_BYTES", "check_exec_size", "check_health",
    "check_hostname", "check_id", "check_path", "check_strings", "check_user", "validate_spec",
]
