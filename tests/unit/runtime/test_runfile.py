"""run.json: round trip, absence, and refusal of garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ShoalError
from agent.runtime.runfile import RunRecord, read_run_file, write_run_file


def test_round_trip_running_then_exited(tmp_path: Path) -> None:
    running = RunRecord(pid=42, started_at=1700000000.25)
    write_run_file(tmp_path, running)
    assert read_run_file(tmp_path) == running
    assert not running.finished
    exited = RunRecord(pid=42, started_at=1700000000.25, exit_code=137, signal=9, finished_at=1700000001.5)
    write_run_file(tmp_path, exited)
    assert read_run_file(tmp_path) == exited and exited.finished
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


def test_start_failure_record(tmp_path: Path) -> None:
    failed = RunRecord(pid=None, started_at=None, exit_code=127, finished_at=1.0,
                       error="nope: command not found", error_kind="not-found")
    write_run_file(tmp_path, failed)
    assert read_run_file(tmp_path) == failed


def test_missing_is_none_and_garbage_is_an_error(tmp_path: Path) -> None:
    assert read_run_file(tmp_path) is None
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ShoalError):
        read_run_file(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ShoalError):
        read_run_file(tmp_path)


def test_lost_exit_record(tmp_path: Path) -> None:
    lost = RunRecord(pid=42, started_at=1.0, exit_code=255, finished_at=2.0, lost="its keeper had died")
    write_run_file(tmp_path, lost)
    assert read_run_file(tmp_path) == lost and lost.finished
