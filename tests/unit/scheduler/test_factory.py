"""scheduler/store/factory.py: ``--etcd`` picks the store; opening one sends nothing yet."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.store.etcd import EtcdStore
from scheduler.store.factory import MEMORY, open_store
from scheduler.store.memory import MemoryStore


def test_memory_and_etcd_stores_are_chosen_by_the_flag() -> None:
    async def scenario() -> None:
        memory = await open_store(MEMORY, prefix="/dev/shoal/")
        assert isinstance(memory, MemoryStore) and memory.schema.prefix == "/dev/shoal/"
        etcd = await open_store("http://127.0.0.1:1,http://127.0.0.1:2")  # nothing listens: not contacted
        assert isinstance(etcd, EtcdStore) and etcd.target == "ipv4:127.0.0.1:1,127.0.0.1:2"
        await etcd.close()
        await memory.close()

    asyncio.run(scenario())


def test_a_bad_flag_is_refused_before_any_connection() -> None:
    with pytest.raises(ValueError, match="TLS to etcd is not supported yet"):
        asyncio.run(open_store("https://127.0.0.1:2379"))
