"""What cgroup v2 device rules add to creating a container's group: compile, load, verify, attach.

Run as root: ``python -m bench.device_program [--runs N]``. Creates and removes ``N`` groups under a
private parent in the host's cgroup2 mount, alternating between no device rules and Shoal's default rules
(``DEFAULT_DEVICE_RULES``: compiled, loaded through the verifier and attached by ``V2CgroupManager``),
and prints the median and p90 of each, plus the pure compile + assemble step alone. The parent is removed
at the end; a removed group takes its program with it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from pathlib import Path

from agent.cgroups import device_bpf, manager, v2
from agent.cgroups.manager import DEFAULT_DEVICE_RULES, DeviceRule, Limits, RealCgroupFs
from agent.linux import bpf_asm


def _unified_mount() -> str:
    mountinfo = Path("/proc/self/mountinfo").read_text()
    mounts = manager.parse_mountinfo(mountinfo, cgroup_root=Path("/sys/fs/cgroup"))
    points = sorted((m.mountpoint for m in mounts if m.version == 2), key=len)
    if not points:
        raise SystemExit("no cgroup2 hierarchy under /sys/fs/cgroup")
    return points[0]


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1] if len(ordered) >= 10 else ordered[-1]
    return f"median {statistics.median(ordered) * 1e3:.3f} ms, p90 {p90 * 1e3:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (cgroupfs and bpf(2))")
    mgr = v2.V2CgroupManager(fs=RealCgroupFs(), mountpoint=_unified_mount())
    parent = f"shoal-bench-{secrets.token_hex(4)}"
    rule_sets: dict[str, tuple[DeviceRule, ...]] = {
        "no device rules": (), "default device rules": DEFAULT_DEVICE_RULES,
    }
    timings: dict[str, list[float]] = {label: [] for label in rule_sets}
    try:
        for i in range(args.runs):
            for label, rules in rule_sets.items():
                start = time.perf_counter()
                group = mgr.create(f"{parent}/g{i}-{len(rules)}", limits=Limits(), devices=rules)
                timings[label].append(time.perf_counter() - start)
                group.remove()
    finally:
        for name in mgr.list_children(parent):
            group = mgr.open(name)
            if group is not None:
                group.remove()
        mgr.remove_parent_if_empty(parent)
    compile_times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        bpf_asm.assemble(device_bpf.compile_rules(DEFAULT_DEVICE_RULES))
        compile_times.append(time.perf_counter() - start)
    print(f"v2 group create, {args.runs} runs each ({os.cpu_count()} cpus, {os.uname().release}):")
    for label, samples in timings.items():
        print(f"  {label:22} {_ms(samples)}")
    print(f"  {'compile + assemble':22} {_ms(compile_times)}")


if __name__ == "__main__":
    main()
