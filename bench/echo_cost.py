"""What a leader's watch pays for the echoes of its own pipelined commits (docs/scaling.md, part 25).

A placing pass commits its writes several transactions at a time (``--etcd-txns-in-flight``, 4), and the
leader's follower watches everything, its own writes included. A put this store committed need not be
decoded again (``scheduler.store.echoes``), but the watch can deliver a transaction's puts before the
commit replies, which a commit of many transactions does only once the last has landed. This commits N
replica records through ``EtcdStore.commit`` while a watch of the same store follows them, as the
leader's follower does, against a private single-member etcd on loopback (``tests/fixtures/etcd``,
fsync on), and reports per round: transactions, echoes heard, how many were the very record the commit
wrote (shared) and how many were decoded from their bytes, and the process's cpu per put, from the
commit's start until the watch has heard every put (the commit's encoding and its gRPC included).

``--behind`` (docs/scaling.md, part 35): each replica is put twice, placed and then running, as a
placing pass and the recording of its starts do, and the watch reads only once both commits have landed,
as a leader's watch running seconds behind on a loaded machine does.

``--baseline DIR`` runs the same in the scheduler of another checkout (e.g. a worktree of an older
commit) beside this one's, interleaved round by round, each round in a fresh process.

``python bench/echo_cost.py [--replicas 20000] [--in-flight 4] [--behind] [--rounds 3] [--baseline DIR]
[--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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


async def one_round(endpoints: str, replicas: int, in_flight: int, behind: bool = False) -> dict[str, float]:
    """In a child whose ``sys.path`` starts with the checkout measured."""
    import contextlib

    from scheduler import model
    from scheduler.store import raw
    from scheduler.store.base import Put
    from scheduler.store.etcd import EtcdSettings, EtcdStore

    decoded = 0
    decode_any = raw.decode_any

    def counted(record_type: Any, kv: Any) -> Any:
        nonlocal decoded
        decoded += 1
        return decode_any(record_type, kv)

    raw.decode_any = counted  # counted, then done as before
    prefix = f"/echo-cost-{secrets.token_hex(4)}/shoal/v1/"
    store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix))
    try:
        now = time.time()
        # A replica as a placing pass writes it: created on its host, with the decision that placed it.
        placed = model.Decision(time=now, action="placed", reason="on a host with room (score 87.5 of 100)")
        ops = [Put(model.Replica(id=model.ReplicaId(f"svc-{i // 100:04d}-{i % 100:05d}"),
                                 service=model.ServiceName(f"svc-{i // 100:04d}"), generation=1,
                                 host=model.HostId(f"{i % 5000:032x}"), phase=model.ReplicaPhase.STARTING,
                                 reason="created", created_at=now, updated_at=now, decisions=(placed,)))
               for i in range(replicas)]
        running = model.Decision(time=now, action="running", reason="its container runs")
        puts = len(ops) * (2 if behind else 1)
        heard: list[Any] = []
        changes = store.watch(await store.current_revision())
        async with contextlib.aclosing(changes):
            async def follow() -> None:
                async for change in changes:
                    heard.append(change.value)
                    if len(heard) == puts:
                        return

            cpu, wall = time.process_time(), time.monotonic()
            following = None if behind else asyncio.create_task(follow())
            committed = [await store.commit(ops, in_flight=in_flight)]
            if behind:  # (each from the revision it was placed at)
                again = [Put(dataclasses.replace(r, phase=model.ReplicaPhase.RUNNING,
                                                 decisions=(placed, running))) for r in committed[0].written]
                committed.append(await store.commit(again, in_flight=in_flight))
            await asyncio.wait_for(following or follow(), 120)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        written = {id(record) for c in committed for record in c.written}
        return {"txns": sum(len(c.revisions) for c in committed), "echoes": len(heard),
                "shared": sum(id(value) in written for value in heard), "decoded": decoded,
                "cpu_us_per_put": round(cpu / puts * 1e6, 1), "wall_s": round(wall, 3)}
    finally:
        await store.close()
        raw.decode_any = decode_any


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.checkout)
    print(json.dumps(asyncio.run(one_round(args.endpoints, args.replicas, args.in_flight, args.behind))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--behind", action="store_true",
                        help="each replica put twice (placed, running), the watch read once both landed")
    add_checkouts(parser)
    parser.add_argument("--out", default=str(ROOT / "bench/results/echo-cost.json"))
    parser.add_argument("--endpoints", default="", help=argparse.SUPPRESS)  # a child's
    args = parser.parse_args()
    if args.checkout:
        child(args)
        return
    if args.replicas < 1 or args.rounds < 1 or args.in_flight < 1:
        raise SystemExit("echo_cost: --replicas, --rounds and --in-flight at least 1")
    def one(checkout: str, endpoints: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, __file__, "--checkout", checkout, "--endpoints", endpoints,
                              "--replicas", str(args.replicas), "--in-flight", str(args.in_flight),
                              *(["--behind"] if args.behind else [])],
                             capture_output=True, text=True, timeout=300, check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    named = checkouts(ROOT, args.baseline)
    runs, summary = checkouts_against_etcd(named, args.rounds, "echo-cost-", one)
    print(f"{args.replicas} replicas{' put twice, the watch behind' if args.behind else ''}, "
          f"{args.in_flight} transactions in flight (median of {args.rounds}):")
    print(f"{'scheduler':<10} {'txns':>6} {'shared':>8} {'decoded':>8} {'cpu µs/put':>11} {'wall s':>8}")
    for name, s in summary.items():
        print(f"{name:<10} {s['txns']:>6.0f} {s['shared']:>8.0f} {s['decoded']:>8.0f} "
              f"{s['cpu_us_per_put']:>11.1f} {s['wall_s']:>8.2f}")
    write(args.out, {"replicas": args.replicas, "in_flight": args.in_flight, "behind": args.behind,
                     "checkouts": named,
                     "runs": runs, "median": summary})


if __name__ == "__main__":
    main()
