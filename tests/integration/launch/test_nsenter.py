"""``python -m agent.runtime.nsenter``: processes started inside a running container (``shoal exec``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.plan import ExecPlan

from .conftest import REPO, Container, Launcher

pytestmark = [pytest.mark.root, pytest.mark.integration]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def nsenter(plan: ExecPlan) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.runtime.nsenter"], input=plan.to_json(), capture_output=True,
        text=True, cwd=REPO, timeout=30,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def sleeper(launcher: Launcher) -> Iterator[Container]:
    container = launcher.start(launcher.plan(["sleep", "30"]))
    yield container
    container.stop()


def exec_plan(container: Container, argv: list[str], **kwargs: Any) -> ExecPlan:
    kwargs.setdefault("env", ("PATH=/bin",))
    return ExecPlan(target_pid=container.pid, argv=tuple(argv), **kwargs)


def test_exec_joins_the_containers_namespaces(sleeper: Container) -> None:
    script = "hostname; echo $$; ps -o pid,comm; readlink /proc/self/ns/mnt; readlink /proc/self/ns/net"
    result = nsenter(exec_plan(sleeper, ["sh", "-c", script]))
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "shoaltest"
    assert lines[1] != "1"
    assert any(line.split() == ["1", "sleep"] for line in lines)
    assert lines[-2] == os.readlink(f"/proc/{sleeper.pid}/ns/mnt")
    assert lines[-1] == os.readlink(f"/proc/{sleeper.pid}/ns/net")
    assert lines[-2] != os.readlink("/proc/self/ns/mnt")


def test_exec_exit_code_propagates(sleeper: Container) -> None:
    assert nsenter(exec_plan(sleeper, ["sh", "-c", "exit 7"])).code == 7


def test_exec_signal_death_is_128_plus_signal(sleeper: Container) -> None:
    assert nsenter(exec_plan(sleeper, ["sh", "-c", "kill -9 $$"])).code == 137


def test_exec_credentials_caps_cwd_and_env(sleeper: Container) -> None:
    script = "id -u; pwd; echo $X; grep -E 'CapEff|NoNewPrivs' /proc/self/status"
    plan = exec_plan(sleeper, ["sh", "-c", script], uid=1000, gid=1000, cwd="/tmp", env=("PATH=/bin", "X=y"))
    result = nsenter(plan)
    assert result.code == 0, result.stderr
    lines = result.stdout.split()
    assert lines[:3] == ["1000", "/tmp", "y"]
    assert lines[4] == "0000000000000000" and lines[6] == "1"


def test_exec_command_not_found(sleeper: Container) -> None:
    result = nsenter(exec_plan(sleeper, ["nosuch"]))
    assert result.code == 127
    assert result.stderr == 'shoal exec: executable file not found in $PATH: "nosuch"\n'


def test_exec_into_missing_process_is_a_setup_error(sleeper: Container) -> None:
    result = nsenter(ExecPlan(target_pid=2**22 + 7, argv=("true",), env=()))
    assert result.code == 126
    assert result.stderr.startswith("shoal exec: ")


def test_exec_forwards_sigterm(sleeper: Container) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.runtime.nsenter"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    script = "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.05; done"
    proc.stdin.write(exec_plan(sleeper, ["sh", "-c", script]).to_json())
    proc.stdin.close()
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.terminate()
        assert proc.wait(timeout=10) == 5
        assert proc.stdout.read() == "got-term\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_plan_from_fd_leaves_stdin_to_the_command(sleeper: Container) -> None:
    plan_r, plan_w = os.pipe()
    os.write(plan_w, exec_plan(sleeper, ["cat"]).to_json().encode())
    os.close(plan_w)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent.runtime.nsenter", str(plan_r)], input="typed by user\n",
            capture_output=True, text=True, cwd=REPO, timeout=30, pass_fds=(plan_r,),
        )
    finally:
        os.close(plan_r)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "typed by user\n"


def test_the_helper_holds_nothing_of_its_spawners_but_stdio(sleeper: Container, tmp_path: Path) -> None:
    """Issue 12, finding 2: a descriptor the helper was given (its plan, or one leaked by whoever spawned
    it) never reaches the container, and the helper stands at the container's root, not the host's."""
    plan_r, plan_w = os.pipe()
    os.write(plan_w, exec_plan(sleeper, ["sh", "-c", "echo up; read x"]).to_json().encode())
    os.close(plan_w)
    stray = os.open(tmp_path / "host-file", os.O_CREAT | os.O_RDONLY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.runtime.nsenter", str(plan_r)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=tmp_path, pass_fds=(plan_r, stray),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    os.close(plan_r)
    os.close(stray)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "up\n"  # the command runs: the helper is past its sealing
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")) == [0, 1, 2]
        container_root = os.readlink(f"/proc/{sleeper.pid}/root")
        assert os.readlink(f"/proc/{proc.pid}/cwd") == container_root
        proc.stdin.write("done\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
