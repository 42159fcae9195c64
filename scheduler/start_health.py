"""Hosts that keep failing to start containers: told apart from services that cannot start anywhere.

The actuator reports the outcome of every launch. A failure counts against the *host* only when the
agent's answer says the host is at fault (``host_fault``): an OS error preparing the container's files,
a full disk, namespaces, mounts or cgroups that could not be set up, its supervisor down, an internal
error. It does not when the *service* is — an image that cannot be pulled or does not exist, a command
missing from the image, a spec the agent refuses — because moving the replica would not help, and marking
every host for one bad template would empty the cluster. An unreachable agent is not counted either: the
heartbeat already makes that host not ready.

``StartHealth`` (the leader's, in memory) counts each host's consecutive host-side failures; a successful
launch resets the count. From ``threshold`` failures in a row the host is *start-failing*: placement
avoids it (``host_state`` filter, reason "failing to start containers") and a failed replica on it is
placed again elsewhere instead of relaunched there. The mark lifts ``cooldown`` seconds after the last
failure, so the host is tried again (a circuit breaker's half-open state): one more failure marks it at
once, a success clears it. The state is written to the host's ``HostStatus`` (``get hosts`` shows it;
a new leader resumes from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.model import HostId, HostStatus

START_FAILURE_THRESHOLD = 3     # consecutive host-side launch failures that mark a host
START_FAILURE_COOLDOWN = 60.0   # seconds after the last failure before the host is tried again

# The agent's ``shoal-error`` kinds that are the host's fault (see agent/errors.py). ``ShoalError`` is the
# base class: an OS error no layer classified (a directory that could not be made, say).
_HOST_KINDS = frozenset({"ShoalError", "ResourceExhausted", "SupervisorUnavailable"})
# gRPC codes the agent answers with when it failed itself (no ``shoal-error``: an unexpected exception).
_HOST_CODES = frozenset({"INTERNAL", "UNKNOWN"})


def host_fault(code: str, metadata: Mapping[str, str]) -> bool:
    """Whether a failed ``CreateContainer`` (status ``code`` name, trailing ``metadata``) is the host's
    fault rather than the service's or the network's."""
    kind = metadata.get("shoal-error")
    if kind is None:
        return code in _HOST_CODES
    if kind == "LaunchError":
        return metadata.get("shoal-launch-kind", "setup") == "setup"
    return kind in _HOST_KINDS


@dataclass(frozen=True)
class StartState:
    failures: int = 0        # consecutive host-side launch failures
    last_at: float = 0.0     # when the last one happened
    reason: str = ""         # what the agent said then


@dataclass(frozen=True)
class StartHealthSettings:
    threshold: int = START_FAILURE_THRESHOLD
    cooldown: float = START_FAILURE_COOLDOWN

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.cooldown < 0:
            raise ValueError("start failures: need threshold >= 1 and cooldown >= 0")


class StartHealth:
    def __init__(self, settings: StartHealthSettings | None = None) -> None:
        self.settings = settings or StartHealthSettings()
        self._hosts: dict[HostId, StartState] = {}
        self._resumed: set[HostId] = set()
        # Hosts whose count changed since ``take_changed``: their statuses are judged again then (a host
        # whose count ends is no longer among the ``counted``, judged every pass on the clock).
        self._changed: set[HostId] = set()

    def failed(self, host: HostId, *, at: float, reason: str) -> None:
        before = self._hosts.get(host, StartState())
        self._hosts[host] = StartState(failures=before.failures + 1, last_at=at, reason=reason)
        self._changed.add(host)

    def succeeded(self, host: HostId) -> None:
        if self._hosts.pop(host, None) is not None:
            self._changed.add(host)

    def take_changed(self) -> set[HostId]:
        """The hosts whose count changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def resume(self, status: HostStatus) -> None:
        """Take over what a previous leader recorded — once per host: after that this leader's own count
        is newer than the record (which still says "failing" until this leader rewrites it)."""
        if status.id in self._resumed:
            return
        self._resumed.add(status.id)
        if status.id not in self._hosts and status.start_failures > 0:
            self._hosts[status.id] = StartState(failures=status.start_failures,
                                                last_at=status.last_start_failure,
                                                reason=status.start_failure_reason)

    def untroubled(self, host: HostId) -> bool:
        """No start failures counted for ``host``, and a previous leader's record of them taken over
        already: nothing of this host's status depends on start health or on the clock."""
        return host not in self._hosts and host in self._resumed

    def counted(self) -> list[HostId]:
        """The hosts with start failures counted (the only ones ``failing_until`` can answer for)."""
        return list(self._hosts)

    def state(self, host: HostId) -> StartState:
        return self._hosts.get(host, StartState())

    def failing_until(self, host: HostId) -> float | None:
        """Until when placement avoids ``host`` (None: it does not, or no longer once that time passed)."""
        state = self._hosts.get(host)
        if state is None or state.failures < self.settings.threshold:
            return None
        return state.last_at + self.settings.cooldown

    def failing(self, host: HostId, now: float) -> bool:
        until = self.failing_until(host)
        return until is not None and now < until

    def forget(self, keep: set[HostId]) -> None:
        """Drop hosts no longer registered."""
        for host in [h for h in self._hosts if h not in keep]:
            del self._hosts[host]
        self._resumed &= keep


__all__ = ["START_FAILURE_COOLDOWN", "START_FAILURE_THRESHOLD", "StartHealth", "StartHealthSettings",
           "StartState", "host_fault"]
