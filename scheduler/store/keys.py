"""The scheduler's etcd key schema: every key it reads or writes, under one configurable prefix.

Layout (``{P}`` is the prefix, ``/shoal/v1/`` by default; values are JSON from ``scheduler.store.records``):

==================================  ================  ==============================================
key                                 value             written by
==================================  ================  ==============================================
``{P}services/{service}``           ``Service``       the API (apply, scale; delete sets
                                                      ``deleting``); the leader removes a deleting
                                                      service once it has no replicas left
``{P}replicas/{service}/{replica}`` ``Replica``       the leader only (placement, reconcile, rollout)
``{P}hosts/{host}``                 ``HostRecord``    the API: an agent's registration (its facts and
                                                      capacity) and operators' cordon/uncordon/drain
``{P}host-status/{host}``           ``HostStatus``    the leader only (reachability, start failures)
``{P}autoscale/{service}``          ``AutoscaleStatus``  the leader only (the autoscaler's history and
                                                      latest decisions)
``{P}hostgroups/{group}``           ``HostGroup``     the API (apply, delete): a declared host group
``{P}hostgroup-status/{group}``     ``HostGroupStatus``  the leader only (the elastic loop: provider
                                                      requests, drains, timers, decisions); kept when
                                                      the group is deleted, so a group declared again
                                                      never reuses a request id
``{P}leader``                       ``LeaderRecord``  the election: created by the winner, attached to
                                                      its lease (gone when the lease expires or is
                                                      revoked); its create revision is the epoch
``{P}schedulers/{instance}``        ``InstanceRecord``  each scheduler instance, for itself: created at
                                                      start, attached to its own lease (gone when the
                                                      instance stops or dies); not in snapshots or
                                                      watches (see below)
==================================  ================  ==============================================

Why this shape: a replica's key starts with its service, so one range lists (or a watch scope follows) a
service's replicas; replica ids are nevertheless unique across services (the id is the container id on
the host). A host's record and its status are separate keys because different writers own them: the
registration and the operators write the record, only the leader judges the status, so the two never
contend on one revision. Everything the scheduler keeps is under the prefix, so one range read is a
consistent snapshot and one watch follows every change; ``v1`` in the default prefix is the schema
version (an incompatible schema gets a new prefix, and the old one stays readable while both run).
Instance records are read by one range (``ListSchedulers``) and by nothing else: ``parse`` does not name
them, so snapshots and the control loops' watch skip them as they skip any key they do not know.
Segments (service names, replica and host ids) may not be empty or contain ``/``, whitespace or control
characters; anything else is kept as given (the API validates names more strictly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from scheduler import model
from scheduler.store.records import InstanceRecord, LeaderRecord, Record

DEFAULT_PREFIX = "/shoal/v1/"

R = TypeVar("R", model.Service, model.Replica, model.HostRecord, model.HostStatus, model.AutoscaleStatus,
            model.HostGroup, model.HostGroupStatus, LeaderRecord, InstanceRecord)

_SEGMENT = re.compile(r"[^/\x00-\x20\x7f]+")
_SERVICES = "services/"
_REPLICAS = "replicas/"
_HOSTS = "hosts/"
_HOST_STATUS = "host-status/"
_AUTOSCALE = "autoscale/"
_HOSTGROUPS = "hostgroups/"
_HOSTGROUP_STATUS = "hostgroup-status/"
_LEADER = "leader"
_SCHEDULERS = "schedulers/"


class InvalidKey(ValueError):
    """A name or id that cannot be a key segment, or a prefix that cannot be a prefix."""


@dataclass(frozen=True)
class KeyRef(Generic[R]):
    """One key and the type of the record stored there."""

    key: str
    record_type: type[R]


@dataclass(frozen=True)
class KeyRange(Generic[R]):
    """The keys ``start <= key < end``, all holding records of ``record_type``."""

    start: str
    end: str
    record_type: type[R]


@dataclass(frozen=True)
class AnyRange:
    """A range that may hold records of several types (the whole prefix), for snapshots and watches."""

    start: str
    end: str


@dataclass(frozen=True)
class ParsedKey:
    """What a key names: the record type and the ids in it (``(service,)``, ``(service, replica)``,
    ``(host,)`` or ``()`` for the leader key)."""

    record_type: type[Record]
    ids: tuple[str, ...]


def range_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix`` (etcd's prefix range end:
    the last character plus one; code point order is UTF-8 byte order, so this holds for etcd too)."""
    if not prefix:
        raise InvalidKey("an empty prefix has no range end")
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def check_segment(what: str, value: str) -> str:
    if not _SEGMENT.fullmatch(value):
        raise InvalidKey(f"{what} {value!r} cannot be part of an etcd key: it must be non-empty, without "
                         "'/', whitespace or control characters")
    return value


@dataclass(frozen=True)
class KeySchema:
    """Builds and parses the scheduler's keys under ``prefix`` (which must start and end with ``/``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")) or "//" in self.prefix:
            raise InvalidKey(f"etcd prefix {self.prefix!r} must start and end with '/' (like /shoal/v1/)")

    # -- single keys -----------------------------------------------------------------------------------

    def service(self, name: str) -> KeyRef[model.Service]:
        return KeyRef(f"{self.prefix}{_SERVICES}{check_segment('service name', name)}", model.Service)

    def replica(self, service: str, replica: str) -> KeyRef[model.Replica]:
        return KeyRef(f"{self.prefix}{_REPLICAS}{check_segment('service name', service)}/"
                      f"{check_segment('replica id', replica)}", model.Replica)

    def host(self, host: str) -> KeyRef[model.HostRecord]:
        return KeyRef(f"{self.prefix}{_HOSTS}{check_segment('host id', host)}", model.HostRecord)

    def host_status(self, host: str) -> KeyRef[model.HostStatus]:
        return KeyRef(f"{self.prefix}{_HOST_STATUS}{check_segment('host id', host)}", model.HostStatus)

    def autoscale(self, service: str) -> KeyRef[model.AutoscaleStatus]:
        return KeyRef(f"{self.prefix}{_AUTOSCALE}{check_segment('service name', service)}",
                      model.AutoscaleStatus)

    def hostgroup(self, group: str) -> KeyRef[model.HostGroup]:
        return KeyRef(f"{self.prefix}{_HOSTGROUPS}{check_segment('host group name', group)}", model.HostGroup)

    def hostgroup_status(self, group: str) -> KeyRef[model.HostGroupStatus]:
        return KeyRef(f"{self.prefix}{_HOSTGROUP_STATUS}{check_segment('host group name', group)}",
                      model.HostGroupStatus)

    def leader(self) -> KeyRef[LeaderRecord]:
        return KeyRef(f"{self.prefix}{_LEADER}", LeaderRecord)

    def scheduler_instance(self, instance: str) -> KeyRef[InstanceRecord]:
        return KeyRef(f"{self.prefix}{_SCHEDULERS}{check_segment('scheduler instance id', instance)}",
                      InstanceRecord)

    # -- ranges ----------------------------------------------------------------------------------------

    def everything(self) -> AnyRange:
        return AnyRange(self.prefix, range_end(self.prefix))

    def services(self) -> KeyRange[model.Service]:
        return self._range(_SERVICES, model.Service)

    def replicas(self) -> KeyRange[model.Replica]:
        return self._range(_REPLICAS, model.Replica)

    def replicas_of(self, service: str) -> KeyRange[model.Replica]:
        return self._range(f"{_REPLICAS}{check_segment('service name', service)}/", model.Replica)

    def hosts(self) -> KeyRange[model.HostRecord]:
        return self._range(_HOSTS, model.HostRecord)

    def host_statuses(self) -> KeyRange[model.HostStatus]:
        return self._range(_HOST_STATUS, model.HostStatus)

    def autoscale_statuses(self) -> KeyRange[model.AutoscaleStatus]:
        return self._range(_AUTOSCALE, model.AutoscaleStatus)

    def hostgroups(self) -> KeyRange[model.HostGroup]:
        return self._range(_HOSTGROUPS, model.HostGroup)

    def hostgroup_statuses(self) -> KeyRange[model.HostGroupStatus]:
        return self._range(_HOSTGROUP_STATUS, model.HostGroupStatus)

    def scheduler_instances(self) -> KeyRange[InstanceRecord]:
        return self._range(_SCHEDULERS, InstanceRecord)

    def leader_range(self) -> KeyRange[LeaderRecord]:
        """The leader key alone, as a range (a watch scope for the election)."""
        key = self.leader().key
        return KeyRange(key, key + "\x00", LeaderRecord)

    def _range(self, sub: str, record_type: type[R]) -> KeyRange[R]:
        start = self.prefix + sub
        return KeyRange(start, range_end(start), record_type)

    # -- records and keys ------------------------------------------------------------------------------

    def key_of(self, record: Record) -> str:
        """Where ``record`` is stored."""
        if isinstance(record, model.Replica):
            return self.replica(record.service, record.id).key
        if isinstance(record, model.Service):
            return self.service(record.name).key
        if isinstance(record, model.HostRecord):
            return self.host(record.id).key
        if isinstance(record, model.HostStatus):
            return self.host_status(record.id).key
        if isinstance(record, model.AutoscaleStatus):
            return self.autoscale(record.service).key
        if isinstance(record, model.HostGroup):
            return self.hostgroup(record.spec.name).key
        if isinstance(record, model.HostGroupStatus):
            return self.hostgroup_status(record.group).key
        if isinstance(record, InstanceRecord):
            return self.scheduler_instance(record.instance).key
        return self.leader().key

    def parse(self, key: str) -> ParsedKey | None:
        """What ``key`` names, or None for a key this schema does not know (written by a newer
        scheduler, or by hand): readers skip those."""
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix):]
        if rest == _LEADER:
            return ParsedKey(LeaderRecord, ())
        kind, _, tail = rest.partition("/")
        parts = tuple(tail.split("/")) if tail else ()
        if not parts or not all(_SEGMENT.fullmatch(p) for p in parts):
            return None
        if kind == "services" and len(parts) == 1:
            return ParsedKey(model.Service, parts)
        if kind == "replicas" and len(parts) == 2:
            return ParsedKey(model.Replica, parts)
        if kind == "hosts" and len(parts) == 1:
            return ParsedKey(model.HostRecord, parts)
        if kind == "host-status" and len(parts) == 1:
            return ParsedKey(model.HostStatus, parts)
        if kind == "autoscale" and len(parts) == 1:
            return ParsedKey(model.AutoscaleStatus, parts)
        if kind == "hostgroups" and len(parts) == 1:
            return ParsedKey(model.HostGroup, parts)
        if kind == "hostgroup-status" and len(parts) == 1:
            return ParsedKey(model.HostGroupStatus, parts)
        return None


__all__ = ["DEFAULT_PREFIX", "AnyRange", "InvalidKey", "KeyRange", "KeyRef", "KeySchema", "ParsedKey",
           "check_segment", "range_end"]
