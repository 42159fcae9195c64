"""What a standby's follower pays for each change it follows (docs/scaling.md, part 32).

Every scheduler instance follows etcd (``scheduler.follower``); a standby decodes every change the leader
writes, where the leader skips its own echoes. This writes the records a placing pass and the hosts'
reports make of N replicas — each put pending, then placed on a host with its decision, then running with
a second decision, 128 puts to a transaction — into a private single-member etcd on loopback
(``tests/fixtures/etcd``, fsync on), while a follower in a process of its own, of the checkout measured,
follows them from the start: its process's cpu per change, from the first write until it has applied the
last, and the wall time. The writes come from this process, so only the follower is measured.

``--baseline DIR`` runs the follower of another checkout (e.g. a worktree of an older commit) beside
this one's, interleaved round by round, each round in fresh processes and a fresh key prefix.

``python bench/follow_cost.py [--replicas 20000] [--rounds 3] [--baseline DIR] [--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rounds import add_checkouts, checkouts, checkouts_against_etcd, write  # noqa: E402

STAGES = 3  # puts per replica: pending, placed, running


async def follow(endpoints: str, prefix: str) -> dict[str, float]:
    """The child: follows ``prefix``, says "ready" once synced, and measures until it has applied the
    revision the parent then sends on stdin."""
    from scheduler.follower import Follower
    from scheduler.store.etcd import EtcdSettings, EtcdStore

    store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix))
    follower = Follower(store)
    running = asyncio.create_task(follower.run())
    try:
        if not await follower.wait_synced(30):
            raise SystemExit("follow_cost: the follower did not sync")
        print("ready", flush=True)
        cpu, changes = time.process_time(), follower.version
        line = await asyncio.to_thread(sys.stdin.readline)
        target, started = int(line), time.monotonic()
        for _ in range(1200):  # bounded: at most 120 s
            state = follower.state
            if state is not None and state.revision >= target:
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("follow_cost: the follower did not reach the last write in 120 s")
        cpu = time.process_time() - cpu
        applied = follower.version - changes
        return {"changes": applied, "cpu_s": round(cpu, 3),
                "cpu_us_per_change": round(cpu / applied * 1e6, 1),
                "caught_up_after_last_write_s": round(time.monotonic() - started, 3)}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await store.close()


async def write_all(endpoints: str, prefix: str, replicas: int) -> int:
    """The parent's writes: every replica in its three stages; the last revision."""
    from scheduler import model
    from scheduler.store.base import Put
    from scheduler.store.etcd import EtcdSettings, EtcdStore

    phases = (model.ReplicaPhase.PENDING, model.ReplicaPhase.STARTING, model.ReplicaPhase.RUNNING)
    reasons = ("waiting for a host", "created", "running")
    store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix))
    try:
        now = time.time()
        placed = model.Decision(time=now, action="placed", reason="on a host with room (score 87.5 of 100)")
        started = model.Decision(time=now + 1, action="running", reason="its container started")
        revision = 0
        at: dict[str, int] = {}  # each replica's revision: every put is guarded by it
        for stage in range(STAGES):
            ops = []
            for i in range(replicas):
                service = model.ServiceName(f"svc-{i // 100:04d}")
                rid = model.ReplicaId(f"{service}-{i % 100:05d}")
                ops.append(Put(model.Replica(
                    id=rid, service=service, generation=1,
                    host=model.HostId(f"{i % 5000:032x}") if stage else None, phase=phases[stage],
                    ready=stage == 2, reason=reasons[stage], created_at=now, updated_at=now + stage,
                    ports=(model.HostPort(8080, 32768 + i % 1000),) if stage else (),
                    decisions=((), (placed,), (placed, started))[stage], revision=at.get(rid, 0))))
            committed = await store.commit(ops)
            at = {r.id: r.revision for r in committed.written if isinstance(r, model.Replica)}
            revision = max(revision, committed.revision)
        return revision
    finally:
        await store.close()


def one_round(checkout: str, endpoints: str, replicas: int) -> dict[str, Any]:
    prefix = f"/follow-cost-{secrets.token_hex(4)}/shoal/v1/"
    with subprocess.Popen([sys.executable, __file__, "--checkout", checkout, "--endpoints", endpoints,
                           "--prefix", prefix], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("follow_cost: the follower did not start")
        last = asyncio.run(write_all(endpoints, prefix, replicas))
        child.stdin.write(f"{last}\n")
        child.stdin.close()
        out = child.stdout.read()
        if child.wait(150) != 0:
            raise SystemExit(f"follow_cost: the follower failed ({child.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    add_checkouts(parser)
    parser.add_argument("--out", default=str(ROOT / "bench/results/follow-cost.json"))
    parser.add_argument("--endpoints", default="", help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)  # a child's
    args = parser.parse_args()
    if args.checkout:
        sys.path.insert(0, args.checkout)
        print(json.dumps(asyncio.run(follow(args.endpoints, args.prefix))))
        return
    if args.replicas < 1 or args.rounds < 1:
        raise SystemExit("follow_cost: --replicas and --rounds at least 1")
    named = checkouts(ROOT, args.baseline)
    runs, summary = checkouts_against_etcd(
        named, args.rounds, "follow-cost-",
        lambda checkout, endpoints: one_round(checkout, endpoints, args.replicas))
    print(f"{args.replicas} replicas, {STAGES} puts each, followed (median of {args.rounds}):")
    print(f"{'scheduler':<10} {'changes':>8} {'cpu s':>7} {'cpu µs/change':>14} {'caught up s':>12}")
    for name, s in summary.items():
        print(f"{name:<10} {s['changes']:>8.0f} {s['cpu_s']:>7.2f} {s['cpu_us_per_change']:>14.1f} "
              f"{s['caught_up_after_last_write_s']:>12.2f}")
    write(args.out, {"replicas": args.replicas, "stages": STAGES, "checkouts": named, "runs": runs,
                     "median": summary})


if __name__ == "__main__":
    main()
