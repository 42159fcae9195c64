"""Health checks: what to probe, the status machine that turns probe results into a health status, and
the per-container loop that probes on an interval.

The status machine is a pure function (``apply_result``) with Docker's semantics: a container with a
check starts ``starting``; one success makes it ``healthy``; ``retries`` consecutive failures make it
``unhealthy`` — except failures inside the start period, which are recorded but not counted; a success
makes it healthy again. The loop (``HealthMonitor``) owns no side effects itself: it is given the probe
to run, a clock, a sleep and a callback for each new state, so tests drive it with fakes and the runtime
decides what a change means (events, status file, restart-on-unhealthy). The probes themselves live in
``agent.runtime.probes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import Enum

from agent.errors import InvalidArgument

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
LOG_KEEP = 5
OUTPUT_MAX = 4096
# The probes enforce the check's timeout themselves; this is the monitor's backstop on top of it.
PROBE_GRACE = 5.0


class ProbeKind(Enum):
    EXEC = "exec"
    TCP = "tcp"
    HTTP = "http"


class HealthStatus(Enum):
    NONE = "none"  # the container has no health check
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class HealthCheck:
    """One probe and its timing. ``command`` is an argv for exec probes (wrap a shell string in
    ``("/bin/sh", "-c", CMD)``); ``port``/``path`` are for TCP and HTTP probes, inside the container's
    network namespace."""

    kind: ProbeKind
    command: tuple[str, ...] = ()
    port: int = 0
    path: str = "/"
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    start_period: float = 0.0
    restart_on_unhealthy: bool = False

    def __post_init__(self) -> None:
        if self.kind is ProbeKind.EXEC and not self.command:
            raise InvalidArgument("an exec health check needs a command")
        if self.kind is not ProbeKind.EXEC and not 1 <= self.port <= 65535:
            raise InvalidArgument(f"health check port must be 1-65535, got {self.port}")
        if self.kind is ProbeKind.HTTP and not self.path.startswith("/"):
            raise InvalidArgument(f"health check path must start with '/', got {self.path!r}")
        if self.interval <= 0 or self.timeout <= 0:
            raise InvalidArgument("health check interval and timeout must be positive")
        if self.retries < 1:
            raise InvalidArgument(f"health check retries must be at least 1, got {self.retries}")
        if self.start_period < 0:
            raise InvalidArgument("health check start period must not be negative")


@dataclass(frozen=True)
class HealthResult:
    start: float  # unix time
    end: float
    ok: bool
    output: str  # probe output or the error, at most OUTPUT_MAX bytes of it


@dataclass(frozen=True)
class HealthState:
    status: HealthStatus = HealthStatus.STARTING
    failing_streak: int = 0
    log: tuple[HealthResult, ...] = ()


def truncate_output(text: str, limit: int = OUTPUT_MAX) -> str:
    raw = text.encode(errors="replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + "…"


def apply_result(state: HealthState, result: HealthResult, *, check: HealthCheck,
                 in_start_period: bool) -> HealthState:
    """The state after one probe result (see the module docstring for the rules)."""
    log = (*state.log, result)[-LOG_KEEP:]
    if result.ok:
        return HealthState(status=HealthStatus.HEALTHY, failing_streak=0, log=log)
    if in_start_period and state.status is HealthStatus.STARTING:
        # Docker: failures while the app is still coming up neither count nor change the status.
        return replace(state, log=log)
    streak = state.failing_streak + 1
    status = HealthStatus.UNHEALTHY if streak >= check.retries else state.status
    return HealthState(status=status, failing_streak=streak, log=log)


ProbeOutcome = tuple[bool, str]  # (ok, output)


class HealthMonitor:
    """Probes one running container every ``check.interval`` until cancelled.

    ``probe`` must return within about ``check.timeout`` (the probes enforce it; the monitor adds a
    safety margin). ``on_change(old, new)`` is called after every result, changed status or not, so
    the caller can keep the log; it may not block.
    """

    def __init__(self, check: HealthCheck, *, started_at: float, state: HealthState,
                 probe: Callable[[], Awaitable[ProbeOutcome]],
                 on_result: Callable[[HealthState, HealthState], None],
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 grace: float = PROBE_GRACE) -> None:
        self.check = check
        self.started_at = started_at
        self.state = state
        self._probe = probe
        self._on_result = on_result
        self._clock = clock
        self._sleep = sleep
        self._grace = grace

    async def probe_once(self) -> HealthState:
        start = self._clock()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as the
            # probe finishes, and then the monitor of an exited container would never stop.
            async with asyncio.timeout(self.check.timeout + self._grace):
                ok, output = await self._probe()
        except TimeoutError:
            ok, output = False, f"health check timed out after {self.check.timeout:g}s"
        end = self._clock()
        result = HealthResult(start=start, end=end, ok=ok, output=truncate_output(output))
        old = self.state
        self.state = apply_result(old, result, check=self.check,
                                  in_start_period=start - self.started_at < self.check.start_period)
        self._on_result(old, self.state)
        return self.state

    async def run(self) -> None:
        """Like Docker: the first probe runs one interval after the start, then one per interval."""
        while True:
            await self._sleep(self.check.interval)
            await self.probe_once()


__all__ = [
    "DEFAULT_INTERVAL", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "HealthCheck", "HealthMonitor", "HealthResult",
    "HealthState", "HealthStatus", "ProbeKind", "apply_result",
]
