"""Restart policies through a real agent and CLI: counts, backoff, stop winning, agent restarts, events."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.agent.conftest import AgentProcess, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


def inspect(agent: AgentProcess, ref: str) -> dict[str, Any]:
    return json.loads(agent.run("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def events(agent: AgentProcess, *, since: int = 0, until: Any = None,
           timeout: float = 30) -> list[dict[str, Any]]:
    """Kept events after ``since`` (and live ones) until ``until(events)`` holds; the stream never ends."""
    proc = agent.popen("events", "--since", str(since), "--json")
    assert proc.stdout is not None
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            got.append(json.loads(line))
            if until is None or until(got) or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    if until is not None:
        assert until(got), f"events never satisfied the condition: {got}"
    return got


def of(evts: list[dict[str, Any]], name: str) -> list[str]:
    return [e["type"].removeprefix("EVENT_TYPE_").lower() for e in evts if e.get("container_name") == name]


def test_on_failure_restarts_exactly_max_times_then_stays_exited(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "flaky", "--restart", "on-failure:2", IMAGE, "sh", "-c",
              "echo run; exit 3")
    info = wait_for(lambda: (i := inspect(agent, "flaky"))["restart_count"] == 2 and i["state"] == "exited"
                    and not i.get("next_restart_at") and i)
    assert info["exit_code"] == 3 and info["reason"] == "Error"
    evts = events(agent, until=lambda es: of(es, "flaky").count("exited") == 3)
    assert of(evts, "flaky") == ["created", "started", "exited", "restarting", "started", "exited",
                                 "restarting", "started", "exited"]
    # The restarted container kept its id and its log (appended to, once per run).
    assert agent.run("logs", "flaky").stdout.split() == ["run", "run", "run"]
    agent.run("rm", "flaky")


def test_always_restarts_after_a_clean_exit_and_stop_during_backoff_wins(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "looper", "--restart", "always", IMAGE, "sh", "-c", "exit 0")
    # Backoff doubles from 100 ms: by the 5th restart the wait is 1.6 s, wide enough to stop inside.
    # Waiting out a backoff is its own state: "restarting" (it keeps its reservation on the host).
    info = wait_for(lambda: (i := inspect(agent, "looper"))["restart_count"] >= 5
                    and i["state"] == "restarting" and i.get("next_restart_at") and i)
    count = info["restart_count"]
    assert info["exit_code"] == 0 and info["reason"] == "Completed"
    agent.run("stop", "looper")
    after = inspect(agent, "looper")
    assert after["state"] == "exited" and not after.get("next_restart_at")
    due = unix(info["next_restart_at"])
    # Nothing signals "a restart did not happen": wait (bounded) until well past when it was due.
    wait_for(lambda: time.time() > due + 1.0, timeout=70)
    final = inspect(agent, "looper")
    assert final["state"] == "exited" and final["restart_count"] in (count, count + 1)
    # (count + 1 only if the restart had already begun when stop arrived; then stop killed it.)
    agent.run("rm", "-f", "looper")


def test_restart_policy_acts_on_an_exit_while_the_agent_was_down(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "phoenix", "--restart", "on-failure", IMAGE, "sh", "-c",
              "if [ -f /done ]; then exec sleep 1000; fi; touch /done; sleep 2; exit 7")
    last = max(int(e["sequence"]) for e in events(agent, until=lambda es: "started" in of(es, "phoenix")))
    agent.kill9()
    try:
        wait_for(lambda: _exited_on_disk(agent, "phoenix"), timeout=30)
    finally:
        agent.start()
    info = wait_for(lambda: (i := inspect(agent, "phoenix"))["state"] == "running" and i["restart_count"] == 1
                    and i)
    assert info["restart_count"] == 1
    # The exit that happened while no agent ran is in the stream, numbered after what we saw before.
    evts = events(agent, since=last, until=lambda es: "started" in of(es, "phoenix"))
    assert of(evts, "phoenix")[:3] == ["exited", "restarting", "started"]
    assert [int(e["sequence"]) for e in evts] == list(range(last + 1, last + 1 + len(evts)))
    assert next(e for e in evts if e["type"] == "EVENT_TYPE_EXITED")["exit_code"] == 7
    agent.run("rm", "-f", "phoenix")


def test_rm_and_restart_with_auto_remove_conflict(agent: AgentProcess) -> None:
    result = agent.run("run", "-d", "--rm", "--restart", "always", IMAGE, "true", check=False)
    assert result.returncode != 0 and "conflict" in result.stderr


def unix(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _exited_on_disk(agent: AgentProcess, name: str) -> bool:
    for config in (agent.root / "containers").glob("*/config.json"):
        if json.loads(config.read_text())["name"] == name:
            run = config.parent / "run.json"
            return run.exists() and json.loads(run.read_text()).get("exit_code") is not None
    return False
