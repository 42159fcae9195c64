"""The raw etcd ceiling of bench/scale.py against a real etcd: a flood is timed and its keys are deleted
afterwards in ranges of at most ``DELETE_CHUNK`` (one delete of a whole flood is what etcd timed out),
removing exactly the flood's keys."""

from __future__ import annotations

import asyncio

import pytest

from bench import scale
from tests.fixtures.etcd import EtcdCluster

pytestmark = pytest.mark.integration


async def keys_under(endpoints: str, prefix: bytes) -> list[bytes]:
    async with scale.aetcd_client(endpoints) as client:
        return [kv.key for kv in await client.get_prefix(prefix)]


def test_a_floods_keys_are_deleted_in_ranges_that_leave_every_other_key(
        etcd_private: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "DELETE_CHUNK", 7)
    endpoints = etcd_private.endpoints
    flood = [f"/t/b/{i:03d}".encode() for i in range(50)]
    around = [b"/t/a", b"/t/b", b"/t/b0", b"/t/b/", b"/t/b/049/x", b"/t/c"]

    async def run() -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        async with scale.aetcd_client(endpoints) as client:
            for key in flood + around:
                await client.put(key, b"x")
            deleted: list[tuple[bytes, bytes]] = []
            delete_range = client.delete_range

            async def counted(start: bytes, end: bytes) -> object:
                deleted.append((start, end))
                return await delete_range(start, end)

            client.delete_range = counted  # type: ignore[method-assign]
            await scale.delete_keys(client, list(reversed(flood)))
        return await keys_under(endpoints, b"/t/"), deleted

    left, deleted = asyncio.run(run())
    assert sorted(left) == sorted(around)
    assert len(deleted) == 8  # 50 keys, 7 a range
    assert deleted[0] == (b"/t/b/000", b"/t/b/006\0")


def test_a_flood_is_timed_and_leaves_nothing_behind(etcd_private: EtcdCluster) -> None:
    took = asyncio.run(scale.raw_puts(etcd_private.endpoints, 300))
    assert took > 0
    assert asyncio.run(keys_under(etcd_private.endpoints, b"/raw-")) == []
