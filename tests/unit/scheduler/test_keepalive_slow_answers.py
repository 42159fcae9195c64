"""scheduler/keepalive.py's rule for slow answers, on a store whose lease refreshes are answered late:
refreshes are sent every ``refresh_every`` without waiting for the ones before, so a term survives every
answer taking longer than a refresh interval (TTL/3: what one refresh at a time tolerated) as long as it
takes less than ``step_down_after - refresh_every``; answers slower than the step-down time end the term
before the lease, counted from the newest answered refresh's sending, can expire."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

from scheduler.election import ElectionSettings, Term
from scheduler.keepalive import keep_term
from scheduler.store import base
from scheduler.store.keys import KeyRange, KeyRef, KeySchema, R
from scheduler.store.records import LeaderRecord

SETTINGS = ElectionSettings("a", ttl_s=6)  # step down after 4 s, a refresh every 0.5 s
BOUND_S = 30.0


class SlowLeases:
    """Every refresh is answered ``latency`` seconds after it was sent, in order (as etcd's leader answers
    them once it has applied what it committed before)."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.schema = KeySchema()
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered_sent: list[float] = []  # when each answered refresh was sent

    async def refresh_lease(self, lease_id: int) -> int:
        sent = time.monotonic()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        self.answered_sent.append(sent)
        return SETTINGS.ttl_s

    async def get(self, ref: KeyRef[R]) -> Any:
        return LeaderRecord(instance="a", epoch=7, lease=0x70)

    async def watch(self, after_revision: int, *,
                    scope: KeyRange[Any] | None = None) -> AsyncGenerator[base.Change, None]:
        never: list[base.Change] = []  # the key never changes
        await asyncio.Event().wait()
        for change in never:
            yield change


def keep_for(store: SlowLeases, seconds: float) -> tuple[str | None, float]:
    """Keeps a term for at most ``seconds``: why it ended (None: it was still kept) and when."""

    async def scenario() -> tuple[str | None, float]:
        term = Term(epoch=7, lease_id=0x70, instance="a", started_at=time.monotonic())
        keeping = asyncio.create_task(keep_term(store, term, SETTINGS, clock=time.monotonic))  # type: ignore[arg-type]
        done, _ = await asyncio.wait({keeping}, timeout=seconds)
        ended_at = time.monotonic()
        if not done:
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
            return None, ended_at
        return keeping.result(), ended_at

    return asyncio.run(asyncio.wait_for(scenario(), BOUND_S))


def test_answers_slower_than_a_refresh_interval_keep_the_term() -> None:
    # 2.5 s is more than TTL/3 (2 s): waiting for one refresh at a time, the term was lost at the first
    # such answer. Sent every 0.5 s, the newest answered refresh is at most 3 s old: under 4.
    store = SlowLeases(latency=2.5)
    why, _ = keep_for(store, 1.5 * SETTINGS.ttl_s)
    assert why is None
    assert len(store.answered_sent) >= 6
    assert store.most_in_flight >= 3  # refreshes overlapped: none waited for the one before


def test_answers_slower_than_the_step_down_time_end_the_term_before_the_lease_can_expire() -> None:
    store = SlowLeases(latency=5.0)
    why, ended_at = keep_for(store, 3 * SETTINGS.ttl_s)
    assert why is not None and "no keepalive succeeded" in why
    # The lease lives at least a TTL from the newest answered refresh's sending (or the term's start).
    newest_proof = max(store.answered_sent, default=ended_at - SETTINGS.step_down_after)
    assert ended_at < newest_proof + SETTINGS.ttl_s
    assert store.in_flight == 0  # the refreshes still in flight were cancelled with the term
