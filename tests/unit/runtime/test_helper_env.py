"""What the agent's helpers start with: the exec helper's environment, working directory, command line and
descriptors (spawned for real, with a stand-in interpreter that reports them), and the supervisor's."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.runtime import execs, supervisor_client
from agent.runtime.helper_env import helper_environment
from agent.runtime.plan import ExecPlan

AGENT_ENV = {
    "SHOAL_SECRET": "hunter2", "HTTPS_PROXY": "http://user:pass@proxy:3128", "AWS_SECRET_ACCESS_KEY": "k",
    "SSL_CERT_FILE": "/etc/ssl/private.pem", "PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
    "PYTHONSTARTUP": "/root/.pythonrc", "LD_PRELOAD": "/opt/hook.so",
}


def test_a_helper_keeps_only_where_to_find_shoals_code() -> None:
    assert helper_environment(AGENT_ENV) == {}
    assert helper_environment({**AGENT_ENV, "PYTHONPATH": "/opt/shoal"}) == {"PYTHONPATH": "/opt/shoal"}


def test_by_default_it_is_derived_from_the_agents_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/opt/shoal")
    assert helper_environment() == {"PYTHONPATH": "/opt/shoal"}


@pytest.fixture
def reporter(tmp_path: Path) -> Path:
    """A stand-in for the helper's interpreter: reads its plan, then reports what it was given."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n"
                      "cat > /dev/null\n"
                      "echo \"argv=$*\"\n"
                      "echo \"cwd=$(pwd)\"\n"
                      "echo \"fds=$(ls /proc/self/fd | sort -n | tr '\\n' ' ')\"\n"
                      "echo env:\n"
                      "env -0 | tr '\\0' '\\n' | grep -v '^PWD=\\|^SHLVL=\\|^_=' || true\n")
    script.chmod(0o755)
    return script


async def spawned_report(python: Path) -> str:
    plan = ExecPlan(target_pid=1, argv=("true",), env=("PATH=/bin",))
    proc = await execs.spawn(plan, python=str(python), merge_stderr=True)
    assert proc.stdout is not None
    out = await proc.stdout.read()
    assert await proc.wait() == 0
    return out.decode()


def test_the_exec_helper_gets_a_clean_environment_and_nothing_else_of_the_agents(
        reporter: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in AGENT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)  # the agent's working directory must not become the helper's
    leaked = os.open(tmp_path / "agent-file", os.O_CREAT | os.O_RDONLY)  # nor the agent's descriptors
    os.set_inheritable(leaked, True)
    try:
        report = asyncio.run(spawned_report(reporter))
    finally:
        os.close(leaked)
    head, _, env = report.partition("env:\n")
    lines = dict(line.split("=", 1) for line in head.splitlines())
    assert lines["argv"] == "-P -s -m agent.runtime.nsenter"
    assert lines["cwd"] == "/"
    # 0-2 are its pipes, 3 is ls reading the directory; nothing of the agent's beyond them.
    assert lines["fds"].split() == ["0", "1", "2", "3"]
    assert env == ""  # and no secret can be in what is not there
    assert "hunter2" not in report


def test_the_exec_helper_keeps_pythonpath(reporter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/opt/shoal")
    report = asyncio.run(spawned_report(reporter))
    assert report.partition("env:\n")[2] == "PYTHONPATH=/opt/shoal\n"


def test_the_supervisor_is_spawned_with_the_helper_environment(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every container init is a fork of the supervisor until its execve: it must not hold the agent's
    environment either. A stand-in supervisor writes what it got to its log and says it is ready."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n"
                      "env -0 | tr '\\0' '\\n' | grep -v '^PWD=\\|^SHLVL=\\|^_=' >&2\n"
                      "echo ready\n")
    python.chmod(0o755)
    monkeypatch.setenv("SHOAL_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/opt/shoal")
    paths = supervisor_client.SupervisorPaths(tmp_path)
    asyncio.run(supervisor_client._spawn(paths, python=str(python), launcher=None, timeout=30))
    assert paths.log.read_text() == "PYTHONPATH=/opt/shoal\n"
