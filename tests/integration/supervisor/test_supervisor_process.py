"""The supervisor as a real process, driven through SupervisorClient, with host commands as containers."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from agent.errors import FailedPrecondition, LaunchError, ShoalError
from agent.runtime import logs, runfile
from agent.runtime.supervisor.paths import SupervisorPaths
from agent.runtime.supervisor_client import ExitEvent, SupervisorClient, connect_or_spawn
from tests.integration.supervisor.supervisor_harness import (
    FAKE_LAUNCHER,
    async_wait_until,
    container_dir,
    host_plan,
    process_gone,
    run,
    supervisor_pid,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.integration

LOG = {"log_max_bytes": 1 << 20, "log_max_files": 3}


async def _connect(root: Path) -> SupervisorClient:
    return await connect_or_spawn(root, launcher=FAKE_LAUNCHER)


async def _next_exit(events: asyncio.Queue[ExitEvent], cid: str) -> ExitEvent:
    while True:
        event = await asyncio.wait_for(events.get(), 10)
        if event.container_id == cid:
            return event


def _collect(client: SupervisorClient) -> tuple[asyncio.Queue[ExitEvent], asyncio.Task[None]]:
    queue: asyncio.Queue[ExitEvent] = asyncio.Queue()

    async def pump() -> None:
        async for event in client.events():
            queue.put_nowait(event)

    return queue, asyncio.create_task(pump())


def test_start_writes_separated_logs_and_exit(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        events, pump = _collect(client)
        d = container_dir(root, "c1")
        result = await client.start("c1", directory=d, plan=host_plan(
            "c1", "sh", "-c", "echo out1; echo err1 >&2; printf 'no-newline'; exit 3"), **LOG)
        event = await _next_exit(events, "c1")
        assert (event.pid, event.exit_code, event.signal) == (result.pid, 3, None)
        # The event comes after run.json and the log are complete.
        record = runfile.read_run_file(d)
        assert record is not None
        assert (record.pid, record.exit_code, record.signal, record.error) == (result.pid, 3, None, None)
        assert record.started_at == result.started_at and record.finished_at == event.finished_at
        entries = list(logs.read_entries(d))
        assert [(e.text, e.partial) for e in entries if e.stream == "stdout"] == [
            (b"out1", False), (b"no-newline", False)]
        assert [e.text for e in entries if e.stream == "stderr"] == [b"err1"]
        assert await client.list_running() == {}
        await client.close()
        pump.cancel()

    run(scenario())


def test_kill_records_signal_and_is_only_delivered_to_live_containers(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        events, pump = _collect(client)
        d = container_dir(root, "sleeper")
        result = await client.start("sleeper", directory=d, plan=host_plan("sleeper", "sleep", "100"), **LOG)
        running = await client.list_running()
        assert running["sleeper"].pid == result.pid
        assert await client.kill("sleeper", signal.SIGTERM) is True
        event = await _next_exit(events, "sleeper")
        assert (event.exit_code, event.signal) == (128 + signal.SIGTERM, signal.SIGTERM)
        record = runfile.read_run_file(d)
        assert record is not None and (record.exit_code, record.signal) == (143, signal.SIGTERM)
        assert await client.kill("sleeper", signal.SIGKILL) is False
        assert await client.kill("never-started", signal.SIGKILL) is False
        await client.close()
        pump.cancel()

    run(scenario())


def test_launch_failure_is_recorded_with_its_kind(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        d = container_dir(root, "bad")
        with pytest.raises(LaunchError) as caught:
            await client.start("bad", directory=d, plan=host_plan("bad", "/no/such/command"), **LOG)
        assert caught.value.kind == "not-found"
        record = runfile.read_run_file(d)
        assert record is not None
        assert (record.pid, record.exit_code, record.error_kind) == (None, 127, "not-found")
        assert record.error and "/no/such/command" in record.error
        await client.close()

    run(scenario())


def test_duplicate_start_and_shutdown_with_live_container_are_refused(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        events, pump = _collect(client)
        d = container_dir(root, "dup")
        await client.start("dup", directory=d, plan=host_plan("dup", "sleep", "100"), **LOG)
        with pytest.raises(ShoalError, match="already running"):
            await client.start("dup", directory=d, plan=host_plan("dup", "sleep", "100"), **LOG)
        with pytest.raises(FailedPrecondition):
            await client.shutdown()
        await client.kill("dup", signal.SIGKILL)
        assert (await _next_exit(events, "dup")).exit_code == 137
        await client.close()
        pump.cancel()

    run(scenario())


_AGENT_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, {testdir!r})
    from supervisor_harness import host_plan
    from agent.runtime.supervisor_client import connect_or_spawn

    async def main():
        root = Path({root!r})
        client = await connect_or_spawn(root, launcher={launcher!r})
        for cid, argv in {containers!r}:
            d = root / "containers" / cid
            d.mkdir(parents=True)
            await client.start(cid, directory=d, plan=host_plan(cid, *argv), log_max_bytes=1 << 20,
                               log_max_files=2)
        print("started", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")

_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def test_containers_survive_a_sigkilled_agent_and_exits_meanwhile_are_recorded(root: Path) -> None:
    release = root / "release"
    containers = [
        ("long", ["sleep", "100"]),
        ("quits", ["sh", "-c", f"while [ ! -e {release} ]; do sleep 0.01; done; echo bye; exit 7"]),
    ]
    # The supervisor's parent (the fake agent) dies: be its reaper so it does not end up a zombie of
    # an init that never reaps.
    _set_subreaper(True)
    try:
        agent = subprocess.Popen(
            [sys.executable, "-c", _AGENT_SCRIPT.format(
                testdir=str(Path(__file__).parent), root=str(root), launcher=FAKE_LAUNCHER,
                containers=containers)],
            stdout=subprocess.PIPE,
        )
        assert agent.stdout is not None
        assert agent.stdout.readline() == b"started\n"
        supervisor = supervisor_pid(root)
        assert supervisor is not None
        (worker,) = worker_pids(root)
        agent.kill()
        agent.wait()
        agent.stdout.close()

        # No client now: the exit must still be reaped and recorded.
        release.touch()
        quits = root / "containers" / "quits"
        assert wait_until(lambda: (r := runfile.read_run_file(quits)) is not None and r.finished)
        record = runfile.read_run_file(quits)
        assert record is not None and record.exit_code == 7
        assert [e.text for e in logs.read_entries(quits)] == [b"bye"]
        assert not process_gone(supervisor)

        async def reconnect() -> None:
            client = await _connect(root)
            assert await client.hello() == worker
            assert supervisor_pid(root) == supervisor
            running = await client.list_running()
            assert set(running) == {"long"}
            events, pump = _collect(client)
            assert await client.kill("long", signal.SIGKILL)
            assert (await _next_exit(events, "long")).exit_code == 137
            await client.close()
            pump.cancel()

        run(reconnect())
        assert wait_until(lambda: process_gone(supervisor))
    finally:
        _set_subreaper(False)


def test_idle_supervisor_exits_once_its_last_client_leaves(root: Path) -> None:
    async def scenario() -> tuple[int, int]:
        client = await _connect(root)
        worker = await client.hello()
        keeper = supervisor_pid(root)
        assert keeper is not None
        await client.close()
        return keeper, worker

    keeper, worker = run(scenario())
    assert wait_until(lambda: process_gone(worker))
    # The keeper follows its idle worker, unlinking the socket before it lets go of the listener.
    assert wait_until(lambda: process_gone(keeper))
    assert not SupervisorPaths(root).socket.exists()
    assert SupervisorPaths(root).pidfile.read_text() == ""


def test_concurrent_spawns_share_one_supervisor_and_requests_are_multiplexed(root: Path) -> None:
    count = 40

    async def scenario() -> None:
        clients = await asyncio.gather(*(_connect(root) for _ in range(5)))
        assert len({await c.hello() for c in clients}) == 1
        for extra in clients[1:]:
            await extra.close()
        client = clients[0]
        events, pump = _collect(client)
        dirs = {f"m{i}": container_dir(root, f"m{i}") for i in range(count)}
        results = await asyncio.gather(*(
            client.start(cid, directory=d, plan=host_plan(cid, "echo", cid), **LOG)
            for cid, d in dirs.items()
        ))
        assert len({r.pid for r in results}) == count
        exits = [await asyncio.wait_for(events.get(), 10) for _ in range(count)]
        assert {e.container_id for e in exits} == set(dirs)
        assert all(e.exit_code == 0 for e in exits)
        for cid, d in dirs.items():
            assert [e.text for e in logs.read_entries(d)] == [cid.encode()]
        await client.close()
        pump.cancel()

    run(scenario())


def test_a_client_that_never_reads_is_dropped_without_stalling_others(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(str(SupervisorPaths(root).socket))
        request = b'{"req":1,"op":"hello"}\n' * 4096
        dropped = threading.Event()

        def flood() -> None:
            try:
                for _ in range(100):  # ~9 MiB of replies we never read
                    slow.sendall(request)
            except OSError:
                dropped.set()

        sender = threading.Thread(target=flood)
        sender.start()
        # The other client keeps getting answers while the flood goes on.
        for _ in range(20):
            assert await client.hello() > 0
        await asyncio.to_thread(sender.join, 30)
        assert not sender.is_alive()
        # Read what we were sent: it ends with EOF because the supervisor dropped us.
        slow.settimeout(10)
        while slow.recv(1 << 20):
            pass
        slow.close()
        log_text = SupervisorPaths(root).log.read_text()
        assert "does not read its replies" in log_text
        assert await client.hello() > 0
        await client.close()

    run(scenario())


def test_pending_calls_fail_and_events_end_when_the_supervisor_dies(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        pid = await client.hello()
        events_done = asyncio.Event()

        async def consume() -> None:
            async for _ in client.events():
                pass
            events_done.set()

        consumer = asyncio.create_task(consume())
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(events_done.wait(), 10)
        with pytest.raises(ShoalError):
            await client.list_running()
        await client.close()
        await consumer
        assert await async_wait_until(lambda: process_gone(pid))

    run(scenario())


def test_supervisor_processes_load_no_grpc_or_protobuf(root: Path) -> None:
    async def scenario() -> int:
        client = await _connect(root)
        worker = await client.hello()
        keeper = supervisor_pid(root)
        assert keeper is not None and worker != keeper
        for pid in (keeper, worker):
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "grpc" not in maps and "protobuf" not in maps and "_upb" not in maps
        await client.close()
        return keeper

    keeper = run(scenario())
    assert wait_until(lambda: process_gone(keeper))


_IMPORTS_PROBE = """
import sys
before = set(sys.modules)
import {module} as m
{extra}
print(" ".join(sorted(set(sys.modules) - before)))
"""


def _imports_of(module: str, extra: str = "") -> set[str]:
    # -S: without site (and this venv's editable-install hook) the list holds only what ``module`` needs.
    probe = subprocess.run(
        [sys.executable, "-S", "-c", _IMPORTS_PROBE.format(module=module, extra=extra)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    return set(probe.stdout.split())


def test_worker_imports_only_the_standard_library_and_its_own_modules() -> None:
    loaded = _imports_of("agent.runtime.supervisor.worker", f"m.load_launcher({FAKE_LAUNCHER!r})")
    ours = {name for name in loaded if name.split(".")[0] in ("agent", "grpc", "google", "proto")}
    # agent.rootfs.overlay: OverlayRootfs, which the plan carries (standard library only itself).
    allowed = {"agent", "agent.errors", "agent.durable", "agent.runtime", "agent.runtime.plan",
               "agent.runtime.logs", "agent.runtime.runfile", "agent.runtime.supervisor", "agent.rootfs",
               "agent.rootfs.overlay"}
    assert {name for name in ours if not name.startswith("agent.runtime.supervisor.")} <= allowed


def test_keeper_imports_almost_nothing() -> None:
    loaded = _imports_of("agent.runtime.supervisor.keeper")
    assert {name for name in loaded if name.startswith("agent")} == {
        "agent", "agent.runtime", "agent.runtime.supervisor", "agent.runtime.supervisor.keeper",
        "agent.runtime.supervisor.channel", "agent.runtime.supervisor.custody",
        "agent.runtime.supervisor.ownlog"}
    # Each of these would cost the keeper (one per host, forever) hundreds of KiB to a megabyte.
    assert not loaded & {"json", "dataclasses", "pathlib", "argparse", "typing", "asyncio", "ctypes",
                         "logging", "subprocess", "re", "inspect"}
