"""Collecting the cgroups a crash left behind under the agent's cgroup parent.

When the agent and its supervisor die together (OOM killer, ``kill -9`` of both, a crash during an
upgrade) and the host keeps running, the groups of containers that no longer exist stay behind: a
container removed while its ``rm`` was half done, a create that died between making the group and
writing its record, or processes nobody supervises any more. ``collect_leftovers`` is what the runtime
calls once at start, before it serves requests, with the ids of the containers it knows: every other
group directly under the parent is killed and removed, with its own sub-groups, and the names are
returned for a log line. It lists only ``<parent>/*`` through the manager, whose root is the agent's own
(the hierarchy top, or the delegated unit's cgroup), so nothing outside the agent's parent is touched.

Blocking: it reads and writes cgroupfs and waits for each group to empty (``kill_all``, at most
``timeout_s`` per group); call it through ``asyncio.to_thread`` from the event loop.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from agent.cgroups import manager
from agent.cgroups.manager import CgroupManager
from agent.errors import ShoalError

# Per group: a leftover that cannot be emptied in this long is reported, not waited for.
LEFTOVER_KILL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Collected:
    """What ``collect_leftovers`` did: groups removed, and groups it could not remove (name, why)."""

    removed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        """One line for the agent's log."""
        parts = []
        if self.removed:
            parts.append(f"removed {len(self.removed)} leftover cgroups ({', '.join(self.removed)})")
        if self.failed:
            parts.append("could not remove " + "; ".join(f"{name}: {why}" for name, why in self.failed))
        return "; ".join(parts) or "no leftover cgroups"


def collect_leftovers(
    mgr: CgroupManager, parent: str, *, keep_ids: Collection[str],
    timeout_s: float = LEFTOVER_KILL_TIMEOUT_S,
) -> Collected:
    """Kill and remove every group ``<parent>/<id>`` whose ``id`` is not in ``keep_ids``, with its
    sub-groups. A group that cannot be emptied or removed is reported in ``failed`` and the others are
    still collected. Blocking."""
    parent = manager.validate_name(parent)
    keep = set(keep_ids)
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for name in mgr.list_children(parent):
        child = name[len(parent) + 1:]
        if not name.startswith(parent + "/") or "/" in child:
            continue  # never anything but a direct child of the parent
        if child in keep:
            continue
        try:
            if _remove_tree(mgr, name, timeout_s=timeout_s):
                removed.append(name)
        except ShoalError as err:
            failed.append((name, str(err)))
    return Collected(removed=tuple(removed), failed=tuple(failed))


def _remove_tree(mgr: CgroupManager, name: str, *, timeout_s: float) -> bool:
    """Kill ``name``'s processes, remove its sub-groups (deepest first), then the group itself."""
    group = mgr.open(name)
    if group is None:
        return False  # gone meanwhile
    # First the group's own processes (on v2, cgroup.kill takes the whole subtree at once), so nothing
    # in it can fork into a sub-group while those are removed.
    group.kill_all(timeout_s=timeout_s)
    for child in mgr.list_children(name):
        _remove_tree(mgr, child, timeout_s=timeout_s)
    group.remove()
    return True
