"""A host group's members and its shape: what one new host of the group would offer.

A host is a member of group ``G`` when its record carries the label ``group=G``. The shape is the
declared ``HostShape`` (its labels plus ``group=G``, which a provider's new host carries), or else it is
learned from the members: the smallest allocatable cpu and memory among them (a new host is assumed no
bigger than the smallest one there is, so a request never counts on room that may not come) and the
labels every member carries. Members that have not reported any capacity yet are left out of the
learning. A group with neither a declared shape nor a member to learn from has no shape and cannot scale
out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scheduler.model import LABEL_GROUP, GroupName, HostGroupSpec, HostId, HostRecord, HostShape


def is_member(record: HostRecord, group: GroupName) -> bool:
    return record.label_map.get(LABEL_GROUP) == group


def members(group: GroupName, hosts: Mapping[HostId, HostRecord]) -> list[HostRecord]:
    """The group's hosts (label ``group=NAME``), by id."""
    return sorted((r for r in hosts.values() if is_member(r, group)), key=lambda r: r.id)


def shape_of(spec: HostGroupSpec, member_hosts: Iterable[HostRecord]) -> HostShape | None:
    """The declared shape with ``group=NAME`` among its labels, else the one learned from the members,
    else None (the group cannot scale out)."""
    if spec.shape is not None:
        labels = dict(spec.shape.labels)
        labels[LABEL_GROUP] = spec.name
        return HostShape(cpu_millis=spec.shape.cpu_millis, memory_bytes=spec.shape.memory_bytes,
                         labels=tuple(sorted(labels.items())))
    return learned_shape(spec.name, member_hosts)


def learned_shape(group: GroupName, member_hosts: Iterable[HostRecord]) -> HostShape | None:
    """The smallest allocatable cpu and memory among the members that reported some, and the labels
    they all share (``group=NAME`` always among them); None without such a member."""
    reported = [r for r in member_hosts
                if r.capacity.cpu_allocatable_millis > 0 or r.capacity.memory_allocatable_bytes > 0]
    if not reported:
        return None
    shared = set(reported[0].labels)
    for record in reported[1:]:
        shared &= set(record.labels)
    shared.add((LABEL_GROUP, group))
    return HostShape(cpu_millis=min(r.capacity.cpu_allocatable_millis for r in reported),
                     memory_bytes=min(r.capacity.memory_allocatable_bytes for r in reported),
                     labels=tuple(sorted(shared)))


def shape_text(shape: HostShape) -> str:
    """ "2 cpus, 4.0 GiB, labels group=workers,zone=a" """
    cpus = shape.cpu_millis / 1000
    labels = ",".join(f"{k}={v}" for k, v in shape.labels)
    return f"{cpus:g} cpus, {shape.memory_bytes / (1 << 30):.1f} GiB, labels {labels}"


__all__ = ["is_member", "learned_shape", "members", "shape_of", "shape_text"]
