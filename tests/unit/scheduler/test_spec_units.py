"""The scheduler's parsers of sizes, cpus, pids, durations, env and restart policies (scheduler/units.py)
are a copy of the agent's (agent/parsing.py), since the two packages may not import each other: on one
table of inputs they must give the same values, and refuse the same inputs with the same words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent import limits, parsing
from agent.errors import InvalidArgument
from scheduler import units

SIZES = ["64M", "1g", "512k", "1.5GiB", "1048576", " 2 m ", "1t", "64mb", "0", "64X", "", "-1", "1.2.3",
         "M", "64 MiB", "7m", "5m", "6m", "6291455"]
CPUS = ["0.5", "2", "250m", "10m", "9m", "0.01", "0.009", "0.0049", "1e-1", "x", "", "0.5m", "-1", " 1 "]
PIDS = ["1", "100", "0", "-3", "x", "1.5", ""]
DURATIONS = ["30s", "1.5m", "500ms", "2h", "10", "0", "2d", "", "-1s", "1.5.3s", " 2s "]
RESTARTS = ["no", "always", "on-failure", "on-failure:5", " on-failure:5 ", "sometimes", "always:3",
            "on-failure:x", "on-failure:-1", "", "no:1"]
ENVS = [["A=1"], ["A="], ["A"], ["=1"], ["A=1", "B"], ["A=b=c"]]

CASES: list[tuple[str, Callable[..., Any], Callable[..., Any], list[Any]]] = [
    ("size", parsing.parse_size, units.parse_size, SIZES),
    ("memory", parsing.parse_memory, units.parse_memory, SIZES),
    ("cpus", parsing.parse_cpus, units.parse_cpus, CPUS),
    ("pids", parsing.parse_pids, units.parse_pids, PIDS),
    ("duration", parsing.parse_duration, units.parse_duration, DURATIONS),
    ("restart", parsing.parse_restart_text, units.parse_restart_text, RESTARTS),
    ("env", parsing.parse_env, units.parse_env, ENVS),
]


def _outcome(parse: Callable[..., Any], raw: Any, error: type[Exception], **kwargs: Any) -> tuple[str, Any]:
    try:
        return "value", parse(raw, **kwargs)
    except error as err:
        return "error", str(err)


@pytest.mark.parametrize(("kind", "agent_parse", "scheduler_parse", "raw"),
                         [(kind, a, s, raw) for kind, a, s, inputs in CASES for raw in inputs])
def test_the_scheduler_and_the_agent_parse_alike(kind: str, agent_parse: Callable[..., Any],
                                                 scheduler_parse: Callable[..., Any], raw: Any) -> None:
    assert _outcome(scheduler_parse, raw, units.InvalidValue) == _outcome(agent_parse, raw, InvalidArgument)


@pytest.mark.parametrize(("agent_parse", "scheduler_parse", "raw"), [
    (parsing.parse_memory, units.parse_memory, "1k"),
    (parsing.parse_cpus, units.parse_cpus, "1m"),
    (parsing.parse_size, units.parse_size, "nope"),
    (parsing.parse_duration, units.parse_duration, "nope"),
])
def test_the_subject_of_a_message_is_passed_through_alike(agent_parse: Callable[..., Any],
                                                          scheduler_parse: Callable[..., Any],
                                                          raw: str) -> None:
    mine = _outcome(scheduler_parse, raw, units.InvalidValue, what="health interval")
    theirs = _outcome(agent_parse, raw, InvalidArgument, what="health interval")
    assert mine == theirs and mine[0] == "error" and "health interval" in mine[1]


def test_the_table_covers_both_outcomes_of_every_parser() -> None:
    for kind, agent_parse, _, inputs in CASES:
        kinds = {_outcome(agent_parse, raw, InvalidArgument)[0] for raw in inputs}
        assert kinds == {"value", "error"}, kind


def test_the_minimums_are_the_agents() -> None:
    assert units.MIN_MEMORY_BYTES == limits.MIN_MEMORY_BYTES
    assert units.MIN_CPU_MILLIS == limits.MIN_CPU_MILLIS
    assert units.RESTART_MODES == parsing.RESTART_MODES
