"""``python -m bench.sim``: one simulator process holding ``--hosts`` simulated hosts.

Hosts are named ``{prefix}-{index:05d}`` for index ``--first`` … ``--first + --hosts - 1``; host *i*
serves on 127.0.0.1:(``--base-port`` + *i*) and is labelled ``zone=`` the (*i* mod zones)-th of
``--zones``. Hosts start registering ``--join-rate`` a second (all at once by default); once every
server listens and every host has registered (or ``--register-timeout`` ran out), one JSON line goes to
stdout: ``{"ready": …, "hosts": …, "registered": …, "start_seconds": …, "rss_bytes": …}``. Then each
line on stdin is a command (``bench.sim.fleet.Fleet.command``) answered by one JSON line. End of stdin,
SIGTERM or SIGINT stops every server and exits: a parent that dies takes its simulators with it.
``--gc`` sets the process's garbage collector (``bench.sim.collector``), timed either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from bench.sim import collector
from bench.sim.fleet import Fleet, rss_bytes
from bench.sim.host import HostSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--scheduler", required=True, help="HOST:PORT[,HOST:PORT…] of the scheduler API "
                                                           "(plain TCP: shoal-scheduler --insecure-tcp)")
    parser.add_argument("--hosts", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--base-port", type=int, default=10000)
    parser.add_argument("--zones", default="a,b,c")
    parser.add_argument("--cpu-millis", type=int, default=32_000)
    parser.add_argument("--memory-gib", type=int, default=128)
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds from created to running")
    parser.add_argument("--usage-interval", type=float, default=1.0)
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--register-timeout", type=float, default=120.0)
    parser.add_argument("--join-rate", type=float, default=0.0,
                        help="hosts a second that start registering (in ten waves a second); 0: all at once")
    parser.add_argument("--gc", choices=collector.MODES, default="tuned",
                        help="the process's garbage collector: the scheduler's thresholds (tuned) or "
                             "CPython's (cpython, as before part 32); timed either way")
    return parser


def specs_of(args: argparse.Namespace) -> list[HostSpec]:
    zones = [z for z in args.zones.split(",") if z]
    if args.hosts < 1 or not zones:
        raise SystemExit("bench.sim: --hosts must be at least 1 and --zones non-empty")
    if args.base_port + args.first + args.hosts > 65535:
        raise SystemExit("bench.sim: --base-port + --first + --hosts goes past port 65535")
    return [HostSpec(name=f"{args.prefix}-{i:05d}", port=args.base_port + i,
                     labels={"zone": zones[i % len(zones)], "sim": "true"}, cpu_millis=args.cpu_millis,
                     memory_bytes=args.memory_gib << 30, start_delay=args.start_delay,
                     usage_interval=args.usage_interval, page_size=args.page_size)
            for i in range(args.first, args.first + args.hosts)]


async def run(args: argparse.Namespace) -> None:
    if args.join_rate < 0:
        raise SystemExit("bench.sim: --join-rate cannot be negative")
    collector.setup(args.gc)
    fleet = Fleet(specs_of(args), schedulers=tuple(args.scheduler.split(",")), join_rate=args.join_rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        took = await fleet.start()
        registered = await fleet.wait_registered(args.register_timeout)
        print(json.dumps({"ready": registered == len(fleet.hosts), "hosts": len(fleet.hosts),
                          "registered": registered, "start_seconds": round(took, 3),
                          "rss_bytes": rss_bytes()}), flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        while True:
            reading = asyncio.ensure_future(reader.readline())
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                reading.cancel()
                break
            line = reading.result()
            if not line:
                break  # the parent closed stdin (or died)
            print(json.dumps(await fleet.command(line.decode())), flush=True)
    finally:
        await fleet.close()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
