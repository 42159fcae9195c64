"""``LeaseProbe``: a lease of the benchmark's own, renewed every second beside the run, so that how long
etcd takes to renew a lease under the run's load is measured rather than guessed.

Part 7's 5,000-host runs lost terms when the leader's keeper saw two renewals in a row time out (3.3 s
each, at TTL 10); the keeper is small and mostly asleep, and etcd's leader applies its pending committed
entries before it renews a lease, so the suspicion is etcd (docs/scaling.md, "The plan"). The probe
renews through the scheduler's own store client (``EtcdStore.refresh_lease``), on a connection of its
own, with no deadline of its own beyond the store's, and keeps every renewal's latency and the slowest
ones with their wall-clock time, to be lined up with the schedulers' logs.

It runs in **a process of its own** (``python -m bench.sim.lease_probe --etcd URLS``: renews until its
stdin closes, then prints its result as one JSON line), as the keeper does: part 8 found that a probe on
the benchmark's own event loop timed the benchmark's stalls too (renewals of 8.7-20.1 s while etcd had
a backlog of at most 2 entries and took 46-65 puts a second, while the benchmark measured a mass failure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from bench.sim.summary import summarize
from scheduler.store import base
from scheduler.store.errors import StoreError
from scheduler.store.factory import open_store
from scheduler.store.keys import DEFAULT_PREFIX

SLOW_S = 1.0      # renewals this slow are kept with their time (a keeper's deadline is TTL / 3)
KEPT = 200        # at most this many of them (the slowest are kept)


class LeaseProbe:
    def __init__(self, store: base.Store, *, interval: float = 1.0, ttl_s: int = 60) -> None:
        self._store = store
        self._interval = interval
        self._ttl_s = ttl_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.slow: list[tuple[float, float]] = []  # (wall time it began, seconds)

    async def run(self) -> None:
        """Renews until cancelled (a lease that expired meanwhile is granted again, and that counted)."""
        lease = await self._store.grant_lease(self._ttl_s)
        while True:
            began, wall = time.monotonic(), time.time()
            try:
                await self._store.refresh_lease(lease.id)
            except StoreError as err:
                self.failures.append(f"{type(err).__name__}: {err}"[:200])
                lease = await self._store.grant_lease(self._ttl_s)
            took = time.monotonic() - began
            self.latencies.append(took)
            if took >= SLOW_S:
                self.slow.append((wall, took))
                if len(self.slow) > 2 * KEPT:
                    self.slow = sorted(self.slow, key=lambda s: -s[1])[:KEPT]
            await asyncio.sleep(max(0.0, self._interval - took))

    def result(self) -> dict[str, Any]:
        slowest = sorted(self.slow, key=lambda s: -s[1])[:KEPT]
        return {**summarize(self.latencies), "failures": len(self.failures),
                "failure_examples": self.failures[:5], f"over_{SLOW_S:g}s": len(self.slow),
                "over_3.3s": sum(1 for t in self.latencies if t >= 3.3),
                "slowest": [[time.strftime("%H:%M:%S", time.localtime(w)), round(s, 3)]
                            for w, s in sorted(slowest)]}


async def _stdin_closed() -> None:
    """Returns when the parent closes our stdin (or dies)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def probe_process(endpoints: str, interval: float) -> dict[str, Any]:
    """Renews until stdin closes; the result, with the slow renewals' raw (wall time, seconds)."""
    store = await open_store(endpoints, prefix=DEFAULT_PREFIX, request_timeout_s=60, retry_deadline_s=120)
    probe = LeaseProbe(store, interval=interval)
    task = asyncio.create_task(probe.run())
    try:
        await _stdin_closed()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await store.close()
    return {"result": probe.result(), "slow": probe.slow}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim.lease_probe", description=__doc__)
    parser.add_argument("--etcd", required=True, help="client URLs of every member")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(probe_process(args.etcd, args.interval))), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["LeaseProbe", "main", "probe_process"]
