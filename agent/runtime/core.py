"""The pure core of the container runtime: what happens to a container when something is reported.

Everything the world reports about a container — a launch succeeded or failed, pid 1 exited, a health
probe answered, a restart's backoff ran out, a user asked to stop it — goes through one of the functions
below. Each takes the container's current ``Lifecycle`` (a frozen value) and the fact, and returns a
``Step``: the new ``Lifecycle`` and the ``Action``s that follow from it (emit an event, persist the
status, schedule or cancel a restart, start or stop the health monitor, send a signal, remove the
container). Nothing here does I/O, reads a clock or awaits: ``agent.runtime.executor`` performs the
actions and ``agent.runtime.containers`` feeds the facts in. Every state change goes through
``agent.runtime.state.transition``, so an edge missing from its table is caught here.

The rules, as Docker users expect them:
* every exit is acted on exactly once — events, then the restart policy — whether it is reported live
  or found at recovery; ``exit_handled`` remembers which exit was;
* stop wins: a stop, kill or remove by the user marks the container "stopped by user" and cancels a
  pending restart;
* a restart waits out a backoff in ``RESTARTING`` (holding its reservation), then launches;
* a start the user asked for that fails is reported to the user and not retried by the policy.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass, replace

from agent.runtime import restart
from agent.runtime.events import EventType
from agent.runtime.health import HealthCheck, HealthResult, HealthState, HealthStatus
from agent.runtime.records import ContainerStatus
from agent.runtime.restart import RestartPolicy
from agent.runtime.state import State, transition

# What a start failure of each launcher kind exits with (as Docker does: 127 not found, 126 not
# executable, 125 anything else).
START_FAILED_CODES = {"not-found": 127, "not-executable": 126, "setup": 125}


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    reason: str  # Completed, Error, OOMKilled, Killed, StartFailed, Lost, Unhealthy, Evicted
    error: str = ""  # a start failure's message, or why the daemon killed it (Evicted)


@dataclass(frozen=True)
class Lifecycle:
    """One container's state and the daemon's bookkeeping about it."""

    state: State = State.CREATED
    since: float = 0.0  # when it entered ``state`` (unix time)
    pid: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    exit: ExitStatus | None = None
    restart_count: int = 0  # automatic restarts since the user last started it
    backoff_streak: int = 0
    stopped_by_user: bool = False
    next_restart_at: float | None = None  # set while RESTARTING
    exit_handled: float | None = None  # finished_at of the last exit acted on
    kill_reason: str = ""  # why the daemon itself killed it (the exit then carries this reason)
    kill_message: str = ""  # and what to tell the user about it (the exit's error)
    health: HealthStatus = HealthStatus.NONE
    health_failing_streak: int = 0
    health_log: tuple[HealthResult, ...] = ()

    def status(self) -> ContainerStatus:
        """The part persisted in status.json."""
        return ContainerStatus(
            restart_count=self.restart_count, backoff_streak=self.backoff_streak,
            stopped_by_user=self.stopped_by_user, next_restart_at=self.next_restart_at,
            exit_handled=self.exit_handled, kill_reason=self.kill_reason, kill_message=self.kill_message,
            health=self.health, health_failing_streak=self.health_failing_streak, health_log=self.health_log,
        )

    @classmethod
    def from_status(cls, status: ContainerStatus) -> Lifecycle:
        return cls(
            restart_count=status.restart_count, backoff_streak=status.backoff_streak,
            stopped_by_user=status.stopped_by_user, next_restart_at=status.next_restart_at,
            exit_handled=status.exit_handled, kill_reason=status.kill_reason,
            kill_message=status.kill_message, health=status.health,
            health_failing_streak=status.health_failing_streak, health_log=status.health_log,
        )


# -- actions -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Emit:
    """Append an event; ``restart_count``/``health`` default to the new lifecycle's."""

    kind: EventType
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    restart_count: int | None = None


@dataclass(frozen=True)
class SaveStatus:
    """Persist ``Lifecycle.status()`` (status.json)."""


@dataclass(frozen=True)
class ScheduleRestart:
    at: float  # unix time the backoff ends


@dataclass(frozen=True)
class CancelRestart:
    pass


@dataclass(frozen=True)
class StartHealth:
    pass


@dataclass(frozen=True)
class StopHealth:
    pass


@dataclass(frozen=True)
class Signal:
    signal: int


@dataclass(frozen=True)
class AutoRemove:
    pass


Action = Emit | SaveStatus | ScheduleRestart | CancelRestart | StartHealth | StopHealth | Signal | AutoRemove


@dataclass(frozen=True)
class Step:
    lifecycle: Lifecycle
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Policy:
    """What of the container's spec the decisions need."""

    restart: RestartPolicy
    auto_remove: bool = False
    health: HealthCheck | None = None


def _to(container_id: str, lc: Lifecycle, state: State, *, now: float, **changes: object) -> Lifecycle:
    return replace(lc, state=transition(container_id, lc.state, state), since=now, **changes)  # type: ignore[arg-type]


def exit_reason(*, code: int, sig: int | None, oom: bool, kill_reason: str = "") -> str:
    if oom:
        return "OOMKilled"
    if kill_reason:
        return kill_reason
    if sig == signals.SIGKILL:
        return "Killed"
    return "Completed" if code == 0 else "Error"


# -- start ------------------------------------------------------------------------------------------

def start(cid: str, lc: Lifecycle, *, automatic: bool, now: float) -> Step:
    """A launch begins. A user's start forgets "stopped by user", counts restarts from zero again and
    replaces a pending automatic restart; an automatic one counts one more restart."""
    if automatic:
        lc = replace(lc, restart_count=lc.restart_count + 1, next_restart_at=None)
        return Step(_to(cid, lc, State.STARTING, now=now))
    lc = replace(lc, stopped_by_user=False, restart_count=0, backoff_streak=0, next_restart_at=None)
    return Step(_to(cid, lc, State.STARTING, now=now), (CancelRestart(),))


def start_aborted(cid: str, lc: Lifecycle, *, previous: Lifecycle, now: float) -> Step:
    """The launch could not begin (its cgroup, network or supervisor refused before a process existed):
    back to where it was, as if the start had not been asked for. Nothing ran, so there is no event."""
    target = State.CREATED if previous.state is State.CREATED else State.EXITED
    lc = replace(previous, state=transition(cid, lc.state, target), since=now, next_restart_at=None,
                 stopped_by_user=lc.stopped_by_user)
    return Step(lc, (SaveStatus(),))


def launched(cid: str, lc: Lifecycle, *, pid: int, started_at: float, policy: Policy,
             now: float) -> Step:
    health = HealthStatus.STARTING if policy.health is not None else lc.health
    lc = _to(cid, lc, State.RUNNING, now=now, pid=pid, started_at=started_at, exit=None,
             finished_at=None, kill_reason="", kill_message="", health=health,
             health_failing_streak=0 if policy.health is not None else lc.health_failing_streak)
    return Step(lc, (Emit(EventType.STARTED), SaveStatus(), StartHealth()))


def launch_failed(cid: str, lc: Lifecycle, *, kind: str, error: str, finished_at: float,
                  automatic: bool, policy: Policy, now: float) -> Step:
    """The launch did not produce a process. A user's start gets the error and no retry; an automatic
    restart is an exit like any other for the restart policy."""
    status = ExitStatus(START_FAILED_CODES.get(kind, 125), "StartFailed", error)
    return _exited(cid, lc, status, finished_at=finished_at, policy=policy, now=now, start_failed=True,
                   restartable=automatic)


# -- exits ------------------------------------------------------------------------------------------

def exited(cid: str, lc: Lifecycle, *, code: int, sig: int | None, oom: bool, finished_at: float | None,
           policy: Policy, now: float, lost: str | None = None) -> Step:
    """pid 1 exited (reported by the supervisor, or found in run.json at recovery). ``lost`` is the
    supervisor's explanation when it saw the exit but could not learn its status (``code`` is then
    255): reason Lost."""
    if lost:
        status = ExitStatus(code, "Lost", lost)
    else:
        reason = exit_reason(code=code, sig=sig, oom=oom, kill_reason=lc.kill_reason)
        status = ExitStatus(code, reason, lc.kill_message if reason == lc.kill_reason else "")
    return _exited(cid, lc, status, finished_at=finished_at, policy=policy, now=now)


def lost(cid: str, lc: Lifecycle, *, why: str, finished_at: float, policy: Policy, now: float) -> Step:
    """Nobody can report its exit any more (its supervisor and everything that could wait for it are
    gone): it is killed through its cgroup by the caller and recorded as exited, 137, reason Lost."""
    return _exited(cid, lc, ExitStatus(137, "Lost", why), finished_at=finished_at, policy=policy, now=now)


def _exited(cid: str, lc: Lifecycle, status: ExitStatus, *, finished_at: float | None, policy: Policy,
            now: float, start_failed: bool = False, restartable: bool = True) -> Step:
    actions: list[Action] = [StopHealth()]
    first = lc.state not in (State.EXITED, State.RESTARTING)
    fields = {"pid": 0, "exit": status, "finished_at": finished_at}
    if finished_at is not None and lc.exit_handled == finished_at:
        # Already acted on (a live report racing a check, or an exit acted on before a restart of the
        # agent): only the view is refreshed; a restart pending from then is due again.
        pending = lc.next_restart_at
        if pending is not None and not lc.stopped_by_user:
            lc = _settle(cid, lc, State.RESTARTING, now=now, **fields)
            return Step(lc, (*actions, ScheduleRestart(pending)))
        if first and policy.auto_remove:
            actions.append(AutoRemove())  # the agent that acted on it may have died before removing it
        return Step(_settle(cid, lc, State.EXITED, now=now, next_restart_at=None, **fields), tuple(actions))
    if start_failed:
        actions.append(Emit(EventType.START_FAILED, exit_code=status.exit_code, reason=status.reason,
                            message=status.error))
    else:
        if status.reason == "OOMKilled":
            actions.append(Emit(EventType.OOM_KILLED, exit_code=status.exit_code, reason=status.reason))
        actions.append(Emit(EventType.EXITED, exit_code=status.exit_code, reason=status.reason))
    lc = replace(lc, exit_handled=finished_at, kill_reason="", kill_message="")
    wanted = restartable and restart.decide(
        policy.restart, exit_code=status.exit_code, oom=status.reason == "OOMKilled",
        restart_count=lc.restart_count, stopped_by_user=lc.stopped_by_user,
    )
    if wanted:
        ran_for = None
        if not start_failed and lc.started_at is not None and finished_at is not None:
            ran_for = finished_at - lc.started_at
        delay, streak = restart.schedule(lc.backoff_streak, ran_for=ran_for)
        lc = _settle(cid, lc, State.RESTARTING, now=now, backoff_streak=streak, next_restart_at=now + delay,
                     **fields)
        actions += [ScheduleRestart(now + delay),
                    Emit(EventType.RESTARTING, restart_count=lc.restart_count + 1,
                         message=f"restart {lc.restart_count + 1} in {delay:.1f}s ({policy.restart})")]
    else:
        lc = _settle(cid, lc, State.EXITED, now=now, next_restart_at=None, **fields)
        if first and policy.auto_remove:
            actions.append(AutoRemove())
    actions.append(SaveStatus())
    return Step(lc, tuple(actions))


def _settle(cid: str, lc: Lifecycle, state: State, *, now: float, **changes: object) -> Lifecycle:
    """Move to ``state`` (or stay in it: an exit re-reported at recovery refreshes the view)."""
    if lc.state is state:
        return replace(lc, **changes)  # type: ignore[arg-type]
    return _to(cid, lc, state, now=now, **changes)


# -- requests from users and controllers ---------------------------------------------------------------

def stop_requested(cid: str, lc: Lifecycle, *, now: float) -> Step:
    """The user wants it down (stop, a terminating kill, or rm): stop wins over the restart policy. A
    container waiting out a restart backoff is simply not restarted."""
    lc = replace(lc, stopped_by_user=True)
    if lc.state is State.RESTARTING:
        lc = _to(cid, lc, State.EXITED, now=now, next_restart_at=None)
    return Step(lc, (CancelRestart(), SaveStatus()))


def restart_due(cid: str, lc: Lifecycle, *, now: float) -> Step | None:
    """The backoff is over: the launch to perform, or None if nothing should start any more."""
    if lc.state is not State.RESTARTING or lc.stopped_by_user:
        return None
    return start(cid, lc, automatic=True, now=now)


def health_result(cid: str, lc: Lifecycle, *, old: HealthState, new: HealthState, policy: Policy,
                  stop_signal: int = signals.SIGKILL) -> Step:
    """A probe answered. A change of status is an event; turning unhealthy with restart-on-unhealthy
    kills the container, whose exit then carries reason ``Unhealthy`` for the restart policy."""
    lc = replace(lc, health=new.status, health_log=new.log, health_failing_streak=new.failing_streak)
    actions: list[Action] = []
    if new.status is not old.status:
        actions.append(Emit(EventType.HEALTH_CHANGED, message=new.log[-1].output if new.log else ""))
        check = policy.health
        if (new.status is HealthStatus.UNHEALTHY and check is not None and check.restart_on_unhealthy
                and lc.state is State.RUNNING):
            lc = replace(lc, kill_reason="Unhealthy")
            actions.append(Signal(stop_signal))
    actions.append(SaveStatus())
    return Step(lc, tuple(actions))


def evicted(cid: str, lc: Lifecycle, *, message: str) -> Step:
    """Its writable layer was measured over its storage limit (``message`` says by how much): it is
    killed, and its exit carries reason ``Evicted`` and the message, like the kubelet's ephemeral-storage
    eviction. The restart policy then decides, as for any exit (137 is a failure for ``on-failure``);
    the layer survives a restart, so a container that does not clean up is evicted again and backs
    off. Only a running container is evicted; a stop already on its way wins."""
    if lc.state is not State.RUNNING or lc.kill_reason:
        return Step(lc)
    lc = replace(lc, kill_reason="Evicted", kill_message=message)
    return Step(lc, (Emit(EventType.EVICTED, reason="Evicted", message=message), Signal(signals.SIGKILL),
                     SaveStatus()))


def removing(cid: str, lc: Lifecycle, *, now: float) -> Step:
    return Step(_to(cid, lc, State.REMOVING, now=now, pid=0), (StopHealth(), CancelRestart()))


def removed(cid: str, lc: Lifecycle, *, now: float) -> Step:
    return Step(_to(cid, lc, State.REMOVED, now=now), (Emit(EventType.REMOVED),))


def remove_failed(cid: str, lc: Lifecycle, *, now: float) -> Step:
    return Step(_to(cid, lc, State.EXITED, now=now))


# -- recovery ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFacts:
    """What the supervisor's run record and its list of live containers say about one container."""

    recorded: bool  # run.json exists (the container was started at least once)
    alive: bool  # the supervisor reports it running
    pid: int = 0
    started_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    finished_at: float | None = None
    error: str | None = None
    error_kind: str | None = None
    oom: bool = False  # its cgroup recorded an OOM kill (only meaningful with exit_code)
    unreadable: bool = False
    lost: str | None = None  # the exit was seen but its status could not be learned (exit_code 255)


def recovered(cid: str, lc: Lifecycle, *, facts: RunFacts, policy: Policy, now: float) -> tuple[Step, bool]:
    """Rebuild a container's view at start (or after reconnecting to the supervisor).

    Returns the step and whether the container is *lost*: its run record says it runs but no supervisor
    has it, so nobody can report its exit; the caller kills what is left through its cgroup and records
    the exit (the step already says exited 137, reason Lost).
    """
    if facts.unreadable:
        return lost(cid, _as_running(cid, lc, now=now),
                    why="its run record was unreadable", finished_at=now, policy=policy, now=now), True
    if not facts.recorded:
        return Step(lc), False
    lc = replace(lc, started_at=facts.started_at if facts.started_at is not None else lc.started_at)
    if facts.error is not None:
        # A failed start leaves started_at null in run.json: keep the previous run's.
        status = ExitStatus(facts.exit_code or 125, "StartFailed", facts.error)
        return _exited(cid, _as_running(cid, lc, now=now), status, finished_at=facts.finished_at,
                       policy=policy, now=now, start_failed=True), False
    if facts.exit_code is not None:
        return exited(cid, _as_running(cid, lc, now=now), code=facts.exit_code, sig=facts.signal,
                      oom=facts.oom, finished_at=facts.finished_at, policy=policy, now=now,
                      lost=facts.lost), False
    if facts.alive:
        running = _as_running(cid, lc, now=now, pid=facts.pid)
        return Step(running, (StartHealth(),)), False
    return lost(cid, _as_running(cid, lc, now=now), why="the container's supervisor exited",
                finished_at=now, policy=policy, now=now), True


def _as_running(cid: str, lc: Lifecycle, *, now: float, pid: int = 0) -> Lifecycle:
    """The state run.json was written in (the run it describes), for replaying what happened since."""
    if lc.state is State.RUNNING:
        return replace(lc, pid=pid or lc.pid)
    if lc.state in (State.CREATED, State.EXITED, State.RESTARTING):
        lc = _to(cid, lc, State.STARTING, now=now)
    return _to(cid, lc, State.RUNNING, now=now, pid=pid)


__all__ = [
    "START_FAILED_CODES", "Action", "AutoRemove", "CancelRestart", "Emit", "ExitStatus",
    "Lifecycle", "Policy", "RunFacts", "SaveStatus", "ScheduleRestart", "Signal", "StartHealth", "Step",
    "StopHealth", "evicted", "exit_reason", "exited", "health_result", "launch_failed", "launched", "lost",
    "recovered", "remove_failed", "removed", "removing", "restart_due", "start", "start_aborted",
    "stop_requested",
]
