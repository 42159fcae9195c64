"""Restart policies: whether an exited container is started again, and after how long.

Pure decisions on plain values; ``ContainerRuntime`` acts on them. The semantics follow Docker's so users
meet no surprises: ``no`` never restarts; ``on-failure[:MAX]`` restarts after a non-zero exit or an OOM
kill, at most MAX times (0 = no limit); ``always`` restarts after any exit. A stop, kill or remove asked
for by the user always wins over the policy. The delay before a restart starts at 100 ms and doubles with
every quick failure, capped at one minute; a run that lasted at least ``STABLE_AFTER`` seconds resets the
doubling (not the restart count, which users see and on-failure's MAX counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agent.errors import InvalidArgument
from agent.parsing import parse_restart_text

BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 60.0
# A run at least this long counts as "it was working": the next failure starts the backoff over.
STABLE_AFTER = 10.0


class RestartMode(Enum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


@dataclass(frozen=True)
class RestartPolicy:
    mode: RestartMode = RestartMode.NO
    max_retries: int = 0  # on-failure only; 0 = no limit

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise InvalidArgument(f"restart retries must not be negative, got {self.max_retries}")
        if self.max_retries and self.mode is not RestartMode.ON_FAILURE:
            raise InvalidArgument(
                f"a maximum retry count only applies to on-failure, not to {self.mode.value}"
            )

    def __str__(self) -> str:
        if self.mode is RestartMode.ON_FAILURE and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.mode.value


def parse_restart(raw: str) -> RestartPolicy:
    """``no``, ``always``, ``on-failure`` or ``on-failure:5`` → a policy (the CLI's ``--restart``)."""
    mode, max_retries = parse_restart_text(raw)
    return RestartPolicy(RestartMode(mode), max_retries=max_retries)


def decide(policy: RestartPolicy, *, exit_code: int, oom: bool, restart_count: int,
           stopped_by_user: bool) -> bool:
    """Whether a container that just exited should be started again.

    ``restart_count`` is how many automatic restarts already happened since the user last started it.
    """
    if stopped_by_user or policy.mode is RestartMode.NO:
        return False
    if policy.mode is RestartMode.ALWAYS:
        return True
    failed = exit_code != 0 or oom
    return failed and (policy.max_retries == 0 or restart_count < policy.max_retries)


def backoff(quick_failures: int) -> float:
    """Seconds to wait before the next restart, given how many restarts in a row came after short runs."""
    # 2**n overflows float long after the cap; clamp the exponent instead.
    return min(BACKOFF_INITIAL * float(1 << min(quick_failures, 32)), BACKOFF_CAP)


def schedule(streak: int, *, ran_for: float | None) -> tuple[float, int]:
    """(delay, new streak) for the restart after a run of ``ran_for`` seconds.

    ``streak`` counts the restarts in a row that followed short runs (or failed starts, ``ran_for``
    None); a stable run resets it first, so the next delay is back to ``BACKOFF_INITIAL``.
    """
    if ran_for is not None and ran_for >= STABLE_AFTER:
        streak = 0
    return backoff(streak), streak + 1


__all__ = [
    "BACKOFF_CAP", "BACKOFF_INITIAL", "STABLE_AFTER", "RestartMode", "RestartPolicy", "backoff", "decide",
    "parse_restart", "schedule",
]
