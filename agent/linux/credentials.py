"""Becoming the container user: supplementary groups, gid, uid and capability sets, in Docker's order.

Docker's rules (moby ``oci.SetCapabilities`` after CVE-2022-24769): the bounding set is the container's
capability list for everyone; uid 0 also gets it as effective and permitted; any other uid gets empty
effective and permitted sets (as ``execve`` of a non-setuid binary would give it); inheritable and
ambient are always empty. Because non-root users are meant to end up with nothing, no
``PR_SET_KEEPCAPS`` dance is needed: the kernel's clearing of caps on ``setuid`` is exactly what we want.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from agent.linux import capabilities, syscalls


def become(*, uid: int, gid: int, additional_gids: Sequence[int], keep: int, last_cap: int) -> None:
    """Switch the calling (root, fully privileged) process to ``uid``/``gid`` with capability mask
    ``keep``. Must run before ``PR_SET_NO_NEW_PRIVS`` and ``execve``."""
    # Bounding first: dropping needs CAP_SETPCAP, which the final sets may not contain.
    capabilities.drop_bounding_except(keep, last=last_cap)
    capabilities.clear_ambient()
    with syscalls.described(f"setgroups {list(additional_gids)}"):
        os.setgroups(list(additional_gids))
    with syscalls.described(f"setgid {gid}"):
        os.setgid(gid)
    with syscalls.described(f"setuid {uid}"):
        os.setuid(uid)
    if uid == 0:
        # Permitted may only shrink: intersect with what we hold (e.g. a host without SYS_RESOURCE).
        held = capabilities.get().permitted & keep
        capabilities.set_sets(capabilities.CapSets(effective=held, permitted=held, inheritable=0))
    else:
        capabilities.set_sets(capabilities.CapSets(effective=0, permitted=0, inheritable=0))
