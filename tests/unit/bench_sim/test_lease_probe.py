"""bench/sim/lease_probe.py: every renewal's latency is kept, a failed renewal is counted and the lease
granted again, and the summary says how many were slow (over the store interface, on the in-memory store
and on one whose renewals fail)."""

from __future__ import annotations

import asyncio
import contextlib

from bench.sim.lease_probe import LeaseProbe
from scheduler.store.errors import LeaseExpired
from scheduler.store.memory import MemoryStore
from tests.fixtures.sim_session import until


class ForgetfulStore(MemoryStore):
    """Every other renewal finds the lease gone (as after a TTL it could not be renewed within)."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    async def refresh_lease(self, lease_id: int) -> int:
        self.renewals += 1
        if self.renewals % 2 == 0:
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        return await super().refresh_lease(lease_id)


def probe_until(store: MemoryStore, renewals: int) -> LeaseProbe:
    async def go() -> LeaseProbe:
        probe = LeaseProbe(store, interval=0.001)
        task = asyncio.create_task(probe.run())
        try:
            await until(lambda: len(probe.latencies) >= renewals)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return probe

    return asyncio.run(go())


def test_every_renewal_is_timed_and_none_failed() -> None:
    result = probe_until(MemoryStore(), 5).result()
    assert result["n"] >= 5 and result["failures"] == 0 and result["over_3.3s"] == 0
    assert result["p50"] is not None and result["max"] >= result["p50"]
    assert result["slowest"] == []


def test_a_failed_renewal_is_counted_and_the_lease_granted_again() -> None:
    store = ForgetfulStore()
    result = probe_until(store, 6).result()
    assert result["failures"] >= 3 and "LeaseExpired" in result["failure_examples"][0]
    assert result["n"] >= 6  # went on renewing, with a new lease each time
