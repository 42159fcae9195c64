"""The supervisor with the real launcher (namespaces + overlay on a busybox lower dir)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from agent.errors import LaunchError
from agent.runtime import logs, runfile
from agent.runtime.plan import LaunchPlan, OverlayRootfs
from agent.runtime.supervisor_client import connect_or_spawn
from tests.integration.launch.conftest import build_busybox_rootfs
from tests.integration.supervisor.supervisor_harness import (
    container_dir,
    process_gone,
    run,
    supervisor_pid,
    wait_until,
)

pytestmark = [
    pytest.mark.integration, pytest.mark.root,
    pytest.mark.skipif(not shutil.which("busybox"), reason="needs busybox-static"),
]


def _plan(tmp: Path, lower: Path, cid: str, *argv: str) -> LaunchPlan:
    base = tmp / cid
    for d in ("upper", "work", "target"):
        (base / d).mkdir(parents=True)
    return LaunchPlan(
        container_id=cid,
        rootfs=OverlayRootfs(lower=(str(lower),), upper=str(base / "upper"), work=str(base / "work"),
                             target=str(base / "target")),
        argv=argv, env=("PATH=/bin",), hostname=cid,
    )


def test_real_containers_log_exit_and_fail_to_start(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    build_busybox_rootfs(lower)
    root = tmp_path / "root"
    root.mkdir()

    async def scenario() -> None:
        client = await connect_or_spawn(root)
        events = client.events()
        d = container_dir(root, "real")
        # The background sleep holds stdout open, but dies with the pid namespace's pid 1.
        plan = _plan(tmp_path, lower, "real", "sh", "-c",
                     "sleep 100 & echo out-$(hostname); echo err >&2; exit 5")
        result = await client.start("real", directory=d, plan=plan, log_max_bytes=1 << 20, log_max_files=2)
        event = await asyncio.wait_for(anext(events), 10)
        assert (event.container_id, event.pid, event.exit_code) == ("real", result.pid, 5)
        entries = list(logs.read_entries(d))
        assert [(e.stream, e.text) for e in entries] in (
            [("stdout", b"out-real"), ("stderr", b"err")], [("stderr", b"err"), ("stdout", b"out-real")])
        bad = container_dir(root, "bad")
        with pytest.raises(LaunchError) as caught:
            await client.start("bad", directory=bad, plan=_plan(tmp_path, lower, "bad", "/no/such"),
                               log_max_bytes=1 << 20, log_max_files=2)
        assert caught.value.kind == "not-found"
        record = runfile.read_run_file(bad)
        assert record is not None and record.exit_code == 127 and record.pid is None
        await client.close()

    try:
        run(scenario())
    finally:
        pid = supervisor_pid(root)
        assert pid is None or wait_until(lambda: process_gone(pid))
