"""The CLI against a real agent over each transport: Connect on PATH.http (the default), gRPC when the
agent has no HTTP socket; ^C during ``shoal run`` stops the container and keeps its output; the HTTP
socket lives and dies with the agent."""

from __future__ import annotations

import secrets
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentProcess, shoal_bin

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


def _http(agent: AgentProcess) -> Path:
    return agent.socket.with_name(agent.socket.name + ".http")


@pytest.fixture
def hidden(agent: AgentProcess) -> Iterator[dict[str, Path]]:
    """Move a socket aside for one test (the agent keeps listening on it) and put it back."""
    moved: dict[str, Path] = {}
    yield moved
    for original, aside in moved.items():
        aside.rename(original)


def _hide(path: Path, moved: dict[str, Path]) -> None:
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    moved[str(path)] = aside


def test_the_http_socket_is_root_only(agent: AgentProcess) -> None:
    assert stat.S_IMODE(_http(agent).stat().st_mode) == 0o600


def test_the_cli_needs_only_the_http_socket(agent: AgentProcess, hidden: dict[str, Path]) -> None:
    _hide(agent.socket, hidden)  # no gRPC socket: everything goes over Connect
    result = agent.run("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    missing = agent.run("run", "--rm", IMAGE, "/no/such", check=False)
    assert missing.returncode == 127 and "/no/such" in missing.stderr
    assert agent.run("inspect", "nope", check=False).stderr.startswith("shoal: no such container")


def test_an_agent_without_the_http_socket_is_reached_over_grpc(agent: AgentProcess,
                                                               hidden: dict[str, Path]) -> None:
    _hide(_http(agent), hidden)  # as an agent from before the Connect socket
    result = agent.run("run", "--rm", IMAGE, "sh", "-c", "echo via-grpc; exit 4", check=False)
    assert (result.returncode, result.stdout) == (4, "via-grpc\n")
    launch = agent.run("run", "--rm", IMAGE, "/no/such", check=False)
    assert launch.returncode == 127


def test_no_agent_at_all_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run([shoal_bin("shoal"), "--agent", f"unix://{tmp_path}/none.sock", "ps"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("shoal: cannot reach the agent at unix://") and \
        len(result.stderr.splitlines()) == 1


def test_interrupt_stops_the_container_and_keeps_its_output(agent: AgentProcess) -> None:
    before = set(agent.run("ps", "-aq").stdout.split())
    proc = subprocess.Popen(
        [shoal_bin("shoal"), "--agent", agent.address, "run", "--rm", IMAGE, "sh", "-c",
         "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "bye\n") and "stopping" in err
    assert set(agent.run("ps", "-aq").stdout.split()) == before  # --rm: nothing left


def test_the_http_socket_goes_with_the_agent(tmp_path: Path) -> None:
    proc = AgentProcess(root=tmp_path / "root", socket=tmp_path / "a.sock",
                        cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent.log")
    proc.start()
    assert _http(proc).exists()
    proc.stop()
    assert not proc.socket.exists() and not _http(proc).exists()
    for group in Path("/sys/fs/cgroup").glob(f"*/{proc.cgroup_parent}"):
        group.rmdir()
