"""The ``root`` fixture: a fresh agent root whose supervisor (and its containers) must be gone at the end."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor.supervisor_harness import (
    children_of,
    process_gone,
    supervisor_pid,
    wait_until,
)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    pids: list[int] = []
    yield root
    pid = supervisor_pid(root)
    if pid is not None:
        pids.append(pid)
    for pid in pids:
        if not wait_until(lambda pid=pid: process_gone(pid), timeout=5):  # type: ignore[misc]
            # Left running by a failing test: take it and its containers down.
            with contextlib.suppress(ProcessLookupError):
                for child in children_of(pid):
                    os.kill(child, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda pid=pid: process_gone(pid), timeout=5)  # type: ignore[misc]
            pytest.fail(f"supervisor {pid} did not exit by itself")

LOG = {"log_max_bytes": 1 << 20, "log_max_files": 3}
