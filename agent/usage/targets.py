"""What the usage sampler is told about each running container (by the runtime, every interval).

A plain value so the sampler never reaches into the runtime: the runtime lists its running
containers as ``SampleTarget``s, the sampler reads the kernel's counters for each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.cgroups.manager import Cgroup


@dataclass(frozen=True)
class SampleTarget:
    id: str
    name: str
    image: str
    labels: dict[str, str] = field(hash=False)
    pid: int                     # host pid of its pid 1; its network namespace is /proc/PID/ns/net
    cgroup: Cgroup = field(hash=False, compare=False)
    upper_dir: Path              # the writable layer
    started_at: float            # unix time
    memory_limit_bytes: int | None
    cpu_limit_millis: int | None
    own_network: bool            # False for --network host: its counters are the host's, not its own
    # The writable-layer limit to enforce by measurement (evict when over); None when unlimited or when
    # a project quota enforces it in the kernel.
    storage_limit_bytes: int | None = None
