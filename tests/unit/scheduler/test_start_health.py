"""Which launch failures count against a host, and when a host is avoided for them."""

from __future__ import annotations

import pytest

from scheduler.model import HostId, HostStatus
from scheduler.start_health import StartHealth, StartHealthSettings, host_fault

H = HostId("h1")


@pytest.mark.parametrize(("code", "metadata", "fault"), [
    # the host's fault: an OS error preparing files, a full disk, its supervisor, setup, its own bug
    ("UNKNOWN", {"shoal-error": "ShoalError"}, True),
    ("RESOURCE_EXHAUSTED", {"shoal-error": "ResourceExhausted"}, True),
    ("UNAVAILABLE", {"shoal-error": "SupervisorUnavailable"}, True),
    ("FAILED_PRECONDITION", {"shoal-error": "LaunchError", "shoal-launch-kind": "setup"}, True),
    ("INTERNAL", {}, True),
    # the service's: an image that cannot be pulled or lacks the command, a spec refused
    ("UNAVAILABLE", {"shoal-error": "Unavailable"}, False),       # the registry
    ("UNAUTHENTICATED", {"shoal-error": "Unauthenticated"}, False),
    ("NOT_FOUND", {"shoal-error": "NotFound"}, False),
    ("INVALID_ARGUMENT", {"shoal-error": "InvalidArgument"}, False),
    ("FAILED_PRECONDITION", {"shoal-error": "LaunchError", "shoal-launch-kind": "not-found"}, False),
    ("FAILED_PRECONDITION", {"shoal-error": "StaleEpoch"}, False),
    # the network's: the heartbeat handles an unreachable agent
    ("UNAVAILABLE", {}, False),
    ("DEADLINE_EXCEEDED", {}, False),
])
def test_what_counts_against_the_host(code: str, metadata: dict[str, str], fault: bool) -> None:
    assert host_fault(code, metadata) is fault


def test_threshold_failures_in_a_row_mark_the_host_until_the_cooldown_after_the_last() -> None:
    health = StartHealth(StartHealthSettings(threshold=3, cooldown=60))
    health.failed(H, at=100, reason="a")
    health.failed(H, at=101, reason="b")
    assert not health.failing(H, 101) and health.failing_until(H) is None
    health.failed(H, at=102, reason="c")
    assert health.failing(H, 102) and health.failing_until(H) == 162
    assert health.state(H).failures == 3 and health.state(H).reason == "c"
    assert not health.failing(H, 162)           # tried again after the cooldown...
    health.failed(H, at=170, reason="d")
    assert health.failing(H, 170)               # ...one more failure marks it at once
    health.succeeded(H)
    assert not health.failing(H, 171) and health.state(H).failures == 0


def test_a_new_leader_resumes_from_the_record_once() -> None:
    record = HostStatus(id=H, ready=True, start_failures=5, last_start_failure=100.0,
                        start_failure_reason="disk", start_failing=True)
    health = StartHealth(StartHealthSettings(threshold=3, cooldown=60))
    health.resume(record)
    assert health.failing(H, 120) and health.state(H).reason == "disk"
    health.succeeded(H)
    health.resume(record)  # the record still says failing until rewritten: this leader knows better
    assert health.state(H).failures == 0


def test_forgotten_hosts_go() -> None:
    health = StartHealth()
    health.failed(H, at=1, reason="x")
    health.forget(set())
    assert health.state(H).failures == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        StartHealthSettings(threshold=0)
