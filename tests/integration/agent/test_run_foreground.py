"""``shoal run`` in the foreground (issue 12, finding 10): its output and exit code arrive even when the
container is gone at once (``--rm`` removal is the agent's, after the last output); a second signal or
an agent that never answers the stop does not hang it; a CLI killed outright leaves nothing behind once
its container exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.fixtures.sigstop import freeze
from tests.integration.agent.conftest import AgentProcess, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"
IGNORES_TERM = "trap '' TERM; echo ready; while true; do sleep 0.1; done"


def _names(agent: AgentProcess) -> set[str]:
    lines = agent.run("ps", "-a").stdout.splitlines()[1:]
    return {line.split()[-1] for line in lines if line.strip()}


def _state(agent: AgentProcess, ref: str) -> str:
    return str(json.loads(agent.run("inspect", ref).stdout)[0]["state"])


@pytest.fixture
def foreground(agent: AgentProcess) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _start(agent: AgentProcess, procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = agent.popen("run", *args)
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_quick_containers_with_rm_keep_their_output_and_exit_code(agent: AgentProcess) -> None:
    """The agent removes a --rm container as soon as it exits unless a caller is attached: each of these
    exits before the CLI could have asked for its output separately."""
    before = set(agent.run("ps", "-aq").stdout.split())
    for n in range(15):
        result = agent.run("run", "--rm", IMAGE, "sh", "-c", f"echo out-{n}; echo err-{n} >&2; exit {n}",
                           check=False)
        assert (result.returncode, result.stdout, result.stderr) == (n, f"out-{n}\n", f"err-{n}\n")
        # Gone when the CLI returns, as after `docker run --rm`: a script's next step may rely on it.
        assert set(agent.run("ps", "-aq").stdout.split()) == before


def test_a_killed_run_rm_leaves_the_container_running_then_removed(
        agent: AgentProcess, foreground: list[subprocess.Popen[str]]) -> None:
    proc = _start(agent, foreground, "--rm", "--name", "orphaned", IMAGE, "sh", "-c",
                  "echo ready; while true; do sleep 0.1; done")
    proc.kill()  # SIGKILL: the CLI can do nothing about it
    proc.wait(timeout=10)
    assert _state(agent, "orphaned") == "running"  # Docker's behaviour too
    agent.run("stop", "-t", "1", "orphaned")
    wait_for(lambda: "orphaned" not in _names(agent), timeout=30)


def test_a_second_interrupt_gives_up_at_once_and_the_agent_still_cleans_up(
        agent: AgentProcess, foreground: list[subprocess.Popen[str]]) -> None:
    proc = _start(agent, foreground, "--rm", "--name", "stubborn", IMAGE, "sh", "-c", IGNORES_TERM)
    proc.send_signal(signal.SIGINT)  # asks for a stop: TERM is ignored, so KILL comes after 10 s
    assert proc.stderr is not None
    assert "interrupt again to stop waiting" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert "gave up waiting" in err and "removes it" in err
    wait_for(lambda: "stubborn" not in _names(agent), timeout=60)


def test_sigterm_with_an_agent_that_never_answers_does_not_hang(
        agent: AgentProcess, foreground: list[subprocess.Popen[str]]) -> None:
    assert agent.proc is not None
    proc = _start(agent, foreground, "--rm", "--name", "unanswered", IMAGE, "sh", "-c", IGNORES_TERM)
    freeze(agent.proc.pid)  # every grpc thread stopped: none can answer the stop asked below
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)  # a bound for the test, not a measurement
        assert proc.returncode == 128 + signal.SIGTERM and "gave up waiting" in err
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    # The stop it asked for reaches the agent once it runs again: stopped, then removed.
    wait_for(lambda: "unanswered" not in _names(agent), timeout=60)
