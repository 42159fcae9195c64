"""config.json keeps restart policy and health check; status.json keeps the daemon's bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

from agent.runtime.health import HealthCheck, HealthResult, HealthStatus, ProbeKind
from agent.runtime.records import STATUS_FILE, ContainerStatus, read_status, write_status
from agent.runtime.restart import RestartMode, RestartPolicy
from agent.runtime.spec import ContainerSpec, Resources, spec_from_dict, spec_to_dict


def test_spec_round_trips_restart_and_health_through_json() -> None:
    spec = ContainerSpec(
        image="busybox:v1", command=("sh",), labels=(("app", "web"),),
        resources=Resources(memory_bytes=1 << 26),
        restart=RestartPolicy(RestartMode.ON_FAILURE, max_retries=5),
        health=HealthCheck(kind=ProbeKind.HTTP, port=8080, path="/healthz", interval=2.5, timeout=1.0,
                           retries=4, start_period=10.0, restart_on_unhealthy=True),
    )
    raw = json.loads(json.dumps(spec_to_dict(spec)))
    assert raw["restart"] == {"mode": "on-failure", "max_retries": 5}
    assert spec_from_dict(raw) == spec
    exec_spec = ContainerSpec(image="x",
                              health=HealthCheck(kind=ProbeKind.EXEC, command=("sh", "-c", "true")))
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(exec_spec)))) == exec_spec


def test_a_spec_written_by_an_older_agent_loads_with_defaults() -> None:
    old = {"image": "busybox:v1", "entrypoint": [], "command": ["sh"], "env": [], "working_dir": "",
           "user": "", "hostname": "",
           "resources": {"memory_bytes": None, "cpu_millis": None, "pids_max": None},
           "read_only": False, "network": "none", "labels": {}, "auto_remove": False}
    spec = spec_from_dict(old)
    assert spec.restart == RestartPolicy() and spec.restart.mode is RestartMode.NO
    assert spec.health is None


def test_status_round_trips_and_defaults_when_missing(tmp_path: Path) -> None:
    assert read_status(tmp_path) == ContainerStatus()
    status = ContainerStatus(
        restart_count=3, backoff_streak=2, stopped_by_user=True, next_restart_at=123.5, exit_handled=120.25,
        kill_reason="Unhealthy", health=HealthStatus.UNHEALTHY, health_failing_streak=3,
        health_log=(HealthResult(start=1.0, end=2.0, ok=False, output="refused"),),
    )
    write_status(tmp_path, status)
    assert read_status(tmp_path) == status
    assert not list(tmp_path.glob(".*.tmp"))  # written by rename


def test_unreadable_or_newer_status_files_do_not_break_loading(tmp_path: Path) -> None:
    (tmp_path / STATUS_FILE).write_text('{"restart_count": 2, "from_a_newer_agent": 1}')
    assert read_status(tmp_path).restart_count == 2
    (tmp_path / STATUS_FILE).write_text("{not json")
    assert read_status(tmp_path) == ContainerStatus()
