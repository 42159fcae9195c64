"""The autoscaler's loop: every ``interval`` (1 s), decide each autoscaled service's count and write it.

It runs in the leader, beside the reconcile loop, over the same mirror of etcd and the same agent
sessions (whose 1 s usage streams carry each replica's cpu and memory). One tick:

1. asks every Prometheus query of every autoscaled service once, concurrently (``prometheus``);
2. per service, builds the replay input (``inputs.decision_input``) and runs the pure decision function
   on it — the same one ``shoal autoscale replay`` runs;
3. remembers the recommendation (the stabilization windows look back over them), and when the decision
   changes the count, writes the service's new ``replicas`` (its generation bumped, as a ``shoal scale``
   would) together with the autoscaler's record (``autoscale/{service}``: history and latest decisions)
   in one transaction, guarded by the leader's term and the service's revision, so a deposed leader's or
   a stale decision is refused. The reconcile loop then creates or removes replicas as for any scale.

Decisions that change nothing are recorded too when their outcome differs from the last recorded one
(a metric failing, a cap reached), at most every ``record_every`` seconds per service, so ``describe``
explains the current state without a write per service per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.autoscale import hpa, replay
from scheduler.autoscale.gather import CPU_INITIALIZATION_PERIOD, decision_input
from scheduler.autoscale.prometheus import PrometheusClient, QueryResult
from scheduler.errors import InvalidArgument
from scheduler.model import (
    AutoscaleDecision,
    AutoscaleStatus,
    MetricKind,
    Recommendation,
    Replica,
    ReplicaId,
    ScaleEvent,
    Service,
    ServiceName,
)
from scheduler.observed import ContainerUsage
from scheduler.store import base
from scheduler.store.errors import Conflict, StoreUnavailable

log = logging.getLogger(__name__)

INTERVAL = 1.0
RECORD_EVERY = 10.0   # seconds between records of decisions that change nothing
MAX_DECISIONS = 10    # kept per service


@dataclass(frozen=True)
class AutoscalerSettings:
    guard: base.LeaderGuard
    interval: float = INTERVAL
    prometheus_url: str = ""
    cpu_initialization_period: float = CPU_INITIALIZATION_PERIOD
    record_every: float = RECORD_EVERY


@dataclass(frozen=True)
class Outcome:
    """What the decision says, as the loop uses it."""

    desired: int | None        # None: no recommendation (``error``)
    reason: str
    error: str = ""


@dataclass(frozen=True)
class Evaluation:
    output: dict[str, Any]             # the replay output (``replay.render_decision``)
    outcome: Outcome
    history: hpa.History | None        # after this decision (None: the input was refused)


def evaluate(inp: dict[str, Any]) -> Evaluation:
    """The rules on a replay input: the decision as ``shoal autoscale replay`` prints it, and the history
    after it (HPA's: seeded with the current count, the recommendation added, a scale event recorded,
    what no window or period counts any more pruned). Times in that history are relative to the decision
    (ages as negative numbers), as the replay format reads them."""
    try:
        parsed = replay.parse_input(inp)
    except InvalidArgument as err:  # an input the rules refuse (a replica without a cpu request, ...)
        error = str(err)
        return Evaluation({"desired_replicas": None, "error": error, "reason": f"no decision: {error}"},
                          Outcome(None, f"no decision: {error}", error), None)
    decision = hpa.decide(parsed)
    outcome = Outcome(decision.desired_replicas, decision.reason, decision.error or "")
    return Evaluation(replay.render_decision(decision), outcome,
                      hpa.record_decision(parsed.history, parsed, decision))


def updated_status(status: AutoscaleStatus, *, now: float, current: int, evaluation: Evaluation,
                   input_json: str, record: bool) -> AutoscaleStatus:
    """The record after one decision made at ``now``: the rules' history (its times made absolute), and
    the decision kept when ``record``."""
    history = evaluation.history
    if history is not None:
        status = dataclasses.replace(
            status,
            recommendations=tuple(Recommendation(now + r.at, r.replicas) for r in history.recommendations),
            scale_up_events=tuple(ScaleEvent(now + e.at, e.change) for e in history.scale_up_events),
            scale_down_events=tuple(ScaleEvent(now + e.at, e.change) for e in history.scale_down_events))
    if record:
        outcome = evaluation.outcome
        decision = AutoscaleDecision(
            time=now, current_replicas=current,
            desired_replicas=outcome.desired if outcome.desired is not None else current,
            reason=outcome.reason, error=outcome.error, input_json=input_json)
        status = dataclasses.replace(status, decisions=(*status.decisions, decision)[-MAX_DECISIONS:])
    return status


def worth_recording(status: AutoscaleStatus, *, now: float, current: int, outcome: Outcome,
                    every: float) -> bool:
    """A scale always; otherwise a changed outcome, at most every ``every`` seconds."""
    if outcome.desired is not None and outcome.desired != current:
        return True
    last = status.decisions[-1] if status.decisions else None
    if last is None:
        return True
    same = (last.reason, last.error, last.desired_replicas) == (
        outcome.reason, outcome.error, outcome.desired if outcome.desired is not None else current)
    return not same and now - last.time >= every


class Autoscaler:
    def __init__(self, store: base.Store, settings: AutoscalerSettings, *,
                 services: Callable[[], Mapping[ServiceName, Service]],
                 replicas: Callable[[], Mapping[ReplicaId, Replica]],
                 statuses: Callable[[], Mapping[ServiceName, AutoscaleStatus]],
                 usage: Callable[[], Mapping[str, ContainerUsage]],
                 on_written: Callable[[base.Committed], None]) -> None:
        self.store = store
        self.settings = settings
        self._services = services
        self._replicas = replicas
        self._statuses = statuses
        self._usage = usage
        self._on_written = on_written
        self._memory: dict[ServiceName, AutoscaleStatus] = {}
        self._prometheus = PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.tick()
                except (StoreUnavailable, Conflict) as err:
                    log.info("autoscaler: %s; deciding again at the next tick", err)
                await asyncio.sleep(max(0.0, self.settings.interval - (time.monotonic() - started)))
        finally:
            if self._prometheus is not None:
                with contextlib.suppress(Exception):
                    await self._prometheus.close()

    async def _answers(self, services: list[Service]) -> dict[str, QueryResult]:
        wanted = sorted({m.query for s in services for m in s.spec.autoscale.metrics  # type: ignore[union-attr]
                         if m.kind is MetricKind.PROMETHEUS})
        if not wanted:
            return {}
        if self._prometheus is None:
            missing = QueryResult(error="no Prometheus to ask: start shoal-scheduler with --prometheus URL")
            return dict.fromkeys(wanted, missing)
        client = self._prometheus
        results = await asyncio.gather(*(client.query(q) for q in wanted))
        return dict(zip(wanted, results, strict=True))

    async def tick(self) -> None:
        services = [s for s in self._services().values() if s.spec.autoscale is not None and not s.deleting]
        for name in [n for n in self._memory if n not in {s.name for s in services}]:
            del self._memory[name]
        if not services:
            return
        answers = await self._answers(services)
        replicas = list(self._replicas().values())
        usage = self._usage()
        now = time.time()
        ops: list[base.Op] = []
        for service in services:
            status = self._memory.get(service.name) or self._statuses().get(service.name) \
                or AutoscaleStatus(service=service.name)
            inp = decision_input(service, replicas, usage=usage, queries=answers, history=status, now=now,
                                 cpu_initialization_period=self.settings.cpu_initialization_period)
            evaluation = evaluate(inp)
            outcome = evaluation.outcome
            current = service.spec.replicas
            record = worth_recording(status, now=now, current=current, outcome=outcome,
                                     every=self.settings.record_every)
            status = updated_status(status, now=now, current=current, evaluation=evaluation,
                                    input_json=json.dumps(inp, separators=(",", ":")) if record else "",
                                    record=record)
            self._memory[service.name] = status
            if outcome.desired is not None and outcome.desired != current:
                log.info("autoscaler: %s %d -> %d: %s", service.name, current, outcome.desired,
                         outcome.reason)
                ops += [base.Put(service.scaled(outcome.desired, now=now)), base.Put(status)]
            elif record:
                ops.append(base.Put(status))
        if ops:
            committed = await self.store.commit(ops, guard=self.settings.guard)
            for written in committed.written:  # with their new revisions: the next write compares on them
                if isinstance(written, AutoscaleStatus):
                    self._memory[written.service] = written
            self._on_written(committed)


__all__ = [
    "INTERVAL", "Autoscaler", "AutoscalerSettings", "Evaluation", "Outcome", "evaluate", "updated_status",
    "worth_recording",
]
