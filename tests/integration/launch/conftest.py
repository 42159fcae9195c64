"""Fixtures for real-container tests: a busybox lower dir and a driver that launches from a fresh process.

``launch()`` makes its caller a subreaper and forks, so it never runs inside pytest's own process:
``harness.py`` is started per container instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.plan import LaunchPlan, OverlayRootfs

from .busybox_rootfs import build_busybox_rootfs

HARNESS = Path(__file__).with_name("harness.py")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def lower_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lower")
    build_busybox_rootfs(root)
    return root


@dataclass(frozen=True)
class Outcome:
    exit: int | None
    output: str
    error_kind: str | None = None
    error_message: str | None = None
    children_left: bool = False


@dataclass(frozen=True)
class Container:
    """A container started in hold mode: still running; ``stop()`` kills it and returns its outcome."""

    pid: int
    proc: subprocess.Popen[str]
    output_path: Path

    def wait_for_output(self, needle: str, *, timeout: float = 10.0) -> str:
        """Bounded poll of the container's output until ``needle`` shows up (it writes, then sleeps)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output_path.read_text() if self.output_path.exists() else ""
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in container output {text!r}")
            time.sleep(0.01)

    def stop(self) -> Outcome:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        last = json.loads(stdout.strip().splitlines()[-1])
        return Outcome(exit=last.get("exit"), output=self.output_path.read_text())


class Launcher:
    """Builds plans on a shared lower dir and runs them through ``harness.py``."""

    def __init__(self, lower: Path, tmp: Path) -> None:
        self.lower = lower
        self.tmp = tmp
        self.targets: list[Path] = []
        self.running: list[Container] = []

    def plan(self, argv: list[str], **overrides: Any) -> LaunchPlan:
        base = self.tmp / uuid.uuid4().hex[:8]
        for d in ("upper", "work", "target"):
            (base / d).mkdir(parents=True)
        self.targets.append(base / "target")
        lower = overrides.pop("lower", (str(self.lower),))
        plan = LaunchPlan(
            container_id=base.name,
            rootfs=OverlayRootfs(
                lower=tuple(lower), upper=str(base / "upper"), work=str(base / "work"),
                target=str(base / "target"),
            ),
            argv=tuple(argv),
            env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"),
            hostname="shoaltest",
        )
        return replace(plan, **overrides)

    def _spec(self, plan: LaunchPlan, output: Path, timeout: float = 10.0) -> str:
        return json.dumps({"plan": json.loads(plan.to_json()), "output": str(output), "timeout": timeout})

    def _popen(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(HARNESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=REPO,
        )

    def run(self, plan: LaunchPlan) -> Outcome:
        """Launch and wait for the container to exit."""
        return self.run_with_timeout(plan, timeout=10.0)

    def run_with_timeout(self, plan: LaunchPlan, *, timeout: float) -> Outcome:
        output = Path(plan.rootfs.target).parent / "output"
        proc = self._popen()
        stdout, _ = proc.communicate(self._spec(plan, output, timeout), timeout=60)
        events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        text = output.read_text() if output.exists() else ""
        if "error" in events[-1]:
            err = events[-1]
            return Outcome(
                exit=None, output=text, error_kind=err["error"]["kind"],
                error_message=err["error"]["message"], children_left=err["children_left"],
            )
        return Outcome(exit=events[-1]["exit"], output=text)

    def start(self, plan: LaunchPlan) -> Container:
        """Launch and return while the container keeps running (killed at teardown at the latest)."""
        output = Path(plan.rootfs.target).parent / "output"
        proc = self._popen()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._spec(plan, output))
        proc.stdin.close()
        first = json.loads(proc.stdout.readline())
        assert "pid" in first, first
        container = Container(pid=first["pid"], proc=proc, output_path=output)
        self.running.append(container)
        return container


def host_mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def launcher(lower_dir: Path, tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(lower_dir, tmp_path)
    yield launcher
    for container in launcher.running:
        if container.proc.poll() is None:
            container.stop()
    # The overlay lives in the container's mount namespace: nothing may remain on the host.
    mounts = host_mountinfo()
    leaked = [str(t) for t in launcher.targets if f" {t} " in mounts]
    assert not leaked, f"host mounts left behind: {leaked}"


@pytest.fixture
def run_in_container(launcher: Launcher) -> Callable[..., Outcome]:
    def run(script: str, **overrides: Any) -> Outcome:
        return launcher.run(launcher.plan(["/bin/sh", "-c", script], **overrides))

    return run
