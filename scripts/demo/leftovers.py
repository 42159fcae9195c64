"""Is the machine as the demo found it? What the demo could leave, looked for by name and path.

``Snapshot.take(work, prefix)`` records the network namespaces and cgroups named with the demo's prefix,
the mounts under its work directory, the processes whose command line names the work directory, and the
machine's own network namespace (links, addresses, routes, rules, nftables, forwarding:
``tests.fixtures.netns.root_netns_snapshot``); ``differences(before, after)`` says what changed.
"""

from __future__ import annotations

import contextlib
import difflib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.netns import root_netns_snapshot


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    cgroups: frozenset[str]
    mounts: frozenset[str]
    processes: frozenset[str]
    root_netns: str

    @classmethod
    def take(cls, work: Path, prefix: str) -> Snapshot:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        netns = {line.split()[0] for line in listed.splitlines() if line.startswith(prefix)}
        cgroups = {str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{prefix}*")}
        mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(work))}
        processes = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if str(work) in cmdline:
                    processes.add(f"{proc.name}: {cmdline[:160]}")
        return cls(frozenset(netns), frozenset(cgroups), frozenset(mounts), frozenset(processes),
                   root_netns_snapshot())


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    found = []
    for kind in ("netns", "cgroups", "mounts", "processes"):
        added = sorted(getattr(after, kind) - getattr(before, kind))
        found += [f"{kind}: {item}" for item in added]
    if after.root_netns != before.root_netns:
        diff = difflib.unified_diff(before.root_netns.splitlines(), after.root_netns.splitlines(),
                                    lineterm="", n=0)
        found.append("the machine's own network namespace changed:\n" + "\n".join(diff))
    return found


__all__ = ["Snapshot", "differences"]
