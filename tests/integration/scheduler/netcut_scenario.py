"""Run under ``unshare --net`` by test_bench_netcut.py: a simulated host in a fleet, a session following
it with keepalive pings; ``fail … cut`` (nftables drops its packets) ends the session's stream by an
unanswered ping, and ``recover`` mends the cut and the session follows the host again. Prints one JSON
line."""

from __future__ import annotations

import asyncio
import json
import subprocess

from bench.sim import netcut
from bench.sim.fleet import Fleet
from bench.sim.host import HostSpec
from scheduler.model import HostId
from tests.fixtures.cut_session import LONG_S, pinging_session
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import until


def cut_ports() -> str:
    """The ports in the cut's nftables set, as nft lists them."""
    return subprocess.run(["nft", "list", "set", "inet", netcut.TABLE, netcut.SET],
                          capture_output=True, text=True, check=True).stdout


async def scenario() -> dict[str, object]:
    spec = HostSpec(name="sim-00000", port=free_port(), usage_interval=LONG_S)
    fleet = Fleet([spec], schedulers=(f"127.0.0.1:{free_port()}",), join_rate=100.0)
    await fleet.start()
    session = pinging_session(HostId(spec.host_id), spec.address)
    session.start()
    try:
        await until(lambda: session.observation.connected)
        cut = await fleet.command("fail sim-00000 cut")
        listed = cut_ports()
        await until(lambda: not session.observation.connected)
        error = session.error
        mended = await fleet.command("recover sim-00000")
        await until(lambda: session.observation.connected, bound=60.0)  # its retry backoff included
        after = cut_ports()
        return {"cut": cut, "listed": str(spec.port) in listed, "error": error, "mended": mended,
                "after": str(spec.port) in after}
    finally:
        await session.close()
        await fleet.close()


if __name__ == "__main__":
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    netcut.prepare()
    print(json.dumps(asyncio.run(asyncio.wait_for(scenario(), 120))))
