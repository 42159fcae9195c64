"""Machines for the test provider (``tests.fixtures.elastic_provider``): each a new test host (network
namespace) on the cluster's switch, running a ``shoal-agent`` joined to the schedulers with the labels
the provider was asked for.

A machine is made the way a platform makes one from a prepared machine image: a new namespace
(``NetWorld.add_host``), an agent certificate for its address issued with the cluster's CA (its own TLS
directory: ``ca.pem``, ``agent.pem``, ``agent-key.pem``), the test image imported by an agent started
*before* it joins (so the scheduler never places a replica on a host without the image, which would try
to pull it), then the agent started again on the same root, joined. The agent is the cluster fixture's
(``conftest.agent_process``: its own root, cgroup parent, bridge and subnet). ``stop()`` is what
removing the machine does: containers left (a released host should hold none; any are reported) are
removed, the agent stopped, its supervisor given a bounded time to exit on its own (then killed and
reported), its cgroups and mounts checked, and the namespace deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent import certs
from bench.cluster_daemon import cgroup_dirs, remove_cgroups, unmount_under
from tests.fixtures.netns import NetWorld, TestHost
from tests.integration.agent.conftest import AgentProcess
from tests.integration.cluster.conftest import AGENT_PORT, agent_process

FIRST_INDEX = 10  # agent indexes of provider machines (the cluster's own hosts are 0, 1, 2)
LAST_INDEX = 55   # conftest.agent_process's subnet is 10.{200 + index}.x.0/24
SUPERVISOR_EXIT_TIMEOUT = 15.0


@dataclass
class NetnsMachine:
    host: TestHost
    agent: AgentProcess
    world: NetWorld
    world_lock: threading.Lock
    stopped: bool = False

    @property
    def address(self) -> str:
        """What the agent advertises: a ``scale_in`` request names the host by it."""
        return f"{self.host.address}:{AGENT_PORT}"

    def stop(self) -> list[str]:
        if self.stopped:
            return []
        self.stopped = True
        problems: list[str] = []
        if self.agent.proc is not None:
            left = self.agent.run("ps", "-aq", "--no-trunc", check=False).stdout.split()
            if left:
                problems.append(f"containers still there when the machine was removed: {left}")
                self.agent.run("rm", "-f", *left, check=False)
            self.agent.stop()
        problems += _wait_no_process(self.host)
        problems += _remove_cgroups(self.agent.cgroup_parent)
        problems += [f"mount left: {m}" for m in unmount_under(self.agent.root)]
        with self.world_lock:
            self.world.remove_host(self.host)
        return problems


@dataclass
class NetnsMachines:
    """Makes ``NetnsMachine``s on ``world`` for the schedulers at ``scheduler`` (comma-separated
    ``HOST:PORT``s), under ``base``; ``pki`` holds the cluster's CA (``ca.pem``, ``ca-key.pem``)."""

    world: NetWorld
    base: Path
    pki: Path
    scheduler: str
    tag: str
    image: Path
    image_name: str
    made: list[NetnsMachine] = field(default_factory=list)
    _next: int = FIRST_INDEX
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, *, labels: Mapping[str, str]) -> NetnsMachine:
        with self._lock:
            if self._next > LAST_INDEX:
                raise RuntimeError(f"no more than {LAST_INDEX - FIRST_INDEX + 1} machines per cluster")
            index, self._next = self._next, self._next + 1
            host = self.world.add_host()
        tls = self.base / f"tls{index}"
        tls.mkdir(parents=True)
        shutil.copy(self.pki / "ca.pem", tls / "ca.pem")
        pair = certs.issue(certs.load_ca(self.pki), f"agent-{host.name}", kind="agent",
                           hosts=[str(host.address)])
        certs.write_pair(tls, "agent", pair)
        agent = agent_process(self.base, host, index, pki=tls, scheduler=self.scheduler, tag=self.tag,
                              labels=labels)
        machine = NetnsMachine(host=host, agent=agent, world=self.world, world_lock=self._lock)
        with self._lock:
            self.made.append(machine)
        join = agent.extra_args.index("--join")
        alone = dataclasses.replace(agent, extra_args=agent.extra_args[:join] + agent.extra_args[join + 2:])
        try:
            alone.start()
            try:
                alone.run("image", "import", str(self.image), "--name", self.image_name, "-q")
            finally:
                alone.stop()
            agent.start()
        except BaseException:
            machine.stop()
            raise
        return machine

    def close(self) -> list[str]:
        """Stop every machine not stopped yet; returns what had to be cleaned up."""
        problems: list[str] = []
        for machine in self.made:
            if not machine.stopped:
                problems += [f"{machine.address}: {p}" for p in machine.stop()]
        return problems


def _netns_pids(host: TestHost) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True,
                         check=False, timeout=10).stdout
    return [int(p) for p in out.split()]


def _wait_no_process(host: TestHost) -> list[str]:
    """The supervisor leaves once no agent is connected and no container lives: wait for the namespace to
    hold no process (bounded), then kill what is left and say so."""
    deadline = time.monotonic() + SUPERVISOR_EXIT_TIMEOUT
    while (pids := _netns_pids(host)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pids:
        return []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"processes left in {host.name} after {SUPERVISOR_EXIT_TIMEOUT:g}s, killed: {pids}"]


def _remove_cgroups(parent: str) -> list[str]:
    """A removed machine's cgroups should be gone already: each one still there is reported, then
    removed (``bench.cluster_daemon.remove_cgroups``)."""
    left = [f"cgroup left: {d}" for top in cgroup_dirs(parent) for d in (top, *top.rglob("*")) if d.is_dir()]
    return left + remove_cgroups(parent)


__all__ = ["NetnsMachine", "NetnsMachines"]
