"""Shoal as a peer of the cluster benchmark: etcd, a scheduler and H agents, each "host" a network namespace.

Layout (``bench.cluster_scale`` creates the namespaces with ``tests.fixtures.netns``): the control host
runs etcd (on its own loopback) and ``shoal-scheduler serve`` (mutual TLS on the control host's address,
as in production, plus a unix socket for the benchmark's own calls); every agent host runs
``shoal-agent serve`` with its own state root, cgroup parent, bridge subnet and unix socket, listening
with mutual TLS on its address and joined to the scheduler (``--join``, ``--advertise``). The
certificates come from ``shoal certs init``. Each agent imports the benchmark's busybox image from its
OCI layout tar before any trial, so no trial pulls anything (Swarm's nodes get the same files through
``docker import``).

The timed commands are whole ``shoal`` CLI processes (``apply -f``, ``scale``), as a user or script runs
them. ``running`` counts the service's replicas in state ``running`` through the scheduler's
``ListReplicas`` call — what ``shoal get replicas --service NAME -o json`` prints — either in-process
over the unix socket (``poll="api"``) or by running that very command (``poll="cli"``).

For the failover benchmark (``bench.failover``) the cluster can run ``schedulers`` instances against
the one etcd (each with its own port, unix socket, log and ``--instance-id sN``; every agent joins them
all), pass ``scheduler_args`` to each, and kill and restart a scheduler or a whole host:
``kill_scheduler`` SIGKILLs an instance, ``kill_host`` SIGKILLs an agent, its supervisor and every
process left in its cgroup parent; ``start_scheduler`` / ``start_agent`` start them again on the same
state. ``leader()`` reads the election key from etcd; ``use_scheduler`` points the benchmark's own API
calls at one instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.cluster_daemon import (
    Daemon,
    kill_cgroup_processes,
    pid_alive,
    remove_cgroups,
    run_checked,
    unmount_under,
    wait_for,
)
from bench.cluster_peer import BenchImage, Workload
from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc
from scheduler.store.keys import DEFAULT_PREFIX
from tests.fixtures.netns import TestHost

BIN = Path(sys.executable).parent
SCHEDULER_PORT = 7400
AGENT_PORT = 7070
ETCD_CLIENT = "http://127.0.0.1:2379"  # inside the control host's namespace: its own loopback
ETCD_PEER = "http://127.0.0.1:2380"


@dataclass
class ShoalCluster:
    work: Path
    control: TestHost
    hosts: list[TestHost]
    tag: str
    workload: Workload
    poll: str = "api"
    schedulers: int = 1
    scheduler_args: tuple[str, ...] = ()
    image: str = ""  # set by start()
    name: str = "shoal"
    daemons: list[Daemon] = field(default_factory=list)
    _channel: grpc.Channel | None = None
    _stub: spb_grpc.SchedulerStub | None = None

    # -- set-up ------------------------------------------------------------------------------------

    @property
    def scheduler_socket(self) -> Path:
        return self.instance_socket(1)

    def instance_socket(self, n: int) -> Path:
        """Scheduler instance ``n``'s unix socket (1-based; the first keeps the one-instance name)."""
        return self.work / ("scheduler.sock" if n == 1 else f"scheduler{n}.sock")

    def instance_address(self, n: int) -> str:
        return f"{self.control.address}:{SCHEDULER_PORT + n - 1}"

    @staticmethod
    def instance_name(n: int) -> str:
        return "scheduler" if n == 1 else f"scheduler{n}"

    def agent_socket(self, i: int) -> Path:
        return self.work / f"agent{i}.sock"

    def cgroup_parent(self, i: int) -> str:
        return f"shoal-cs{self.tag}-{i}"

    def start(self, image: BenchImage) -> dict[str, float]:
        """Everything up, every host ready, the image on every host; returns how long each part took."""
        took: dict[str, float] = {}
        self.image = image.name
        self.work.mkdir(parents=True)
        pki = self.work / "pki"
        sans = [a for h in (self.control, *self.hosts) for a in ("--host", str(h.address))]
        run_checked([str(BIN / "shoal"), "certs", "init", str(pki), *sans])
        etcd = Daemon(
            "etcd",
            [
                "etcd",
                "--name",
                "b1",
                "--data-dir",
                str(self.work / "etcd"),
                "--logger=zap",
                "--log-outputs=stderr",
                "--listen-client-urls",
                ETCD_CLIENT,
                "--advertise-client-urls",
                ETCD_CLIENT,
                "--listen-peer-urls",
                ETCD_PEER,
                "--initial-advertise-peer-urls",
                ETCD_PEER,
                "--initial-cluster",
                f"b1={ETCD_PEER}",
                "--initial-cluster-state",
                "new",
            ],
            self.work / "etcd.log",
            netns=self.control.name,
        )
        self._launch(etcd)
        took["etcd"] = wait_for("etcd", lambda: _etcd_healthy(self.control), timeout=30, daemons=[etcd])
        instances = []
        for n in range(1, self.schedulers + 1):
            instance = Daemon(
                self.instance_name(n),
                [
                    str(BIN / "shoal-scheduler"),
                    "serve",
                    "--etcd",
                    ETCD_CLIENT,
                    "--listen",
                    self.instance_address(n),
                    "--listen",
                    f"unix://{self.instance_socket(n)}",
                    "--tls-dir",
                    str(pki),
                    "--instance-id",
                    f"s{n}",
                    *self.scheduler_args,
                ],
                self.work / f"{self.instance_name(n)}.log",
                netns=self.control.name,
            )
            self._launch(instance)
            instances.append(instance)
        self.use_scheduler(1)
        took["scheduler"] = wait_for(
            "the scheduler's API",
            lambda: all(self.answers(n) for n in range(1, self.schedulers + 1)),
            timeout=30,
            daemons=[etcd, *instances],
        )
        joins = [a for n in range(1, self.schedulers + 1) for a in ("--join", self.instance_address(n))]
        agents = []
        for i, host in enumerate(self.hosts, start=1):
            agent = Daemon(
                f"agent{i}",
                [
                    str(BIN / "shoal-agent"),
                    "serve",
                    "--root",
                    str(self.work / f"agent{i}"),
                    "--listen",
                    f"{host.address}:{AGENT_PORT}",
                    "--listen",
                    f"unix://{self.agent_socket(i)}",
                    "--tls-dir",
                    str(pki),
                    "--cgroup-parent",
                    self.cgroup_parent(i),
                    "--subnet",
                    f"10.233.{i}.0/24",
                    "--bridge",
                    "shoalb0",
                    "--label",
                    f"host=h{i}",
                    *joins,
                    "--advertise",
                    f"{host.address}:{AGENT_PORT}",
                ],
                self.work / f"agent{i}.log",
                netns=host.name,
            )
            self._launch(agent)
            agents.append(agent)
        took["hosts ready"] = wait_for(
            "every host ready",
            lambda: self._ready_hosts() == len(self.hosts),
            timeout=60,
            daemons=[etcd, *instances, *agents],
        )
        started = time.monotonic()
        for i in range(1, len(self.hosts) + 1):
            run_checked(
                [
                    str(BIN / "shoal"),
                    "--agent",
                    f"unix://{self.agent_socket(i)}",
                    "image",
                    "import",
                    str(image.layout_tar),
                    "--name",
                    image.name,
                    "-q",
                ]
            )
        took["image import"] = time.monotonic() - started
        return took

    def _launch(self, daemon: Daemon) -> None:
        self.daemons.append(daemon)
        daemon.start()

    def answers(self, n: int) -> bool:
        with grpc.insecure_channel(f"unix://{self.instance_socket(n)}") as channel:
            spb_grpc.SchedulerStub(channel).ListServices(spb.ListServicesRequest(), timeout=2)
        return True

    def _ready_hosts(self) -> int:
        assert self._stub is not None
        hosts = self._stub.ListHosts(spb.ListHostsRequest(), timeout=5).hosts
        return sum(h.state == spb.HOST_STATE_READY for h in hosts)

    # -- the peer interface ------------------------------------------------------------------------

    def service_file(self, service: str, replicas: int) -> str:
        w = self.workload
        return json.dumps(
            {  # JSON is YAML: no quoting surprises in the command
                "name": service,
                "replicas": replicas,
                "template": {
                    "image": self.image,
                    "command": list(w.command),
                    "restart": "always",
                    "resources": {
                        "cpus": w.cpus,
                        "cpus_request": w.cpus_request,
                        "memory": f"{w.memory_mib}M",
                    },
                },
                "placement": {"strategy": "spread"},
            }
        )

    def cli(self, *args: str) -> list[str]:
        return [str(BIN / "shoal"), "--scheduler", f"unix://{self.scheduler_socket}", *args]

    def create_argv(self, service: str, replicas: int) -> list[str]:
        path = self.work / f"{service}.yaml"
        path.write_text(self.service_file(service, replicas))
        return self.cli("apply", "-f", str(path))

    def scale_argv(self, service: str, replicas: int) -> list[str]:
        return self.cli("scale", service, "--replicas", str(replicas))

    def running(self, service: str) -> int:
        if self.poll == "cli":
            out = subprocess.run(
                self.cli("get", "replicas", "--service", service, "-o", "json"),
                capture_output=True,
                check=True,
                timeout=30,
            ).stdout
            return sum(r["state"] == "running" for r in json.loads(out))
        assert self._stub is not None
        replicas = self._stub.ListReplicas(spb.ListReplicasRequest(service=service), timeout=10).replicas
        return sum(r.state == spb.REPLICA_STATE_RUNNING for r in replicas)

    def remove(self, service: str) -> None:
        run_checked(self.cli("delete", "service", service))

    def gone(self, service: str) -> bool:
        """The service, its replica records and every container of it are gone."""
        assert self._stub is not None
        if any(
            s.spec.name == service
            for s in self._stub.ListServices(spb.ListServicesRequest(), timeout=10).services
        ):
            return False
        if self._stub.ListReplicas(spb.ListReplicasRequest(service=service), timeout=10).replicas:
            return False
        return all(not self.containers(i) for i in range(1, len(self.hosts) + 1))

    def containers(self, i: int) -> list[str]:
        out = subprocess.run(
            [str(BIN / "shoal"), "--agent", f"unix://{self.agent_socket(i)}", "ps", "-aq"],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return out.decode().split()

    def processes(self) -> dict[str, int]:
        """The peer's long-lived processes, for profiling: name → pid."""
        found = {d.name: d.pid for d in self.daemons if d.alive()}
        for i in range(1, len(self.hosts) + 1):
            pid = self._supervisor_pid(i)
            if pid is not None:
                found[f"supervisor{i}"] = pid
        return found

    def _supervisor_pid(self, i: int) -> int | None:
        try:
            return int((self.work / f"agent{i}" / "supervisor.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- failures (bench.failover) ------------------------------------------------------------------

    def daemon(self, name: str) -> Daemon:
        return next(d for d in self.daemons if d.name == name)

    def use_scheduler(self, n: int) -> None:
        """The benchmark's own calls (``running``, ``gone``, ...) go to instance ``n`` from now on."""
        if self._channel is not None:
            self._channel.close()
        self._channel = grpc.insecure_channel(f"unix://{self.instance_socket(n)}")
        self._stub = spb_grpc.SchedulerStub(self._channel)

    def cli_at(self, n: int, *args: str) -> list[str]:
        return [str(BIN / "shoal"), "--scheduler", f"unix://{self.instance_socket(n)}", *args]

    def stub(self) -> spb_grpc.SchedulerStub:
        assert self._stub is not None
        return self._stub

    def leader(self) -> str:
        """The instance id in the election key ("s1", "s2"; "" while vacant), read from etcd."""
        result = self.control.run(
            ["etcdctl", "--endpoints", ETCD_CLIENT, "get", f"{DEFAULT_PREFIX}leader", "--print-value-only"],
            timeout=5,
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl get: {result.stderr.strip()[-300:]}")
        value = result.stdout.strip()
        return str(json.loads(value)["instance"]) if value else ""

    def kill_scheduler(self, n: int) -> None:
        """SIGKILL instance ``n`` (no resign: its lease must expire) and reap it."""
        process = self.daemon(self.instance_name(n)).process
        assert process is not None
        process.kill()
        process.wait()

    def start_scheduler(self, n: int) -> None:
        self.daemon(self.instance_name(n)).start()

    def kill_host(self, i: int) -> int:
        """Host ``i`` dies: its agent and supervisor SIGKILLed, then every process still in its cgroup
        parent (the containers); returns how many processes that last step killed."""
        supervisor = self._supervisor_pid(i)
        agent = self.daemon(f"agent{i}")
        assert agent.process is not None
        agent.process.kill()
        if supervisor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
        agent.process.wait()
        return kill_cgroup_processes(self.cgroup_parent(i))

    def start_agent(self, i: int) -> None:
        """A new agent on host ``i``'s root, as after a reboot (the dead supervisor's pid file stays)."""
        self.daemon(f"agent{i}").start()

    def host_id(self, i: int) -> str:
        """Agent ``i``'s host id as the scheduler knows it (by its advertised address)."""
        address = f"{self.hosts[i - 1].address}:{AGENT_PORT}"
        hosts = self.stub().ListHosts(spb.ListHostsRequest(), timeout=5).hosts
        return next(str(h.id) for h in hosts if h.address == address)

    # -- tear-down ---------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Every service deleted, every process stopped, every container, cgroup and mount gone;
        returns problems (never raises: tear-down goes on)."""
        problems: list[str] = []
        instances = [d for d in self.daemons if d.name.startswith("scheduler")]
        scheduler = next((d for d in instances if d.alive()), None)
        if scheduler is not None:
            self.use_scheduler(instances.index(scheduler) + 1)
        agents = [d for d in self.daemons if d.name.startswith("agent")]
        if self._stub is not None and scheduler is not None and scheduler.alive():
            try:  # the orderly way first: the scheduler stops and removes what it placed
                names = [
                    s.spec.name
                    for s in self._stub.ListServices(spb.ListServicesRequest(), timeout=10).services
                ]
                for name in names:
                    problems.append(f"service {name} was still there at the end; deleted")
                    self.remove(name)
                wait_for(
                    "every service gone", lambda: all(self.gone(n) for n in names), timeout=120, interval=0.5
                )
            except Exception as err:
                problems.append(f"deleting the services: {str(err)[:300]}")
        leadership = self._leadership_changes()
        if leadership:
            problems.append(
                f"the scheduler lost its leadership {leadership} time(s) during the run "
                "(scheduler.log: 'lost leadership')"
            )
        for instance in instances:
            problems += instance.stop()  # before removing containers by hand: it would recreate them
        for i in range(1, len(self.hosts) + 1):
            try:
                ids = self.containers(i)
                if ids:
                    problems.append(f"agent{i} still had {len(ids)} containers at the end; removed")
                    run_checked(
                        [str(BIN / "shoal"), "--agent", f"unix://{self.agent_socket(i)}", "rm", "-f", *ids]
                    )
            except (subprocess.SubprocessError, RuntimeError, OSError) as err:
                problems.append(f"removing agent{i}'s containers: {err}")
        supervisors = [p for p in (self._supervisor_pid(i) for i in range(1, len(self.hosts) + 1)) if p]
        if self._channel is not None:
            self._channel.close()
        for daemon in reversed(agents):
            problems += daemon.stop()
        # A supervisor exits by itself once no agent is connected and no container is alive.
        deadline = time.monotonic() + 10
        for pid in supervisors:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                problems.append(f"supervisor {pid} still alive after its agent stopped; killed")
                subprocess.run(["kill", "-KILL", str(pid)], check=False)
        for daemon in self.daemons:
            problems += daemon.stop()  # etcd, and anything that failed above
        for target in unmount_under(self.work):
            problems.append(f"unmounted {target}")
        for i in range(1, len(self.hosts) + 1):
            problems += remove_cgroups(self.cgroup_parent(i))
        return problems  # the work dir (logs) is the caller's to remove

    def _leadership_changes(self) -> int:
        try:
            logs = [self.work / f"{self.instance_name(n)}.log" for n in range(1, self.schedulers + 1)]
            return sum(log.read_text(errors="replace").count("lost leadership") for log in logs)
        except OSError:
            return 0


def _etcd_healthy(control: TestHost) -> bool:
    result = control.run(["etcdctl", "--endpoints", ETCD_CLIENT, "endpoint", "health"], timeout=5)
    return result.returncode == 0


__all__ = ["ShoalCluster"]
