"""Many simulated hosts in one event loop: their servers, their registrations, and failure commands.

A ``Fleet`` starts one ``grpc.aio`` server per ``SimHost`` on its own loopback port (the scheduler tells
hosts apart by the address each registers), then registers each host through ``agent.join.Joiner`` —
the real agent's registration loop, plain TCP as ``--insecure-tcp`` allows on loopback — with the
``HostInfo`` the host reports — in waves of ``join_rate`` hosts a second when set, so that thousands of
hosts starting together do not all call the scheduler in the same instant (each registration is an
API call and a new agent session for the leader). ``command`` applies one line of the control protocol
``python -m bench.sim`` reads on stdin (``fail NAME[,NAME…] refuse|silent|cut``, ``recover NAME[,NAME…]
[reboot]``, ``stats``, ``containers``); a comma list acts on all its hosts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Sequence

from agent.join import Joiner, JoinSettings
from bench.procstat import rss_bytes
from bench.sim import collector, netcut
from bench.sim.host import HostSpec, SimHost
from proto.agent.v1 import agent_pb2 as pb

FAILURE_MODES = ("silent", "refuse", "cut")


class Fleet:
    def __init__(self, specs: Sequence[HostSpec], *, schedulers: tuple[str, ...],
                 join_rate: float = 0.0) -> None:
        self.hosts = {spec.name: SimHost(spec) for spec in specs}
        self.schedulers = schedulers
        self.join_rate = join_rate  # hosts a second starting to register; 0: all at once
        self.joiners: dict[str, Joiner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> float:
        """Start every host's server, then its registration loop; seconds the servers took."""
        started = time.perf_counter()
        for host in self.hosts.values():
            await host.start()
        took = time.perf_counter() - started
        wave = max(1, round(self.join_rate / 10)) if self.join_rate > 0 else len(self.hosts)
        for i, (name, host) in enumerate(self.hosts.items()):
            if i and i % wave == 0:
                await asyncio.sleep(wave / self.join_rate)  # ten waves a second
            self._join(name, host)
        return took

    def _join(self, name: str, host: SimHost) -> None:
        joiner = Joiner(JoinSettings(schedulers=self.schedulers, advertise=host.spec.address),
                        host_info=host.info)
        self.joiners[name] = joiner
        self._tasks[name] = asyncio.get_running_loop().create_task(joiner.run(), name=f"join-{name}")

    def _unjoin(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def wait_registered(self, timeout: float) -> int:
        """How many hosts registered once all have, or when ``timeout`` runs out."""
        async def one(joiner: Joiner) -> None:
            await joiner.registered.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(one(j) for j in self.joiners.values()))
        return sum(j.registered.is_set() for j in self.joiners.values())

    async def command(self, line: str) -> dict[str, object]:
        words = line.split()
        if not words:
            return {"ok": False, "error": "empty command"}
        verb, args = words[0], words[1:]
        if verb == "stats":
            calls: dict[str, int] = {}
            for host in self.hosts.values():
                for method, n in host.calls.items():
                    calls[method] = calls.get(method, 0) + n
            usage = resource.getrusage(resource.RUSAGE_SELF)
            hosts = self.hosts.values()
            return {"ok": True, "hosts": len(self.hosts), "rss_bytes": rss_bytes(),
                    "cpu_seconds": usage.ru_utime + usage.ru_stime, "calls": calls, **collector.figures(),
                    "usage_late_max_s": round(max((h.usage_late_max for h in hosts), default=0.0), 3),
                    "usage_late_over_1s": sum(h.usage_late_over_1s for h in self.hosts.values()),
                    "event_messages": sum(h.event_messages for h in hosts),
                    "containers": sum(len(h.containers) for h in self.hosts.values()),
                    "running": sum(1 for h in self.hosts.values() for c in h.containers.values()
                                   if c.state == 2)}
        if verb == "containers":
            # Running containers by host id, of the hosts that answer: a silent host's containers are
            # on a dead machine, which nobody can reach (nor count).
            return {"ok": True, "running": {
                h.spec.host_id: [c.id for c in h.containers.values() if c.state == 2]
                for h in self.hosts.values() if not h.silent and h.server is not None},
                "unreachable": sorted(h.spec.name for h in self.hosts.values()
                                      if h.silent or h.server is None)}
        if verb == "started" and len(args) == 1:
            # When each container started at or after the wall time SINCE was created and started, by
            # id: how long a replacement took to run at its host, before the scheduler recorded it.
            try:
                since = float(args[0])
            except ValueError:
                return {"ok": False, "error": f"started: {args[0]!r} is not a wall time in seconds"}
            return {"ok": True, "started": {
                c.id: [c.created_at.ToNanoseconds() / 1e9, started]
                for h in self.hosts.values() for c in h.containers.values()
                if c.state == pb.CONTAINER_STATE_RUNNING
                and (started := c.started_at.ToNanoseconds() / 1e9) >= since}}
        if verb in ("fail", "recover") and args:
            names = [n for n in args[0].split(",") if n]
            unknown = [n for n in names if n not in self.hosts]
            if unknown or not names:
                missing = ", ".join(unknown) or "(none named)"
                return {"ok": False, "error": f"no host {missing} in this process"}
            if verb == "fail":
                mode = args[1] if len(args) > 1 else "silent"
                if mode not in FAILURE_MODES:
                    return {"ok": False,
                            "error": f"unknown failure mode {mode!r}: {' or '.join(FAILURE_MODES)}"}
                if mode == "cut":  # first: a host that cannot be cut is not failed at all
                    try:
                        await asyncio.to_thread(netcut.cut, (self.hosts[n].spec.port for n in names))
                    except netcut.NetCutError as err:
                        return {"ok": False, "error": str(err)}
                for name in names:
                    self._unjoin(name)  # a dead host does not register either
                await asyncio.gather(*(self.hosts[n].fail(mode) for n in names))
            else:
                reboot = "reboot" in args[1:]
                cut = [self.hosts[n].spec.port for n in names if self.hosts[n].cut]
                if cut:
                    try:
                        await asyncio.to_thread(netcut.mend, cut)
                    except netcut.NetCutError as err:
                        return {"ok": False, "error": str(err)}
                await asyncio.gather(*(self.hosts[n].recover(reboot=reboot) for n in names))
                for name in names:
                    self._join(name, self.hosts[name])
            return {"ok": True, "hosts": names}
        return {"ok": False, "error": f"unknown command {line.strip()!r}: fail NAME[,NAME…] "
                                      "refuse|silent|cut, recover NAME[,NAME…] [reboot], stats, containers, "
                                      "started SINCE"}

    async def close(self) -> None:
        for name in list(self._tasks):
            self._unjoin(name)
        await asyncio.gather(*(h.stop() for h in self.hosts.values()), return_exceptions=True)


__all__ = ["Fleet", "rss_bytes"]
