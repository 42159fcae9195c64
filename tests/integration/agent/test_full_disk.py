"""A container fills the agent's disk (issue 12, finding 1): the supervisor and the agent survive, tell
the truth while the disk is full, and recover when space returns, without a restart.

The agent's root is a small tmpfs of the test's own (overlayfs takes tmpfs upper dirs, so containers,
their logs, run records, events and the supervisor's own log all share the one filesystem that fills);
its socket and its own log live outside it. A container writes zeros into its writable layer until
ENOSPC and then floods its stdout. Every wait is bounded (subprocess timeouts, bounded polls).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent.conftest import AgentProcess, _wait_gone, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration, pytest.mark.timeout(300)]

FS_SIZE = "48m"


@pytest.fixture
def full_disk_agent(tmp_path: Path, busybox_image: Path) -> Iterator[AgentProcess]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "shoal-full", str(root)],
                   check=True)
    proc = AgentProcess(root=root, socket=tmp_path / "agent.sock",
                        cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent.log",
                        extra_args=["--log-max-size", "64M", "--log-max-files", "2",
                                    # the pull reserve is tested on its own; here the import must pass
                                    "--min-free-space", "1M"])
    leftovers: list[str] = []
    try:
        proc.start()
        proc.run("image", "import", str(busybox_image), "--name", "test/busybox:v1")
        yield proc
    finally:
        try:
            if proc.proc is not None:
                ids = proc.run("ps", "-aq", "--no-trunc", check=False, timeout=60).stdout.split()
                if ids:
                    proc.run("rm", "-f", *ids, check=False, timeout=60)
            sup = proc.supervisor_pid()
            proc.stop()
            if sup is not None:
                _wait_gone(sup)
        finally:
            leftovers = kill_cgroup_tree(proc.cgroup_parent)
            subprocess.run(["umount", "-l", str(root)], check=False)
    assert not leftovers, f"processes left in the agent's cgroups: {leftovers}"


def kill_cgroup_tree(parent: str) -> list[str]:
    """SIGKILL whatever still runs in this test's own cgroup parent and remove its groups; returns what
    was found running (so a test that orphaned containers fails instead of leaking them)."""
    found: list[str] = []
    groups = sorted(Path("/sys/fs/cgroup").glob(f"*/{parent}/*/"))
    for group in groups:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}")
                os.kill(int(pid), signal.SIGKILL)
    for group in [*groups, *Path("/sys/fs/cgroup").glob(f"*/{parent}")]:
        wait_for(lambda g=group: not (g / "cgroup.procs").read_text().split(), timeout=10)
        group.rmdir()
    return sorted(set(found))


def inspect(agent: AgentProcess, ref: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = json.loads(agent.run("inspect", ref, timeout=30).stdout)
    return out[0]


def field(raw: dict[str, Any], name: str) -> Any:
    """A field of inspect's JSON under its proto name or its JSON (camelCase) name."""
    head, *rest = name.split("_")
    return raw.get(name, raw.get(head + "".join(p.title() for p in rest)))


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def test_a_container_filling_the_disk_takes_nothing_down(full_disk_agent: AgentProcess) -> None:
    agent = full_disk_agent
    keeper = agent.supervisor_pid()
    # A container that runs through the whole episode and logs a line every 0.1 s.
    agent.run("run", "-d", "--name", "ticker", "test/busybox:v1", "sh", "-c",
              "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.1; done")
    agent.run("run", "-d", "--name", "victim", "test/busybox:v1", "sleep", "1000")
    # Exits once the disk is full (its own writes fail): that exit must not be lost.
    agent.run("run", "-d", "--name", "exiter", "test/busybox:v1", "sh", "-c",
              "while dd if=/dev/zero of=/probe bs=1M count=1 2>/dev/null; do sleep 0.1; done; exit 3")
    agent.run("run", "-d", "--name", "filler", "test/busybox:v1", "sh", "-c",
              "cat /dev/zero > /fill; while :; do echo flood-flood-flood-flood-flood-flood; done")
    wait_for(lambda: free_bytes(agent.root) == 0, timeout=60)

    keeper_now = agent.supervisor_pid()
    assert keeper_now is not None and keeper_now == keeper, "the supervisor's keeper died"
    assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
    ticker = inspect(agent, "ticker")
    assert ticker["state"] == "running"
    assert parent_of(int(field(ticker, "pid"))) == keeper

    # stop works and ps tells the truth while the disk is full.
    agent.run("stop", "-t", "1", "victim", timeout=60)
    assert inspect(agent, "victim")["state"] == "exited"
    wait_for(lambda: inspect(agent, "exiter")["state"] == "exited", timeout=30)
    assert field(inspect(agent, "exiter"), "exit_code") == 3
    # A create on the full disk either works or fails clearly, leaving nothing half-made.
    created = agent.run("create", "--name", "late", "test/busybox:v1", "true", check=False, timeout=60)
    listed = agent.run("ps", "-a", "--filter", "name=late", "-q", timeout=30).stdout.split()
    if created.returncode == 0:
        assert len(listed) == 1 and inspect(agent, "late")["state"] == "created"
    else:
        assert "RESOURCE_EXHAUSTED" in created.stderr or "space" in created.stderr, created
        assert listed == []

    # A short run either works or fails clearly; it never hangs (the timeout bounds it). When it works,
    # its output may still be lost: an attached run reads the container's log, and the log writer drops
    # a batch the full disk refuses (LogWriter, by design: the supervisor must keep pumping), noting it
    # in the supervisor's own log, which is on the same full disk here. Docker's attach streams past its
    # log driver; Shoal's does not yet (seen once in a full CI run of this test, 2026-12-06).
    result = agent.run("run", "--rm", "test/busybox:v1", "echo", "hi", check=False, timeout=60)
    worked = result.returncode == 0 and result.stdout in ("hi\n", "")
    assert worked or "RESOURCE_EXHAUSTED" in result.stderr or "no space" in result.stderr.lower() \
        or "disk" in result.stderr.lower(), result

    # Space returns.
    agent.run("rm", "-f", "filler", timeout=60)
    wait_for(lambda: free_bytes(agent.root) > 8 << 20, timeout=30)

    # Everything recovers without a restart.
    assert agent.supervisor_pid() == keeper
    assert agent.run("run", "--rm", "test/busybox:v1", "echo", "after", timeout=60).stdout == "after\n"
    marker = f"recovered-{secrets.token_hex(4)}"
    agent.run("run", "--name", "after", "test/busybox:v1", "echo", marker, timeout=60)
    assert marker in agent.run("logs", "after", timeout=30).stdout
    ticker = inspect(agent, "ticker")
    assert ticker["state"] == "running" and parent_of(int(field(ticker, "pid"))) == keeper

    def ticks() -> list[int]:
        lines = agent.run("logs", "--tail", "5", "ticker", timeout=30).stdout.split()
        return [int(x.removeprefix("tick-")) for x in lines if x.startswith("tick-")]

    last = max(ticks())
    wait_for(lambda: max(ticks()) > last + 3, timeout=30)  # logs written after recovery are kept
    agent.run("stop", "-t", "1", "ticker", timeout=60)
    assert inspect(agent, "ticker")["state"] == "exited"
    assert inspect(agent, "victim")["state"] == "exited"


def test_pulls_and_imports_refuse_to_start_under_the_free_space_reserve(
        tmp_path: Path, busybox_image: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "shoal-reserve", str(root)],
                   check=True)
    agent = AgentProcess(root=root, socket=tmp_path / "agent.sock",
                         cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent.log",
                         extra_args=["--min-free-space", "8M"])
    try:
        agent.start()
        ballast = root / "ballast"
        with ballast.open("wb") as f:
            f.write(b"\0" * (26 << 20))  # leaves under 8M of the 32M free
        result = agent.run("image", "import", str(busybox_image), "--name", "test/busybox:v1", check=False)
        assert result.returncode != 0
        assert "RESOURCE_EXHAUSTED" in result.stderr or "refusing to start the import" in result.stderr
        assert "free of" in result.stderr and "8.0 MiB" in result.stderr and "--min-free-space" in \
            result.stderr, result.stderr
        pulled = agent.run("image", "pull", "127.0.0.1:9/none/such:v1", check=False)
        assert "refusing to start the pull" in pulled.stderr, pulled.stderr  # before any registry traffic
        assert not any((root / "images" / "tmp").iterdir())
        ballast.unlink()
        agent.run("image", "import", str(busybox_image), "--name", "test/busybox:v1")
        assert "test/busybox" in agent.run("image", "ls").stdout
    finally:
        agent.stop()
        sup = agent.supervisor_pid()
        if sup is not None:
            _wait_gone(sup)
        subprocess.run(["umount", "-l", str(root)], check=False)
        for d in Path("/sys/fs/cgroup").glob(f"*/{agent.cgroup_parent}"):
            d.rmdir()
