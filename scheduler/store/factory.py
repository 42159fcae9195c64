"""``open_store``: the ``Store`` the ``--etcd`` flag names — etcd endpoints, or ``memory:`` for an
in-process store (development and tests: its state ends with the process, and it cannot be shared by
several scheduler instances)."""

from __future__ import annotations

from scheduler.store.base import MAX_TXN_OPS, Store
from scheduler.store.etcd import EtcdSettings, EtcdStore
from scheduler.store.keys import DEFAULT_PREFIX
from scheduler.store.memory import MemoryStore

MEMORY = "memory:"


async def open_store(etcd: str, *, prefix: str = DEFAULT_PREFIX, request_timeout_s: float = 2.0,
                     retry_deadline_s: float = 5.0, max_txn_ops: int = MAX_TXN_OPS) -> Store:
    """``max_txn_ops``: etcd's ``--max-txn-ops`` (the memory store keeps to it too)."""
    if etcd == MEMORY:
        return MemoryStore(prefix=prefix, max_txn_ops=max_txn_ops)
    return await EtcdStore.open(EtcdSettings(endpoints=etcd, prefix=prefix,
                                             request_timeout_s=request_timeout_s,
                                             retry_deadline_s=retry_deadline_s, max_txn_ops=max_txn_ops))


__all__ = ["MEMORY", "open_store"]
