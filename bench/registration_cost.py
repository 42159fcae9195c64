"""What answering agents' registrations costs a scheduler instance (docs/scaling.md, part 24).

N simulated hosts (their ``HostInfo`` as ``bench/sim`` reports it) register through the real API:
``scheduler.server``'s ``RegisterHost`` over a ``MemoryStore``, called over gRPC on loopback from the
same process. Then they register again with only their use changed, as a fleet's periodic refresh does
(at 5,000 hosts, 83 a second: ``RegistrationService``), which the instance answers without writing.
Reported per registration, best of ``--rounds``: the process's cpu (both ends of the call: compare
runs of this benchmark with each other, not with a server's cpu alone), for the first registrations
(each one written) and for the refreshes; and each round's writes (a refresh writes nothing).

``python bench/registration_cost.py [--hosts 1000] [--rounds 3] [--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rounds import write  # noqa: E402


async def one_round(hosts: int) -> dict[str, float]:
    import grpc

    from bench.sim.host import HostSpec, SimHost
    from proto.scheduler.v1 import scheduler_pb2 as pb
    from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
    from scheduler import server
    from scheduler.placement import registry
    from scheduler.store.memory import MemoryStore

    infos = [SimHost(HostSpec(name=f"reg-{i:05d}", port=20000 + i, labels={"zone": f"z{i % 3}"})).info()
             for i in range(hosts)]
    store = MemoryStore()
    grpc_server = grpc.aio.server()
    server.add_services(grpc_server, store=store, profile=registry.default_profile())
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    out: dict[str, float] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RegistrationStub(channel)
            for phase, used in (("first", 0), ("refresh", 1 << 20)):
                revision, started = await store.current_revision(), time.process_time()
                for i, info in enumerate(infos):
                    info.memory_committed_bytes += used  # use changes: nothing a decision reads
                    address = f"10.0.{i // 250}.{i % 250}:7070"
                    await stub.RegisterHost(pb.RegisterHostRequest(info=info, address=address))
                out[f"{phase}_us"] = round((time.process_time() - started) / hosts * 1e6)
                out[f"{phase}_writes"] = await store.current_revision() - revision
    finally:
        await grpc_server.stop(None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench/results/registration-cost.json"))
    args = parser.parse_args()
    if args.hosts < 1 or args.rounds < 1:
        raise SystemExit("registration_cost: --hosts and --rounds at least 1")
    rounds = [asyncio.run(one_round(args.hosts)) for _ in range(args.rounds)]
    best = {key: min(r[key] for r in rounds) for key in rounds[0] if key.endswith("_us")}
    print(f"{args.hosts} hosts: first registration {best['first_us']} µs, "
          f"refresh with nothing changed {best['refresh_us']} µs of cpu each (best of {args.rounds})")
    write(args.out, {"hosts": args.hosts, "rounds": rounds, "best": best})


if __name__ == "__main__":
    main()
