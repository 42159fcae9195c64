from __future__ import annotations

import itertools

import pytest

from agent.errors import InvalidArgument
from agent.runtime import restart
from agent.runtime.restart import RestartMode, RestartPolicy

NO = RestartPolicy()
ALWAYS = RestartPolicy(RestartMode.ALWAYS)


def on_failure(max_retries: int = 0) -> RestartPolicy:
    return RestartPolicy(RestartMode.ON_FAILURE, max_retries=max_retries)


@pytest.mark.parametrize(("raw", "expected"), [
    ("no", NO), ("always", ALWAYS), ("on-failure", on_failure()), ("on-failure:5", on_failure(5)),
    (" on-failure:0 ", on_failure(0)),
])
def test_parse_restart(raw: str, expected: RestartPolicy) -> None:
    assert restart.parse_restart(raw) == expected


@pytest.mark.parametrize("raw", ["", "sometimes", "always:3", "on-failure:x", "on-failure:-1", "no:1"])
def test_parse_restart_rejects_with_the_value_in_the_message(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="restart"):
        restart.parse_restart(raw)


def test_policy_prints_as_it_is_typed() -> None:
    assert [str(p) for p in (NO, ALWAYS, on_failure(), on_failure(3))] == [
        "no", "always", "on-failure", "on-failure:3"]


@pytest.mark.parametrize(("policy", "exit_code", "oom", "count", "expected"), [
    (NO, 1, False, 0, False),
    (NO, 137, True, 0, False),
    (ALWAYS, 0, False, 0, True),
    (ALWAYS, 1, False, 1000, True),
    (on_failure(), 0, False, 0, False),      # a clean exit is not a failure
    (on_failure(), 3, False, 50, True),      # no limit
    (on_failure(), 0, True, 0, True),        # an OOM kill is a failure whatever the code
    (on_failure(2), 3, False, 0, True),
    (on_failure(2), 3, False, 1, True),
    (on_failure(2), 3, False, 2, False),     # exactly MAX restarts, then stays down
])
def test_decide(policy: RestartPolicy, exit_code: int, oom: bool, count: int, expected: bool) -> None:
    assert restart.decide(policy, exit_code=exit_code, oom=oom, restart_count=count,
                          stopped_by_user=False) is expected


@pytest.mark.parametrize("policy", [ALWAYS, on_failure(), on_failure(5)])
def test_a_stop_by_the_user_always_wins(policy: RestartPolicy) -> None:
    assert not restart.decide(policy, exit_code=1, oom=True, restart_count=0, stopped_by_user=True)


def test_backoff_doubles_from_100ms_and_caps_at_a_minute() -> None:
    delays = [restart.backoff(n) for n in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert all(b == min(2 * a, restart.BACKOFF_CAP) for a, b in itertools.pairwise(delays))
    assert delays[-1] == restart.BACKOFF_CAP
    assert restart.backoff(10_000) == restart.BACKOFF_CAP


def test_schedule_grows_on_quick_failures_and_resets_after_a_stable_run() -> None:
    streak = 0
    delays = []
    for ran_for in (0.5, 1.0, None, 2.0):  # None: the restart itself failed to start
        delay, streak = restart.schedule(streak, ran_for=ran_for)
        delays.append(delay)
    assert delays == [0.1, 0.2, 0.4, 0.8]
    delay, streak = restart.schedule(streak, ran_for=restart.STABLE_AFTER)
    assert (delay, streak) == (0.1, 1)
