"""The smallest resource limits Shoal accepts, in one place every layer reads.

The CLI's parser, the API's validation at create and the cgroup ``Limits`` value all refuse the same
values with these bounds, so a container that could never start (a 1-byte memory limit) is refused when it
is asked for, not when it first runs. Imports nothing of Shoal's: the lowest layer.
"""

from __future__ import annotations

# Below this a container cannot even exec its first process (busybox needs ~2-4 MiB, plus page cache
# charged to the group); the kernel would accept much less.
MIN_MEMORY_BYTES = 6 << 20
# 10 millicores = a 1 ms CFS quota per 100 ms period, the kernel's minimum quota.
MIN_CPU_MILLIS = 10

__all__ = ["MIN_CPU_MILLIS", "MIN_MEMORY_BYTES"]
