"""Container lifecycle: the states, the one table of legal transitions, and which verbs each state allows.

Every state change of a container goes through ``transition`` (called only by ``agent.runtime.core``),
which consults ``TRANSITIONS``: an edge that is not in the table is a bug and raises
``IllegalTransition``. Requests from users and controllers are guarded one step earlier by ``VERBS``: a
verb asked of a container in a state that does not allow it is refused with ``FailedPrecondition`` and a
message saying why, before anything happens.

Which states hold a reservation (count towards the host's committed cpu and memory) is decided here too:
every state but ``EXITED`` and ``REMOVED`` — a container waiting out a restart backoff will run again and
must keep its place.
"""

from __future__ import annotations

from enum import Enum

from agent.errors import FailedPrecondition


class State(Enum):
    CREATED = "created"        # recorded, never started
    STARTING = "starting"      # a launch is in flight (network attach, supervisor start)
    RUNNING = "running"        # its pid 1 is alive
    RESTARTING = "restarting"  # exited; its restart policy starts it again at next_restart_at
    EXITED = "exited"          # exited, nothing will start it but a user
    REMOVING = "removing"      # being removed: its files, cgroup and network are going away
    REMOVED = "removed"        # gone; only in-flight requests still hold it


# Each edge, and why it exists. Anything else is a bug.
TRANSITIONS: dict[State, dict[State, str]] = {
    State.CREATED: {
        State.STARTING: "start asked for",
        State.REMOVING: "rm",
    },
    State.STARTING: {
        State.CREATED: "its first launch could not begin (cgroup, network or supervisor): nothing ran",
        State.RUNNING: "the supervisor started pid 1",
        State.EXITED: "the launch failed (reason StartFailed) or could not begin after an earlier run",
        State.RESTARTING: "an automatic restart failed to launch and the policy tries again",
    },
    State.RUNNING: {
        State.EXITED: "pid 1 exited, was killed, or was lost with its supervisor",
        State.RESTARTING: "pid 1 exited and the restart policy wants it back",
    },
    State.RESTARTING: {
        State.STARTING: "the backoff is over, or the user started it",
        State.EXITED: "the user stopped or killed it: the pending restart is cancelled",
        State.REMOVING: "rm",
    },
    State.EXITED: {
        State.STARTING: "start again (docker start on an exited container)",
        State.REMOVING: "rm",
    },
    State.REMOVING: {
        State.REMOVED: "its files are gone",
        State.EXITED: "removal failed half-way (every step is idempotent): rm can be retried",
    },
    State.REMOVED: {},
}

HOLDS_RESERVATION = frozenset(set(State) - {State.EXITED, State.REMOVED})


class Verb(Enum):
    START = "start"
    STOP = "stop"
    KILL = "kill"
    REMOVE = "remove"
    EXEC = "exec"
    WAIT = "wait"


# The states each verb may be asked in. Where a verb is a no-op in some state (start of a running
# container, stop of an exited one: Docker answers those without an error), the runtime returns early
# *after* this check, so the table lists those states too.
VERBS: dict[Verb, frozenset[State]] = {
    Verb.START: frozenset({State.CREATED, State.STARTING, State.RUNNING, State.RESTARTING, State.EXITED}),
    Verb.STOP: frozenset({State.CREATED, State.STARTING, State.RUNNING, State.RESTARTING, State.EXITED}),
    Verb.KILL: frozenset({State.STARTING, State.RUNNING, State.RESTARTING}),
    Verb.REMOVE: frozenset({State.CREATED, State.STARTING, State.RUNNING, State.RESTARTING, State.EXITED}),
    Verb.EXEC: frozenset({State.RUNNING}),
    Verb.WAIT: frozenset({State.STARTING, State.RUNNING, State.RESTARTING, State.EXITED}),
}

_REFUSALS: dict[Verb, str] = {
    Verb.KILL: "is not running",
    Verb.EXEC: "is not running",
    Verb.WAIT: "has not been started",
}


class IllegalTransition(AssertionError):
    """A state change the table does not allow: a bug in the runtime, never a user's mistake."""


def transition(container_id: str, current: State, target: State) -> State:
    """``target`` if the edge ``current → target`` is in the table, else ``IllegalTransition``."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"container {container_id[:12]}: {current.value} → {target.value} is not a "
                                "legal transition")
    return target


def check_verb(verb: Verb, *, name: str, state: State) -> None:
    """``FailedPrecondition`` if ``verb`` may not be asked of a container in ``state``."""
    if state in VERBS[verb]:
        return
    if state in (State.REMOVING, State.REMOVED):
        raise FailedPrecondition(f"container {name} is being removed")
    why = _REFUSALS.get(verb, f"is {state.value}")
    raise FailedPrecondition(f"container {name} {why}")


__all__ = [
    "HOLDS_RESERVATION", "TRANSITIONS", "VERBS", "IllegalTransition", "State", "Verb", "check_verb",
    "transition",
]
