"""Containers survive the agent being SIGKILLed and restarted; several agents share a host."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentProcess, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


def state(agent: AgentProcess, ref: str) -> dict[str, object]:
    return json.loads(agent.run("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def test_containers_survive_sigkill_of_the_agent(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "survivor", IMAGE, "sh", "-c",
              "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
    agent.run("run", "-d", "--name", "quitter", IMAGE, "sh", "-c",
              "sleep 3; exit 9")  # exits while the agent is down
    pid = state(agent, "survivor")["pid"]
    wait_for(lambda: "tick 3" in agent.run("logs", "survivor").stdout)
    supervisor = agent.supervisor_pid()
    assert supervisor is not None

    agent.kill9()
    # Containers are not children of the agent: they keep running with it gone.
    assert Path(f"/proc/{pid}").exists()
    # The supervisor records an exit that happens while no agent is running.
    wait_for(lambda: _exited_on_disk(agent.root, "quitter"), timeout=20)
    agent.start()

    assert agent.supervisor_pid() == supervisor
    info = state(agent, "survivor")
    assert info["state"] == "running" and info["pid"] == pid
    assert "survivor" in agent.run("ps").stdout
    quitter = state(agent, "quitter")
    assert quitter["state"] == "exited" and quitter["exit_code"] == 9

    # logs -f continues: it replays what was written before and during the crash, keeps following
    # new output, and ends when the container stops.
    before = agent.run("logs", "survivor").stdout.count("tick")
    follower = agent.popen("logs", "-f", "survivor")
    assert follower.stdout is not None
    seen = 0
    for line in follower.stdout:  # bounded: the container is stopped below, which ends the stream
        if line.startswith("tick"):
            seen += 1
        if seen > before + 3:
            break
    agent.run("stop", "-t", "1", "survivor")
    follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert seen > before + 3
    assert state(agent, "survivor")["state"] == "exited"
    assert not Path(f"/proc/{pid}").exists()
    agent.run("rm", "survivor", "quitter")


def _exited_on_disk(root: Path, name: str) -> bool:
    for config in (root / "containers").glob("*/config.json"):
        if json.loads(config.read_text())["name"] == name:
            run = config.parent / "run.json"
            return run.exists() and json.loads(run.read_text()).get("exit_code") is not None
    return False


def test_logs_follow_streams_until_exit(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "counter", IMAGE, "sh", "-c",
              "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done")
    out = agent.run("logs", "-f", "counter", timeout=30).stdout
    assert out.split("\n")[:5] == [f"line {i}" for i in range(1, 6)]
    agent.run("rm", "counter")


def test_two_agents_do_not_see_each_other(agent: AgentProcess, tmp_path: Path, busybox_image: Path) -> None:
    other = AgentProcess(root=tmp_path / "root2", socket=tmp_path / "agent2.sock",
                         cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent2.log",
                         extra_args=["--log-max-size", "4k", "--log-max-files", "2"])
    other.start()
    try:
        other.run("image", "import", str(busybox_image), "--name", "test/busybox:v1")
        other.run("run", "-d", "--name", "only-in-two", IMAGE, "sleep", "300")
        agent.run("run", "-d", "--name", "only-in-one", IMAGE, "sleep", "300")
        assert "only-in-one" not in other.run("ps", "-a").stdout
        assert "only-in-two" not in agent.run("ps", "-a").stdout
        cg = state(other, "only-in-two")["cgroup_paths"]
        assert isinstance(cg, dict) and other.cgroup_parent in cg["memory"]
        # This agent caps logs at 2 files of 4k: old output rotates away, the newest stays readable.
        other.run("run", "--name", "chatty", IMAGE, "sh", "-c", "seq 1 2000")
        log_dir = Path(str(state(other, "chatty")["log_path"])).parent
        files = sorted(log_dir.glob("ctr.log*"))
        assert [f.name for f in files] == ["ctr.log", "ctr.log.1"]
        assert all(f.stat().st_size <= 4096 for f in files)
        lines = other.run("logs", "chatty").stdout.split()
        assert lines[-1] == "2000" and "1" not in lines
    finally:
        other.run("rm", "-f", "only-in-two", "chatty", check=False)
        agent.run("rm", "-f", "only-in-one", check=False)
        other.stop()
        # The agent removes its (empty) cgroup parent when it shuts down.
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{other.cgroup_parent}"))
