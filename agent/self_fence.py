"""Self-fencing: an agent that has lost every scheduler for too long stops its scheduler-managed replicas.

Off by default; ``shoal-agent serve --join … --stop-replicas-after SECONDS`` turns it on, for services
that must never run twice. After a partition the scheduler re-places the replicas of a host it cannot
reach (after its host grace period); the cut-off host's copies keep running unless something stops them,
and the scheduler can only stop them once the partition heals. With this option the agent stops them
itself: once no registration with any scheduler of ``--join`` has succeeded (``agent.join``) for longer
than the setting, every running container with the ``shoal.service`` label is stopped through the
runtime's normal stop path (its stop signal, then SIGKILL after ``STOP_TIMEOUT_S``, as the scheduler's
own retirements do), and the agent logs why, once per loss of contact. While contact stays lost, a
scheduler-managed container that runs again (started by hand) is stopped too. When contact returns the
agent does nothing more: the scheduler reconciles (it re-places or removes what is missing).

The trade: a blip longer than the setting stops replicas that would otherwise have kept serving, so never
set it below the scheduler's host grace period (the time before it re-places a silent host's replicas).

``ContactLoss`` is the decision, pure and with time injected; ``SelfFence`` runs it on a timer and acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.errors import ShoalError
from agent.runtime.containers import ContainerRuntime

log = logging.getLogger(__name__)

LABEL_SERVICE = "shoal.service"  # the scheduler puts it on every replica (scheduler.model.LABEL_SERVICE)
STOP_TIMEOUT_S = 10.0            # as the scheduler's STOP_GRACE_SECONDS
MAX_CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Verdict:
    """What to do now: ``stop`` scheduler-managed replicas; ``announce`` (the first verdict of a loss) says
    to log why; ``silent_for`` is how long no registration has succeeded."""

    stop: bool
    announce: bool
    silent_for: float


class ContactLoss:
    """Has the agent been without any scheduler for longer than ``stop_after`` seconds? Contact counts
    from ``started_at`` until the first successful registration, so an agent that starts cut off fences
    too."""

    def __init__(self, *, stop_after: float, started_at: float) -> None:
        if stop_after <= 0:
            raise ValueError(f"stop_after must be positive, got {stop_after}")
        self.stop_after = stop_after
        self._last_contact = started_at
        self._announced = False

    def contact(self, now: float) -> None:
        """A registration succeeded at ``now``: contact is back (nothing else to do: the scheduler
        reconciles), and a later loss is announced again."""
        self._last_contact = max(self._last_contact, now)
        self._announced = False

    def verdict(self, now: float) -> Verdict:
        silent_for = now - self._last_contact
        if silent_for <= self.stop_after:
            return Verdict(stop=False, announce=False, silent_for=silent_for)
        announce = not self._announced
        self._announced = True
        return Verdict(stop=True, announce=announce, silent_for=silent_for)


StopReplicas = Callable[[], Awaitable[list[str]]]


async def stop_scheduler_managed(runtime: ContainerRuntime, *, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stops every running container with the ``shoal.service`` label, at once; their names. A container
    that fails to stop is logged and left to the next check."""
    managed = [c for c in runtime.list_containers() if LABEL_SERVICE in c.labels]

    async def stop(name: str) -> str | None:
        try:
            await runtime.stop(name, timeout=timeout)
        except ShoalError as err:
            log.warning("self-fencing: cannot stop %s: %s", name, err)
            return None
        return name

    done = await asyncio.gather(*(stop(c.id) for c in managed))
    names = {c.id: c.name for c in managed}
    return [names[i] or i for i in done if i is not None]


class SelfFence:
    """Checks ``ContactLoss`` on a timer and stops the replicas when it says so (see the module
    docstring). ``contact`` is the ``Joiner``'s success callback."""

    def __init__(self, *, stop_after: float, stop_replicas: StopReplicas,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._loss = ContactLoss(stop_after=stop_after, started_at=clock())
        self._stop_replicas = stop_replicas
        self._interval = min(MAX_CHECK_INTERVAL_S, stop_after / 4)
        self.stopped: list[str] = []  # every container this fence stopped (for logs and tests)

    def contact(self) -> None:
        self._loss.contact(self._clock())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            verdict = self._loss.verdict(self._clock())
            if not verdict.stop:
                continue
            if verdict.announce:
                log.warning("no scheduler has been reachable for %.1fs (--stop-replicas-after %gs): "
                            "stopping this host's scheduler-managed replicas so they never run twice; "
                            "the scheduler reconciles once it is reachable again",
                            verdict.silent_for, self._loss.stop_after)
            try:
                stopped = await self._stop_replicas()
            except Exception:
                log.exception("self-fencing: stopping the scheduler-managed replicas failed")
                continue
            self.stopped += stopped
            for container in stopped:
                log.info("self-fencing: stopped %s", container)


__all__ = ["LABEL_SERVICE", "STOP_TIMEOUT_S", "ContactLoss", "SelfFence", "StopReplicas", "Verdict",
           "stop_scheduler_managed"]
