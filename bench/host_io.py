"""Host-side reads the agent does per request, before and after they stopped depending on history size.

* ``attachment``: ``NetworkManager.attachment(id)``, called once per container by every
  ``ListContainers``/``GetContainer``. Before: a replay of the address and port journals under their
  flocks per call; after: a lookup in the in-memory view. Measured with N containers attached (journals
  written through the real ``Ipam``/``PortTable``, with one earlier container allocated and released per
  container so the logs hold some history); ``per List`` = the N calls one ``ListContainers`` makes,
  ``per call`` = that / N.
* ``logs --tail 10``: ``read_entries(tail=10)`` of a 100k-line (≈ 11 MB) log, time and bytes read
  (``rchar`` of ``/proc/self/io``).
* ``logs -f --tail 10``: time to the first entry of ``follow_entries(tail=10)``, and the longest the
  event loop went without running a 1 ms ticker task meanwhile (``loop stall``).

"Before" is the same function from the tree at ``--before`` (default: the merge base with ``main``),
loaded from git next to the current one, so both run in one process on the same files, interleaved.
Needs no root. ``python bench/host_io.py [--n 200] [--containers 10,100,250]``; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.network import manager as net_manager  # noqa: E402
from agent.network import ports  # noqa: E402
from agent.runtime import logs  # noqa: E402

SUBNET = ipaddress.IPv4Network("10.88.0.0/16")


def load_before(rev: str, path: str, name: str) -> types.ModuleType:
    """``path`` as it was at ``rev``, as a module of its own (its imports resolve to the current tree)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def p50_us(values: list[float]) -> float:
    return round(statistics.median(values) * 1e6, 2)


def bench_attachment(before_mod: types.ModuleType, root: Path, containers: int, n: int) -> dict[str, Any]:
    host = net_manager.HostNetwork(bridge="shoal0", bridge_index=7,
                                   gateway=ipaddress.IPv4Interface("10.88.0.1/16"), mtu=1500)
    after = net_manager.NetworkManager(root, subnet=SUBNET)
    ids = [f"{i:08x}" * 8 for i in range(containers)]
    for i, cid in enumerate(ids):
        churn = f"{i + 1 << 20:08x}" * 8  # an earlier container that came and went
        after.ipam.allocate(churn)
        after.ipam.release(churn)
        after.ports.reserve(cid, (ports.parse_port_spec(f"{20000 + i}:80"),))
        after.ipam.allocate(cid)
    after._host = host
    after._load_view()
    before = before_mod.NetworkManager(root, subnet=SUBNET)
    before._host = host
    assert vars(before.attachment(ids[-1])) == vars(after.attachment(ids[-1]))  # two Attachment classes
    rounds: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(max(5, n // 20)):  # interleaved, so machine noise hits both alike
        rounds["before"] += timed(lambda: [before.attachment(c) for c in ids], 1)
        rounds["after"] += timed(lambda: [after.attachment(c) for c in ids], 1)
    return {
        label: {"per_list_p50_ms": round(statistics.median(v) * 1e3, 3),
                "per_call_us": round(statistics.median(v) / containers * 1e6, 2)}
        for label, v in rounds.items()
    }


def bench_tail(before_mod: types.ModuleType, directory: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, mod in (("before", before_mod), ("after", logs)):
        start = rchar()
        got = list(mod.read_entries(directory, tail=10))
        read = rchar() - start
        assert len(got) == 10
        times = timed(lambda mod=mod: list(mod.read_entries(directory, tail=10)), n)
        out[label] = {"p50_ms": round(statistics.median(times) * 1e3, 3), "bytes_read": read}
    return out


async def follow_once(mod: types.ModuleType, directory: Path) -> tuple[float, float]:
    """Seconds to the first entry of ``logs -f --tail 10``, and the longest loop stall meanwhile."""
    stall = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last - 0.001)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    stall = 0.0
    t = time.perf_counter()
    first = None
    async for _ in mod.follow_entries(directory, is_finished=lambda: True, tail=10):
        if first is None:
            first = time.perf_counter() - t
    stop = True
    await task
    assert first is not None
    return first, stall


def bench_follow(before_mod: types.ModuleType, directory: Path, n: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {"before": {"first": [], "stall": []},
                                                  "after": {"first": [], "stall": []}}
    for _ in range(n):
        for label, mod in (("before", before_mod), ("after", logs)):
            first, stall = asyncio.run(follow_once(mod, directory))
            results[label]["first"].append(first)
            results[label]["stall"].append(stall)
    return {label: {"first_entry_p50_ms": round(statistics.median(r["first"]) * 1e3, 2),
                    "loop_stall_p50_ms": round(statistics.median(r["stall"]) * 1e3, 2),
                    "loop_stall_max_ms": round(max(r["stall"]) * 1e3, 2)}
            for label, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--containers", default="10,100,250")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--before", default="")
    args = parser.parse_args()
    rev = args.before or subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], check=True,
                                        capture_output=True, text=True).stdout.strip()
    before_net = load_before(rev, "agent/network/manager.py", "before_network_manager")
    before_logs = load_before(rev, "agent/runtime/logs.py", "before_logs")
    result: dict[str, Any] = {"before_rev": rev, "n": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(c) for c in args.containers.split(",")):
            result[f"attachment, {count} containers"] = bench_attachment(
                before_net, Path(tmp, f"net{count}"), count, args.n)
        directory = Path(tmp, "log")
        directory.mkdir()
        stamp = logs.format_timestamp(time.time_ns())
        with open(directory / "ctr.log", "wb") as f:
            for i in range(args.lines):
                f.write(stamp + b" stdout F line %06d of a container that logs a fair amount\n" % i)
        result["log_bytes"] = (directory / "ctr.log").stat().st_size
        result["logs --tail 10"] = bench_tail(before_logs, directory, max(5, args.n // 10))
        result["logs -f --tail 10"] = bench_follow(before_logs, directory, max(5, args.n // 20))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
