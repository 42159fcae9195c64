"""Measures (prints, does not judge) the supervisor's memory: RSS idle and with 100 running containers.

Run with ``-s`` to see the numbers. Containers are host ``sleep`` processes from the fake launcher, so
the figure is the supervisor's own per-container cost (state, two pipes, a log fd), not the container's.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from agent.runtime.supervisor_client import SupervisorClient, connect_or_spawn
from tests.integration.supervisor.supervisor_harness import (
    FAKE_LAUNCHER,
    container_dir,
    host_plan,
    process_gone,
    run,
    supervisor_pid,
    wait_until,
)

pytestmark = pytest.mark.integration


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_measure_supervisor_rss_per_container(root: Path) -> None:
    count = 100

    async def scenario() -> None:
        client: SupervisorClient = await connect_or_spawn(root, launcher=FAKE_LAUNCHER)
        pid = await client.hello()
        # One start + exit first, so lazily created structures are not charged to the 100.
        warm = container_dir(root, "warm")
        await client.start("warm", directory=warm, plan=host_plan("warm", "true"), log_max_bytes=1 << 20,
                           log_max_files=2)
        assert await _wait_not_running(client, "warm")
        idle = _status_kib(pid, "VmRSS")
        await asyncio.gather(*(
            client.start(f"s{i}", directory=container_dir(root, f"s{i}"),
                         plan=host_plan(f"s{i}", "sh", "-c", "echo started; exec sleep 1000"),
                         log_max_bytes=1 << 20, log_max_files=2)
            for i in range(count)
        ))
        running = await client.list_running()
        assert len(running) == count
        busy = _status_kib(pid, "VmRSS")
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        print(f"\nsupervisor VmRSS idle={idle} KiB, with {count} containers={busy} KiB, "
              f"per container={(busy - idle) / count:.1f} KiB, fds={fds}, "
              f"VmHWM={_status_kib(pid, 'VmHWM')} KiB")
        for cid in running:
            await client.kill(cid, signal.SIGKILL)
        assert await _wait_not_running(client, *running)
        await client.close()

    run(scenario())
    pid = supervisor_pid(root)
    assert pid is None or wait_until(lambda: process_gone(pid))


async def _wait_not_running(client: SupervisorClient, *ids: str) -> bool:
    for _ in range(1000):
        if not set(ids) & set(await client.list_running()):
            return True
        await asyncio.sleep(0.01)
    return False
