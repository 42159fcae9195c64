"""Raw key-values as both stores hold them, and their decoding into records, snapshots and changes.

The stores differ in where key-values come from (etcd responses, a dict); what a key-value means is
decided here once, so ``EtcdStore`` and ``MemoryStore`` cannot disagree about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from scheduler import model
from scheduler.store import records
from scheduler.store.base import Change, ChangeKind, CorruptEntry, Listing, Snapshot
from scheduler.store.echoes import Echoes
from scheduler.store.errors import CorruptRecord
from scheduler.store.keys import KeySchema, R


@dataclass(frozen=True)
class RawKV:
    """One key as etcd reports it (``value`` empty on a delete event)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


def decode(record_type: type[R], kv: RawKV) -> R:
    """``kv``'s record, with its metadata. Raises ``CorruptRecord`` naming the key."""
    try:
        return records.decode(record_type, kv.value, revision=kv.mod_revision,
                              create_revision=kv.create_revision, lease=kv.lease)
    except records.RecordError as err:
        raise CorruptRecord(kv.key, str(err)) from None


def decode_any(record_type: type[records.Record], kv: RawKV) -> records.Record:
    """``decode`` for a record type known only at run time (from a parsed key)."""
    value: records.Record = decode(cast(Any, record_type), kv)
    return value


def build_listing(record_type: type[R], revision: int, kvs: Iterable[RawKV]) -> Listing[R]:
    items: list[R] = []
    corrupt: list[CorruptEntry] = []
    for kv in kvs:
        try:
            items.append(decode(record_type, kv))
        except CorruptRecord as err:
            corrupt.append(CorruptEntry(kv.key, err.reason))
    return Listing(revision, tuple(items), tuple(corrupt))


def build_snapshot(schema: KeySchema, revision: int, kvs: Iterable[RawKV]) -> Snapshot:
    services: dict[model.ServiceName, model.Service] = {}
    replicas: dict[model.ReplicaId, model.Replica] = {}
    hosts: dict[model.HostId, model.HostRecord] = {}
    statuses: dict[model.HostId, model.HostStatus] = {}
    autoscale: dict[model.ServiceName, model.AutoscaleStatus] = {}
    hostgroups: dict[model.GroupName, model.HostGroup] = {}
    hostgroup_statuses: dict[model.GroupName, model.HostGroupStatus] = {}
    leader: records.LeaderRecord | None = None
    corrupt: list[CorruptEntry] = []
    for kv in kvs:
        parsed = schema.parse(kv.key)
        if parsed is None:
            continue
        try:
            value = decode_any(parsed.record_type, kv)
        except CorruptRecord as err:
            corrupt.append(CorruptEntry(kv.key, err.reason))
            continue
        if isinstance(value, model.Replica):
            replicas[value.id] = value
        elif isinstance(value, model.Service):
            services[value.name] = value
        elif isinstance(value, model.HostRecord):
            hosts[value.id] = value
        elif isinstance(value, model.HostStatus):
            statuses[value.id] = value
        elif isinstance(value, model.AutoscaleStatus):
            autoscale[value.service] = value
        elif isinstance(value, model.HostGroup):
            hostgroups[value.spec.name] = value
        elif isinstance(value, model.HostGroupStatus):
            hostgroup_statuses[value.group] = value
        elif isinstance(value, records.LeaderRecord):
            leader = value
    return Snapshot(revision=revision, services=services, replicas=replicas, hosts=hosts,
                    host_statuses=statuses, autoscale=autoscale, hostgroups=hostgroups,
                    hostgroup_statuses=hostgroup_statuses, leader=leader, corrupt=tuple(corrupt))


def change_from(schema: KeySchema, kind: ChangeKind, kv: RawKV,
                echoes: Echoes | None = None) -> Change | None:
    """The ``Change`` for one event, or None for a key the schema does not know. With ``echoes``, a put
    this store committed itself is not decoded again (``scheduler.store.echoes``)."""
    parsed = schema.parse(kv.key)
    if parsed is None:
        return None
    value: records.Record | None = None
    error = ""
    if echoes is not None:
        echoes.passed(kv.mod_revision)
        if kind is ChangeKind.PUT:
            value = echoes.take(kv.key, kv.mod_revision, kv.value)
    if kind is ChangeKind.PUT and value is None:
        try:
            value = decode_any(parsed.record_type, kv)
        except CorruptRecord as err:
            error = err.reason
    return Change(kind=kind, key=kv.key, record_type=parsed.record_type, ids=parsed.ids, value=value,
                  revision=kv.mod_revision, error=error)


__all__ = ["RawKV", "build_listing", "build_snapshot", "change_from", "decode", "decode_any"]
