"""Self-fencing on a real agent: ``shoal-agent serve --join`` to a loopback port where nothing listens
(so registration always fails) with ``--stop-replicas-after 1``: a container labelled
``shoal.service=x`` is stopped by the agent, one without the label keeps running, and why is logged
once."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.etcd import free_port
from tests.integration.agent.conftest import CGROUP_ROOT, AgentProcess, _wait_gone, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"
ANNOUNCEMENT = "stopping this host's scheduler-managed replicas"


@pytest.fixture
def fenced_agent(tmp_path: Path, busybox_image: Path) -> Iterator[AgentProcess]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    nobody = f"127.0.0.1:{free_port()}"  # a port nothing listens on: every registration fails
    agent = AgentProcess(root=tmp_path / "root", socket=tmp_path / "agent.sock",
                         cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent.log",
                         extra_args=["--listen", f"127.0.0.1:{free_port()}", "--insecure-tcp",
                                     "--join", nobody, "--stop-replicas-after", "1"])
    agent.start()
    try:
        agent.run("image", "import", str(busybox_image), "--name", IMAGE)
        yield agent
    finally:
        ids = agent.run("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if ids:
            agent.run("rm", "-f", *ids, check=False)
        supervisor = agent.supervisor_pid()
        agent.stop()
        if supervisor is not None:
            _wait_gone(supervisor)
        leftover = list(CGROUP_ROOT.glob(f"*/{agent.cgroup_parent}"))
        for d in leftover:
            d.rmdir()
        shutil.rmtree(tmp_path / "root", ignore_errors=True)
        assert not leftover, f"the agent left its cgroup parent behind: {leftover}"


def state(agent: AgentProcess, ref: str) -> str:
    return str(json.loads(agent.run("inspect", ref).stdout)[0]["state"])


def test_scheduler_managed_containers_are_stopped_and_others_keep_running(fenced_agent: AgentProcess) -> None:
    agent = fenced_agent
    agent.run("run", "-d", "--name", "replica", "-l", "shoal.service=x", IMAGE, "sleep", "3600")
    agent.run("run", "-d", "--name", "bystander", "-l", "team=y", IMAGE, "sleep", "3600")
    # Bounded poll: the agent has had no scheduler since it started; its check runs every 0.25 s.
    wait_for(lambda: state(agent, "replica") == "exited", timeout=60)
    assert state(agent, "bystander") == "running"
    log = agent.log.read_text()
    assert log.count(ANNOUNCEMENT) == 1, log[-3000:]
    assert "self-fencing: stopped replica" in log
