"""Health checks through a real agent and CLI: exec, TCP and HTTP probes, restart on unhealthy, events."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.integration.agent.conftest import AgentProcess, wait_for
from tests.integration.agent.test_restart_policy import events, inspect, of, unix

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"
FAST = ["--health-interval", "200ms", "--health-timeout", "5s", "--health-retries", "2"]


def health(agent: AgentProcess, ref: str) -> str:
    return str(inspect(agent, ref)["health"]).removeprefix("HEALTH_STATUS_").lower()


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A port the *host* listens on: a probe that wrongly ran outside the container would succeed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_exec_probe_goes_unhealthy_and_back_with_events_and_a_log(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "checked", *FAST, "--health-cmd", "cat /tmp/ok", IMAGE, "sleep", "1000")
    wait_for(lambda: health(agent, "checked") == "unhealthy")
    info = inspect(agent, "checked")
    assert info["state"] == "running"
    log = info["health_log"]
    assert 1 <= len(log) <= 5 and not log[-1].get("ok") and "No such file" in log[-1]["output"]
    agent.run("exec", "checked", "sh", "-c", "echo fine > /tmp/ok")
    wait_for(lambda: health(agent, "checked") == "healthy")
    assert inspect(agent, "checked")["health_log"][-1]["output"].strip() == "fine"
    assert "healthy" in agent.run("ps").stdout
    evts = events(agent, until=lambda es: sum(1 for e in es if e.get("container_name") == "checked"
                                              and e["type"] == "EVENT_TYPE_HEALTH_CHANGED") >= 2)
    changes = [e["health"] for e in evts if e.get("container_name") == "checked"
               and e["type"] == "EVENT_TYPE_HEALTH_CHANGED"]
    assert changes[:2] == ["HEALTH_STATUS_UNHEALTHY", "HEALTH_STATUS_HEALTHY"]
    agent.run("rm", "-f", "checked")


def test_tcp_probe_runs_inside_the_containers_network_namespace(agent: AgentProcess,
                                                               host_listener: int) -> None:
    port = str(host_listener)
    agent.run("run", "-d", "--name", "listening", *FAST, "--health-tcp", port, IMAGE,
              "nc", "-ll", "-p", port, "-e", "true")
    agent.run("run", "-d", "--name", "deaf", *FAST, "--health-tcp", port, IMAGE, "sleep", "1000")
    wait_for(lambda: health(agent, "listening") == "healthy")
    # The host listens on that very port: "deaf" being unhealthy proves its probe did not connect here.
    wait_for(lambda: health(agent, "deaf") == "unhealthy")
    assert "refused" in inspect(agent, "deaf")["health_log"][-1]["output"]
    agent.run("rm", "-f", "listening", "deaf")


def test_http_probe_wants_2xx_or_3xx(agent: AgentProcess, host_listener: int) -> None:
    port = str(host_listener)
    serve = f"mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p {port} -h /www"
    agent.run("run", "-d", "--name", "web", *FAST, "--health-http", f"{port}/index.html", IMAGE,
              "sh", "-c", serve)
    agent.run("run", "-d", "--name", "web404", *FAST, "--health-http", f"{port}/missing", IMAGE,
              "sh", "-c", serve)
    wait_for(lambda: health(agent, "web") == "healthy")
    assert "200" in inspect(agent, "web")["health_log"][-1]["output"]
    wait_for(lambda: health(agent, "web404") == "unhealthy")
    assert "404" in inspect(agent, "web404")["health_log"][-1]["output"]
    agent.run("rm", "-f", "web", "web404")


def test_restart_on_unhealthy_kills_and_the_policy_restarts(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "sickly", *FAST, "--health-cmd", "false", "--restart-on-unhealthy",
              "--restart", "on-failure:1", IMAGE, "sleep", "1000")
    info = wait_for(lambda: (i := inspect(agent, "sickly"))["restart_count"] == 1 and i["state"] == "exited"
                    and i)
    assert info["reason"] == "Unhealthy" and info["exit_code"] == 137
    evts = events(agent, until=lambda es: of(es, "sickly").count("exited") >= 2)
    exits = [e for e in evts if e.get("container_name") == "sickly" and e["type"] == "EVENT_TYPE_EXITED"]
    assert [e["reason"] for e in exits] == ["Unhealthy", "Unhealthy"]
    agent.run("rm", "-f", "sickly")


def test_health_survives_an_agent_restart(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "steady", *FAST, "--health-cmd", "true", IMAGE, "sleep", "1000")
    wait_for(lambda: health(agent, "steady") == "healthy")
    agent.kill9()
    agent.start()
    info = inspect(agent, "steady")
    # The status it had, not "starting" again; then probing resumes.
    assert health(agent, "steady") == "healthy"
    last = unix(info["health_log"][-1]["start"])
    wait_for(lambda: unix(inspect(agent, "steady")["health_log"][-1]["start"]) > last)
    assert health(agent, "steady") == "healthy"
    agent.run("rm", "-f", "steady")
