"""The smallest resource limits Shoal accepts, in one place every layer reads.

The CLI's parser, the API's validation at create and the cgroup ``Limits`` value all refuse the same
values with these bounds, so a container that could never start (a 1-byte memory limit) is refused when it
is asked for, not when it first runs. Imports nothing of Shoal's: the lowest layer.
"""

from __future__ import annotations

# Below this a container cannot even exec its first process (busybox needs ~2-4 MiB, plus page cache
# charged to the group); the kernel would accept much less.
MIN_MEMORY_BYTES = 6 << 20
# A writable layer smaller than this is a typo (``--storage-size 1`` meaning 1G): even a shell's history
# file or a package index would not fit, and the measured enforcement would evict at the first sample.
MIN_STORAGE_BYTES = 1 << 20
# 10 millicores = a 1 ms CFS quota per 100 ms period, the kernel's minimum quota.
MIN_CPU_MILLIS = 10

# Upper bounds: past these a value is a typo or an attack, and the kernel or the API would fail on it
# later (a 2^62 cpu limit overflows the CFS quota; sums of limits must fit HostInfo's int64 fields).
MAX_MEMORY_BYTES = 1 << 50   # 1 PiB
MAX_STORAGE_BYTES = 1 << 50  # 1 PiB: past any real disk, and quota block counts still fit 64 bits
MAX_CPU_MILLIS = 1_000_000   # 1000 cores
MAX_PIDS = 4_194_304         # PID_MAX_LIMIT on 64-bit: pids.max refuses more
# uid and gid travel as int32 in the API (Container.uid/gid); the kernel's own limit is 2^32-2.
MAX_ID = (1 << 31) - 1

__all__ = ["MAX_CPU_MILLIS", "MAX_ID", "MAX_MEMORY_BYTES", "MAX_PIDS", "MAX_STORAGE_BYTES", "MIN_CPU_MILLIS",
           "MIN_MEMORY_BYTES", "MIN_STORAGE_BYTES"]
