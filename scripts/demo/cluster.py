"""The demo's cluster: namespaces, certificates and every long-running process, and their removal.

Layout, all inside network namespaces made here (``tests.fixtures.netns.NetWorld`` with the prefix
``shoal-demo``; nothing is configured in the machine's own namespace): a *control* host running a
3-member etcd cluster on its loopback, two ``shoal-scheduler serve`` instances (mutual TLS on the control
host's address, a unix socket each for the demo's own calls, ``/metrics`` and ``/http_sd`` on HTTP) and
Prometheus; a *client* host for the load generator; and the agent hosts, each a namespace with its own
UTS namespace (so ``get hosts`` shows ``host-a``, ``host-b``, ...), an agent with its own root, cgroup
parent, bridge and subnet, labelled ``zone=<letter>``, its cpu cut to ``HOST_MILLICORES`` allocatable with
``--cpu-reserve`` (so a handful of replicas fill a host and the elastic step has something to do).

``close()`` never raises: it stops the schedulers first (so nothing recreates what is being removed),
removes every container through its agent, stops the agents and waits for their supervisors, then kills
whatever is left in a namespace or cgroup of the demo, unmounts what is left under the work directory,
and deletes the namespaces; it returns what it had to clean up by force.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from agent import certs
from agent.cli.scheduler_client import Scheduler, connect_scheduler
from agent.cli.top import CALL_TIMEOUT
from bench.cluster_daemon import (
    Daemon,
    cgroup_dirs,
    pid_alive,
    remove_cgroups,
    run_checked,
    unmount_under,
    wait_for,
)
from proto.scheduler.v1 import scheduler_lite as spb
from tests.fixtures.etcd import EtcdCluster
from tests.fixtures.netns import NetWorld, TestHost

BIN = Path(sys.executable).parent
SCHEDULERS = 2
SCHEDULER_PORT = 7400  # instance n (1-based) listens on SCHEDULER_PORT + n - 1
HTTP_PORT = 7410       # its /metrics and /http_sd on HTTP_PORT + n - 1
AGENT_PORT = 7070
AGENT_METRICS_PORT = 9100
PROMETHEUS_PORT = 9090
PROVIDER_PORT = 9600
HOST_MILLICORES = 200  # allocatable cpu of every agent host (the rest is --cpu-reserve)
IMAGE = "demo/web:v1"
ZONES = "abcdefghijklmnopqrstuvwxyz"
PREFIX = "shoal-demo"
T = TypeVar("T")


@dataclass
class AgentHost:
    """One agent host: its namespace, its agent, and where its state lives."""

    index: int
    net: TestHost
    zone: str
    daemon: Daemon
    root: Path
    socket: Path
    cgroup_parent: str

    @property
    def name(self) -> str:
        return f"host-{self.zone}"

    @property
    def address(self) -> str:
        return f"{self.net.address}:{AGENT_PORT}"

    def cli(self, *args: str, check: bool = True) -> str:
        argv = [str(BIN / "shoal"), "--agent", f"unix://{self.socket}", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"shoal {' '.join(args)} on {self.name}: {result.stderr.strip()[-500:]}")
        return result.stdout

    def supervisor_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.root / "supervisor.pid").read_text().split()[0])
        return None


@dataclass
class DemoCluster:
    work: Path
    tag: str
    hosts_wanted: int
    world: NetWorld = field(init=False)
    ctl: TestHost = field(init=False)
    client: TestHost = field(init=False)
    pki: Path = field(init=False)
    etcd: EtcdCluster | None = None
    schedulers: list[Daemon] = field(default_factory=list)
    hosts: list[AgentHost] = field(default_factory=list)
    prometheus: Daemon | None = None
    _api: Scheduler | None = None

    def __post_init__(self) -> None:
        self.world = NetWorld(tag=self.tag, prefix=PREFIX)
        self.pki = self.work / "pki"

    # -- addresses -----------------------------------------------------------------------------------

    def scheduler_socket(self, n: int) -> Path:
        return self.work / f"scheduler{n}.sock"

    @property
    def scheduler_sockets(self) -> str:
        """Every instance's unix socket, as ``--scheduler`` / ``SHOAL_SCHEDULER`` take them (failover)."""
        return ",".join(f"unix://{self.scheduler_socket(n)}" for n in range(1, SCHEDULERS + 1))

    def http_address(self, n: int) -> str:
        return f"{self.ctl.address}:{HTTP_PORT + n - 1}"

    @property
    def provider_url(self) -> str:
        return f"http://{self.ctl.address}:{PROVIDER_PORT}/shoal"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.ctl.address}:{PROMETHEUS_PORT}"

    @property
    def api(self) -> Scheduler:
        """The scheduler's API for the main thread's reads (protolite, failing over between instances)."""
        if self._api is None:
            self._api = self.connect()
        return self._api

    def connect(self) -> Scheduler:
        """A connection of its own (one per thread), failing over between the instances' sockets; a call
        with no answer in ``CALL_TIMEOUT`` moves on to the next instance, as ``shoal top`` does."""
        return connect_scheduler(self.scheduler_sockets, timeout=CALL_TIMEOUT)

    # -- bring-up ------------------------------------------------------------------------------------

    def start(self, progress: Callable[[str, float], None]) -> None:
        """Everything up; ``progress(what, seconds)`` after each part."""
        started = time.monotonic()
        self.world.__enter__()
        self.ctl = self.world.add_host()
        self.client = self.world.add_host()
        nets = [self.world.add_host() for _ in range(self.hosts_wanted)]
        progress(f"{len(nets) + 3} network namespaces: a switch, the control host, a client host and "
                 f"{len(nets)} agent hosts", time.monotonic() - started)

        started = time.monotonic()
        sans = [a for h in (self.ctl, *nets) for a in ("--host", str(h.address))]
        run_checked([str(BIN / "shoal"), "certs", "init", str(self.pki), *sans])
        progress("certificates for mutual TLS (shoal certs init)", time.monotonic() - started)

        started = time.monotonic()
        self.etcd = EtcdCluster(self.work / "etcd", size=3, netns=self.ctl.name).start()
        progress("etcd: 3 members, one cluster", time.monotonic() - started)

        started = time.monotonic()
        for n in range(1, SCHEDULERS + 1):
            self.schedulers.append(self._scheduler(n))
            self.schedulers[-1].start()
        wait_for("both schedulers answering", lambda: all(self._answers(n) for n in range(1, SCHEDULERS + 1)),
                 timeout=60, daemons=self.schedulers)
        leader = wait_for_value("a scheduler leading", self.leader, timeout=30)
        progress(f"2 schedulers ({leader} leads; both serve the API)", time.monotonic() - started)

        started = time.monotonic()
        self.prometheus = self._prometheus()
        self.prometheus.start()
        progress("Prometheus (targets from the schedulers' /http_sd)", time.monotonic() - started)

    def start_hosts(self, image_layout: Path, progress: Callable[[str, float], None]) -> None:
        started = time.monotonic()
        nets = self.world.hosts[2:]
        for i, net in enumerate(nets):
            host = self.agent_host(i, net, labels={"zone": ZONES[i]}, tls=self.pki)
            self.hosts.append(host)
            host.daemon.start()
        wait_for("every agent host ready", lambda: self.ready_hosts() == len(self.hosts), timeout=90,
                 daemons=[*self.schedulers, *(h.daemon for h in self.hosts)])
        for host in self.hosts:
            host.cli("image", "import", str(image_layout), "--name", IMAGE, "-q")
        progress(f"{len(self.hosts)} agent hosts joined, ready, with the demo image",
                 time.monotonic() - started)

    def agent_host(self, i: int, net: TestHost, *, labels: dict[str, str], tls: Path,
                   join: bool = True) -> AgentHost:
        zone = labels.get("zone", ZONES[i % len(ZONES)])
        root, sock = self.work / f"agent-{zone}{i}", self.work / f"agent{i}.sock"
        parent = f"{PREFIX}-{self.tag}-{i}"
        joins = ["--join", ",".join(f"{self.ctl.address}:{SCHEDULER_PORT + n - 1}"
                                    for n in range(1, SCHEDULERS + 1))] if join else []
        cores = os.cpu_count() or 1
        argv = [
            # A UTS namespace of its own: the host is named after its zone in every listing.
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', f"host-{zone}",
            str(BIN / "shoal-agent"), "serve", "--root", str(root),
            "--listen", f"{net.address}:{AGENT_PORT}", "--listen", f"unix://{sock}",
            "--tls-dir", str(tls), "--cgroup-parent", parent,
            "--subnet", f"10.{200 + i}.{int(self.tag[:2], 16)}.0/24", "--bridge", f"sd{self.tag[:4]}{i}",
            "--metrics-listen", f"{net.address}:{AGENT_METRICS_PORT}",
            "--cpu-reserve", f"{cores * 1000 - HOST_MILLICORES}m",
            *(a for k, v in sorted(labels.items()) for a in ("--label", f"{k}={v}")),
            *joins, "--advertise", f"{net.address}:{AGENT_PORT}",
        ]
        daemon = Daemon(f"agent-{zone}{i}", argv, self.work / f"agent-{zone}{i}.log", netns=net.name)
        return AgentHost(index=i, net=net, zone=zone, daemon=daemon, root=root, socket=sock,
                         cgroup_parent=parent)

    def issue_agent_tls(self, net: TestHost, directory: Path) -> Path:
        """An agent certificate for a host added later (a new address), signed by the cluster's CA."""
        directory.mkdir(parents=True)
        shutil.copy(self.pki / "ca.pem", directory / "ca.pem")
        pair = certs.issue(certs.load_ca(self.pki), f"agent-{net.name}", kind="agent",
                           hosts=[str(net.address)])
        certs.write_pair(directory, "agent", pair)
        return directory

    def _scheduler(self, n: int) -> Daemon:
        assert self.etcd is not None
        return Daemon(f"scheduler{n}", [
            str(BIN / "shoal-scheduler"), "serve", "--etcd", self.etcd.endpoints,
            "--listen", f"{self.ctl.address}:{SCHEDULER_PORT + n - 1}",
            "--listen", f"unix://{self.scheduler_socket(n)}", "--tls-dir", str(self.pki),
            "--http-listen", self.http_address(n), "--instance-id", f"s{n}",
            "--prometheus", self.prometheus_url,
            # Replicas of the demo start and warm up in a second or two: HPA's 15 s would only slow it.
            "--autoscale-cpu-initialization-period", "3",
        ], self.work / f"scheduler{n}.log", netns=self.ctl.name)

    def _prometheus(self) -> Daemon:
        directory = self.work / "prometheus"
        directory.mkdir()
        sd = [f"http://{self.http_address(n)}/http_sd" for n in range(1, SCHEDULERS + 1)]
        relabel = [{"action": "labelmap", "regex": "__meta_shoal_host_label_(.+)"},
                   {"source_labels": ["__meta_shoal_host_name"], "target_label": "host"},
                   {"source_labels": ["__meta_shoal_service"], "target_label": "service"},
                   {"source_labels": ["__meta_shoal_replica"], "target_label": "replica"}]
        jobs: list[dict[str, object]] = [
            {"job_name": "shoal-scheduler",
             "static_configs": [{"targets": [self.http_address(n) for n in range(1, SCHEDULERS + 1)]}]},
        ]
        for job, kind in (("shoal-agent", "agent"), ("shoal-replicas", "replica")):
            jobs.append({"job_name": job, "scrape_timeout": "900ms", "relabel_configs": relabel,
                         "http_sd_configs": [{"url": f"{url}?kind={kind}", "refresh_interval": "1s"}
                                             for url in sd]})
        # deploy/prometheus/prometheus.yml's jobs, with the demo's addresses and a 1 s pace
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        return Daemon("prometheus", [
            "prometheus", f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address={self.ctl.address}:{PROMETHEUS_PORT}",
        ], directory / "prometheus.log", netns=self.ctl.name)

    # -- reads ---------------------------------------------------------------------------------------

    def _answers(self, n: int) -> bool:
        single = connect_scheduler(f"unix://{self.scheduler_socket(n)}")
        try:
            single.api.ListServices(spb.ListServicesRequest())
            return True
        finally:
            single.close()

    def leader(self) -> str:
        return str(self.api.api.ListSchedulers(spb.ListSchedulersRequest()).leader)

    def hosts_listed(self) -> list[spb.Host]:
        return list(self.api.api.ListHosts(spb.ListHostsRequest()).hosts)

    def ready_hosts(self) -> int:
        return sum(h.state == spb.HOST_STATE_READY for h in self.hosts_listed())

    def prometheus_query(self, query: str) -> list[dict[str, object]]:
        """An instant query through the client host (Prometheus listens only inside the namespaces)."""
        out = self.client.run(["curl", "-fsS", "--max-time", "3", f"{self.prometheus_url}/api/v1/query",
                               "--data-urlencode", f"query={query}"], timeout=10)
        if out.returncode != 0:
            raise RuntimeError(f"Prometheus query {query!r}: {out.stderr.strip()}")
        result: list[dict[str, object]] = json.loads(out.stdout)["data"]["result"]
        return result

    # -- failures ------------------------------------------------------------------------------------

    def kill_host(self, host: AgentHost) -> int:
        """Power loss: the host's link goes silent, then its agent, supervisor and every container die
        (SIGKILL); returns how many processes died."""
        self.world.set_uplink(host.net, up=False)
        killed = 0
        for _ in range(50):  # a supervisor's worker may become its keeper: kill until none is left
            pids = set(self.netns_pids(host.net)) | set(_cgroup_pids(host.cgroup_parent))
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed += len(pids)
            time.sleep(0.05)
        if host.daemon.process is not None:
            host.daemon.process.wait(timeout=10)
        return killed

    def power_on(self, host: AgentHost) -> None:
        """The host is back: its link up and its agent started on the same root (as after a reboot)."""
        self.world.set_uplink(host.net, up=True)
        host.daemon.start()

    def kill_scheduler(self, instance_id: str) -> Daemon:
        daemon = self.schedulers[int(instance_id.removeprefix("s")) - 1]
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait(timeout=10)
        return daemon

    @staticmethod
    def netns_pids(net: TestHost) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", net.name], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        return [int(p) for p in out.split()]

    # -- tear-down -----------------------------------------------------------------------------------

    def close(self, extra_hosts: list[AgentHost] | None = None) -> list[str]:
        """Everything stopped and removed; returns what had to be forced (never raises)."""
        problems: list[str] = []
        if self._api is not None:
            self._api.close()
        for daemon in self.schedulers:  # first: nothing may recreate what is removed below
            problems += daemon.stop(grace=15)
        for host in [*self.hosts, *(extra_hosts or [])]:
            problems += stop_agent_host(host, self.netns_pids)
        if self.prometheus is not None:
            problems += self.prometheus.stop(grace=15)
        if self.etcd is not None:
            self.etcd.close()
        for target in unmount_under(self.work):
            problems.append(f"unmounted {target}")
        self.world.close()
        return problems


def stop_agent_host(host: AgentHost, netns_pids: Callable[[TestHost], list[int]]) -> list[str]:
    """Remove every container through the agent, stop it, let its supervisor leave (bounded), then
    force whatever is left; returns what was forced."""
    problems: list[str] = []
    try:
        if host.daemon.alive():
            ids = host.cli("ps", "-aq", "--no-trunc").split()
            if ids:
                host.cli("rm", "-f", *ids, check=False)
    except (RuntimeError, subprocess.SubprocessError, OSError) as err:
        problems.append(f"{host.name}: removing its containers: {err}")
    supervisor = host.supervisor_pid()
    problems += host.daemon.stop(grace=15)
    deadline = time.monotonic() + 15
    while supervisor is not None and pid_alive(supervisor) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        left = netns_pids(host.net)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            problems.append(f"{host.name}: killed {len(left)} processes left in its namespace")
    problems += remove_cgroups(host.cgroup_parent)
    problems += [f"unmounted {t}" for t in unmount_under(host.root)]
    return problems


def _cgroup_pids(parent: str) -> list[int]:
    pids = []
    for top in cgroup_dirs(parent):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def wait_for_value(what: str, get: Callable[[], T], *, timeout: float, interval: float = 0.1) -> T:
    """Poll ``get`` (errors count as "not yet") until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = get()
        except Exception as err:  # a scheduler in failover, a listing mid-change: try again
            last = err
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:g} s (last: {last!r})")


__all__ = ["AGENT_PORT", "HOST_MILLICORES", "IMAGE", "PREFIX", "PROVIDER_PORT", "ZONES", "AgentHost",
           "DemoCluster", "stop_agent_host", "wait_for_value"]
