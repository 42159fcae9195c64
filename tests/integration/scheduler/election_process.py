"""A scheduler-like process for election tests: campaigns on etcd and, once it leads, prints
``LEADING <epoch> <lease id>`` and keeps leading until it is killed.

``python -m tests.integration.scheduler.election_process ENDPOINTS PREFIX INSTANCE TTL``
"""

from __future__ import annotations

import asyncio
import sys

from scheduler.election import Election, ElectionSettings, Term
from scheduler.store.etcd import EtcdSettings, EtcdStore


async def main(endpoints: str, prefix: str, instance: str, ttl_s: int) -> None:
    store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix))

    async def lead(term: Term) -> None:
        print(f"LEADING {term.epoch} {term.lease_id}", flush=True)
        await asyncio.Event().wait()

    await Election(store, ElectionSettings(instance, ttl_s=ttl_s)).run(lead)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
