"""A commit started as a task goes out within ``controller.SEND_TURNS`` loop turns, so that a write a pass
starts before deciding lands while the pass holds the loop (``Controller._record_ahead``), against a real
etcd: one transaction after the other and pipelined."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from scheduler import controller
from scheduler.store.base import Put
from scheduler.store.etcd import EtcdSettings, EtcdStore
from tests.fixtures import scheduler_records as build
from tests.fixtures.etcd import EtcdCluster

pytestmark = pytest.mark.integration

BOUND_S = 20.0  # how long the loop is held at most: the write lands in milliseconds when it was sent


@pytest.mark.parametrize("in_flight", [1, controller.COMMIT_IN_FLIGHT])
def test_a_commit_started_before_the_loop_is_held_lands_while_it_is(etcd: EtcdCluster, etcd_prefix: str,
                                                                    in_flight: int) -> None:
    async def scenario() -> None:
        writer = await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix))
        await writer.commit([Put(build.service("warm"))])  # the channel connected: only the commit is timed
        record = build.replica("web", 1)
        key = writer.schema.replica("web", record.id)
        commit = writer.commit([Put(record), Put(build.service("web"))], in_flight=in_flight)
        task = asyncio.get_running_loop().create_task(commit)
        await controller.sent()
        # The loop is held from here (as a pass holds it while it decides): another thread, with a store
        # and loop of its own, looks for the write until it lands or the bound passes.
        landed: list[bool] = []

        def look() -> None:
            async def poll() -> bool:
                store = await EtcdStore.open(EtcdSettings(etcd.endpoints, prefix=etcd_prefix))
                try:
                    deadline = time.monotonic() + BOUND_S
                    while time.monotonic() < deadline:
                        if await store.get(key) is not None:
                            return True
                        await asyncio.sleep(0.01)
                    return False
                finally:
                    await store.close()
            landed.append(asyncio.run(poll()))

        looker = threading.Thread(target=look)
        looker.start()
        looker.join()  # holds this loop
        assert landed == [True]
        await task
        await writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 3 * BOUND_S))
