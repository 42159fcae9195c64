"""What a session worker's message to the leader costs to pickle and unpickle (docs/scaling.md, part 25).

A session worker tells the leader of its changed hosts in batches (``scheduler.session_wire.States``),
each host's state with the containers that changed; while a pass's launches land, that is a state or
two per host per pass, each with a few containers. This builds a ``States`` of H hosts with C changed
containers each, as a worker sends while placing, and times ``pickle.dumps`` (the worker's side) and
``pickle.loads`` (the leader's), in cpu µs per host state, best of ``--rounds`` of ``--repeat`` each.

``--baseline DIR`` measures the same messages with the scheduler of another checkout beside this one's,
each in a process of its own.

``python bench/wire_cost.py [--hosts 200] [--containers 2] [--rounds 5] [--baseline DIR] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rounds import add_checkouts, checkouts, write  # noqa: E402

REPEAT = 200


def one(hosts: int, containers: int, rounds: int) -> dict[str, float]:
    """In a child whose ``sys.path`` starts with the checkout measured."""
    from scheduler import session_wire as wire
    from scheduler.model import HostId, ReplicaId, ServiceName
    from scheduler.observed import ContainerState, ObservedContainer

    def changed(h: int, i: int) -> ObservedContainer:
        return ObservedContainer(id=f"{h:08x}{i:056x}", service=ServiceName(f"svc-{i:04d}"),
                                 replica=ReplicaId(f"svc-{i:04d}-{h:05d}"), generation=1,
                                 state=ContainerState.RUNNING)

    states = tuple(
        wire.HostState(host=HostId(f"{h:032x}"), observation=None,
                       containers=tuple((c.id, c) for c in (changed(h, i) for i in range(containers))),
                       info=None, error="", agent_down=False, silent=False, last_seen=time.time())
        for h in range(hosts))
    message = wire.States(states, sent=time.time())
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if pickle.loads(data) != message:
        raise SystemExit("wire_cost: a message does not round-trip")
    best: dict[str, float] = {}
    for name, work in (("dumps", lambda: pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)),
                       ("loads", lambda: pickle.loads(data))):
        times = []
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(REPEAT):
                work()
            times.append((time.process_time() - started) / REPEAT / hosts * 1e6)
        best[f"{name}_us_per_host"] = round(min(times), 2)
    best["bytes_per_host"] = round(len(data) / hosts)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--containers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    add_checkouts(parser)
    parser.add_argument("--out", default=str(ROOT / "bench/results/wire-cost.json"))
    args = parser.parse_args()
    if args.hosts < 1 or args.containers < 0 or args.rounds < 1:
        raise SystemExit("wire_cost: --hosts and --rounds at least 1, --containers at least 0")
    if args.checkout:
        sys.path.insert(0, args.checkout)
        print(json.dumps(one(args.hosts, args.containers, args.rounds)))
        return

    named = checkouts(ROOT, args.baseline)
    got: dict[str, Any] = {}
    for name, checkout in named.items():
        out = subprocess.run([sys.executable, __file__, "--checkout", checkout, "--hosts", str(args.hosts),
                              "--containers", str(args.containers), "--rounds", str(args.rounds)],
                             capture_output=True, text=True, timeout=600, check=True)
        got[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"a States of {args.hosts} host states, {args.containers} changed containers each "
          f"(cpu µs per host state, best of {args.rounds}):")
    print(f"{'scheduler':<10} {'dumps':>7} {'loads':>7} {'bytes':>6}")
    for name, r in got.items():
        print(f"{name:<10} {r['dumps_us_per_host']:>7.2f} {r['loads_us_per_host']:>7.2f} "
              f"{r['bytes_per_host']:>6}")
    write(args.out, {"hosts": args.hosts, "containers": args.containers, "checkouts": named,
                     "best": got})


if __name__ == "__main__":
    main()
