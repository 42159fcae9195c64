"""The demo's host provider: machines for ``tests.fixtures.elastic_provider.ProviderWebhook``.

When the elastic-hosts webhook asks for hosts, the provider calls ``DemoMachines.start(labels=...)``: a new
namespace on the demo's switch, an agent certificate for its address signed by the cluster's CA, the demo
image imported by the agent started alone (a prepared machine image: the scheduler never sees the host
without it), then the agent started again, joined, with the labels the request carries. A ``scale_in``
stops the machine: its containers removed, its agent stopped, its namespace deleted.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scripts.demo.cluster import IMAGE, AgentHost, DemoCluster, stop_agent_host, wait_for_value


@dataclass
class DemoMachine:
    host: AgentHost
    cluster: DemoCluster
    lock: threading.Lock
    stopped: bool = False

    @property
    def address(self) -> str:
        return self.host.address

    def stop(self) -> list[str]:
        if self.stopped:
            return []
        self.stopped = True
        problems = stop_agent_host(self.host, self.cluster.netns_pids)
        with self.lock:
            self.cluster.world.remove_host(self.host.net)
        return problems


@dataclass
class DemoMachines:
    cluster: DemoCluster
    image_layout: Path
    made: list[DemoMachine] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, *, labels: Mapping[str, str]) -> DemoMachine:
        wanted = dict(labels)
        with self._lock:
            net = self.cluster.world.add_host()
            index = len(self.cluster.hosts) + len(self.made)
        tls = self.cluster.issue_agent_tls(net, self.cluster.work / f"tls-{net.name}")
        host = self.cluster.agent_host(index, net, labels=wanted, tls=tls)
        machine = DemoMachine(host=host, cluster=self.cluster, lock=self._lock)
        with self._lock:
            self.made.append(machine)
        alone = dataclasses.replace(host, daemon=dataclasses.replace(
            host.daemon, argv=_without_join(host.daemon.argv), process=None))
        try:
            alone.daemon.start()
            try:
                _wait_answering(alone)
                alone.cli("image", "import", str(self.image_layout), "--name", IMAGE, "-q")
            finally:
                alone.daemon.stop(grace=15)
            host.daemon.start()
        except BaseException:
            machine.stop()
            raise
        return machine

    def live(self) -> list[AgentHost]:
        return [m.host for m in self.made if not m.stopped]

    def close(self) -> list[str]:
        problems: list[str] = []
        for machine in self.made:
            problems += machine.stop()
        return problems


def _without_join(argv: list[str]) -> list[str]:
    """The agent's flags without ``--join`` and ``--advertise`` (which only matters with it)."""
    for flag in ("--join", "--advertise"):
        at = argv.index(flag)
        argv = argv[:at] + argv[at + 2:]
    return argv


def _wait_answering(host: AgentHost) -> None:
    def answers() -> bool:
        host.cli("ps")
        return True

    wait_for_value(f"{host.name}'s agent answering", answers, timeout=30, interval=0.05)


__all__ = ["DemoMachine", "DemoMachines"]
