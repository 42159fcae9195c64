"""A whole cluster on one machine: etcd, two schedulers and three agents, each "host" a network namespace.

``cluster`` (module-scoped) is built, inside network namespaces this fixture creates (nothing touches
the root namespace): a control host running a 3-member etcd cluster and two ``shoal-scheduler`` instances
(mTLS, certificates from ``shoal certs init``; one leads, both serve the API), and three hosts in zones
``a``, ``b`` and ``c``, each running a ``shoal-agent`` with its own root, cgroup parent, bridge and subnet,
joined to both schedulers, with the test busybox image imported. The CLI runs inside the control host
(``cluster.cli(...)``) with both scheduler addresses, as an operator's would on the network. Between
tests, a killed scheduler, etcd member or agent is started again, a cut link restored and every service
deleted. A module gets the previous module's cluster when it runs the schedulers with the same flags
(``scheduler_args``) and no test failed on it (``ClusterShelf``), else a new one. Teardown (when a cluster
is replaced, and after the package's last test) deletes every service, stops everything, and checks that
no container, cgroup or process of the cluster is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.etcd import EtcdCluster
from tests.fixtures.netns import NetWorld, TestHost
from tests.integration.agent.conftest import AgentProcess, busybox_image, shoal_bin  # noqa: F401

ZONES = ("a", "b", "c")
IMAGE = "test/busybox:v1"
SCHEDULER_PORTS = (7400, 7401)
HTTP_PORTS = (9400, 9401)
AGENT_PORT = 7070
START_FAILURE_COOLDOWN = 8


def exits_on_sigterm(script: str) -> str:
    """``script`` as a replica's shell command that ends as soon as it is told to stop: its last command
    (or ``&&`` list) runs in the background while the shell waits for it, so the shell exits with its
    status, or at once with 0 on SIGTERM.

    The shell is the container's pid 1, and the kernel drops any signal pid 1 has no handler for; busybox
    ``sh``, ``sleep`` and ``httpd`` install none, even when ``exec``ed. Without the trap every stop of a
    test replica waits out the scheduler's 10 s grace and ends in SIGKILL, which is most of what these
    tests would spend waiting. The trap is set first, so a stop that comes early is not lost."""
    return f"trap 'exit 0' TERM; {script} & wait $!"


IDLE = exits_on_sigterm("sleep 3600")  # a replica that does nothing until it is stopped


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.1) -> Any:
    """Bounded poll for a state the cluster reaches on its own (there is no event to wait on from here)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


@dataclass
class SchedulerProcess:
    """One ``shoal-scheduler serve`` inside the control host; ``kill9``/``start`` keep its id and ports."""

    id: str
    address: str
    http: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


@dataclass
class Cluster:
    ctl: TestHost
    hosts: list[TestHost]
    agents: list[AgentProcess]
    pki: Path
    work: Path
    world: NetWorld | None = None
    schedulers: list[SchedulerProcess] = field(default_factory=list)
    etcd: EtcdCluster | None = None
    zone_of: dict[str, str] = field(default_factory=dict)  # host id → zone
    tag: str = ""  # this cluster's names (cgroup parents, bridges, subnets): hosts added later reuse it
    reusable: bool = True  # false once a test failed on it: what it left is unknown, the next module
                           # gets a new cluster

    @property
    def address(self) -> str:
        """Every scheduler instance, as the CLI's ``--scheduler`` takes them (it fails over in order)."""
        return ",".join(s.address for s in self.schedulers)

    @property
    def up(self) -> bool:
        return any(s.alive for s in self.schedulers)

    def cli(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60,
            scheduler: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*self.ctl.nsenter_net, shoal_bin("shoal"), "--scheduler", scheduler or self.address,
                "--tls-dir", str(self.pki), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"shoal {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def apply(self, text: str) -> str:
        return self.cli("apply", "-f", "-", input=text).stdout

    def replicas(self, service: str) -> list[dict[str, Any]]:
        return [r for r in self.json("get", "replicas") if r["service"] == service]

    def running(self, service: str) -> list[dict[str, Any]]:
        return [r for r in self.replicas(service) if r["state"] == "running" and r["ready"]]

    def wait_running(self, service: str, n: int, *, timeout: float = 60) -> list[dict[str, Any]]:
        """Exactly ``n`` replicas running and ready, and no other replica of the service left."""
        def settled() -> list[dict[str, Any]] | None:
            reps = self.replicas(service)
            ok = [r for r in reps if r["state"] == "running" and r["ready"]]
            return ok if len(ok) == n and len(reps) == n else None
        try:
            result: list[dict[str, Any]] = wait_for(settled, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{service} did not settle at {n} running replicas:\n"
                                 + self.cli("get", "replicas", check=False).stdout) from None
        return result

    def containers(self, index: int, *, all: bool = True) -> list[str]:
        args = ["ps", "-q", "--no-trunc"] + (["-a"] if all else [])
        return self.agents[index].run(*args).stdout.split()

    def all_containers(self) -> list[str]:
        return sorted(c for i in range(len(self.agents)) for c in self.containers(i))

    def start_agent(self, index: int) -> None:
        self.agents[index].start()

    def kill_agent(self, index: int) -> None:
        self.agents[index].kill9()

    def set_network(self, index: int, *, up: bool) -> None:
        """Cut or restore host ``index``'s link (a partition: silence, no error)."""
        assert self.world is not None
        self.world.set_uplink(self.hosts[index], up=up)

    def kill_host(self, index: int) -> None:
        """Host death: SIGKILL its agent, its supervisor and every container, leaving nothing running."""
        agent = self.agents[index]

        def killed_all() -> bool:  # a supervisor's worker may turn into its keeper: kill until none is left
            pids = subprocess.run(["ip", "netns", "pids", self.hosts[index].name], capture_output=True,
                                  text=True, check=False).stdout.split()
            pids += [p for d in Path("/sys/fs/cgroup").glob(f"*/{agent.cgroup_parent}")
                     for procs in d.rglob("cgroup.procs") for p in procs.read_text().split()]
            for pid in set(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            return not pids

        wait_for(killed_all, timeout=20)
        if agent.proc is not None:
            agent.proc.wait(timeout=10)
            agent.proc = None

    def agent_index(self, host_id: str) -> int:
        """Which of ``agents`` runs on the host with this id (agents are started in zone order)."""
        return ZONES.index(self.zone_of[host_id])

    def leader(self) -> int:
        """Which of ``schedulers`` leads now (as the instances list themselves; polled until one does)."""
        def leading() -> list[int] | None:
            rows = self.json("get", "schedulers")
            ids = [s.id for s in self.schedulers]
            found = [ids.index(r["id"]) for r in rows if r["leader"] and r["id"] in ids]
            return found if len(found) == 1 else None
        found: list[int] = wait_for(leading, timeout=30)
        return found[0]


def agent_process(base: Path, host: TestHost, index: int, *, pki: Path, scheduler: str, tag: str,
                  labels: Mapping[str, str] | None = None) -> AgentProcess:
    """The agent of host ``index`` (its root, socket, log under ``base``; its own cgroup parent, subnet
    and bridge), listening on the host's address with the certificates in ``pki`` and joined to
    ``scheduler``; labelled ``zone=`` its zone unless ``labels`` are given (the elastic tests' provider
    starts hosts with a group's labels)."""
    labels = {"zone": ZONES[index]} if labels is None else labels
    return AgentProcess(
        root=base / f"root{index}", socket=base / f"agent{index}.sock",
        cgroup_parent=f"shoal-cl{tag}-{index}", log=base / f"agent{index}.log", prefix=host.nsenter_net,
        extra_args=["--listen", f"{host.address}:{AGENT_PORT}", "--tls-dir", str(pki),
                    "--subnet", f"10.{200 + index}.{int(tag[:2], 16)}.0/24", "--bridge", f"scl{tag}{index}",
                    *(a for k, v in sorted(labels.items()) for a in ("--label", f"{k}={v}")),
                    "--join", scheduler],
    )


def _scheduler(base: Path, ctl: TestHost, index: int, *, pki: Path, etcd: str,
               extra: list[str]) -> SchedulerProcess:
    address, http = f"{ctl.address}:{SCHEDULER_PORTS[index]}", f"{ctl.address}:{HTTP_PORTS[index]}"
    return SchedulerProcess(
        id=f"sched-{index}", address=address, http=http, log=base / f"scheduler{index}.log",
        argv=[*ctl.nsenter_net, shoal_bin("shoal-scheduler"), "serve", "--etcd", etcd, "--listen", address,
              "--tls-dir", str(pki), "--http-listen", http, "--instance-id", f"sched-{index}",
              # (default 60 s: a test waits for a start-failing host to be tried again)
              "--start-failure-cooldown", str(START_FAILURE_COOLDOWN), "--log-level", "debug",
              *(arg.replace("{ctl}", str(ctl.address)) for arg in extra)])


@pytest.fixture(scope="module")
def scheduler_args() -> list[str]:
    """More ``shoal-scheduler serve`` flags for a module's cluster (``{ctl}``: the control host's
    address); a test module overrides this fixture."""
    return []


@contextlib.contextmanager
def _built(work: Path, image: Path, scheduler_args: Sequence[str]) -> Iterator[Cluster]:
    tag = secrets.token_hex(2)
    with NetWorld() as world:
        ctl = world.add_host()
        hosts = [world.add_host() for _ in ZONES]
        pki = work / "pki"
        subprocess.run([shoal_bin("shoal"), "certs", "init", str(pki), "--host", str(ctl.address),
                        *(a for h in hosts for a in ("--host", str(h.address)))],
                       check=True, capture_output=True, timeout=60)
        schedulers = ",".join(f"{ctl.address}:{port}" for port in SCHEDULER_PORTS)
        made = Cluster(ctl=ctl, hosts=hosts, pki=pki, work=work, world=world, tag=tag,
                       agents=[agent_process(work, h, i, pki=pki, scheduler=schedulers, tag=tag)
                               for i, h in enumerate(hosts)])
        made.etcd = EtcdCluster(work / "etcd", size=3, netns=ctl.name).start()
        try:
            made.schedulers = [_scheduler(work, ctl, i, pki=pki, etcd=made.etcd.endpoints,
                                          extra=list(scheduler_args)) for i in range(len(SCHEDULER_PORTS))]
            for instance in made.schedulers:
                instance.start()

            def start_with_image(agent: AgentProcess) -> None:
                agent.start()
                agent.run("image", "import", str(image), "--name", IMAGE)

            # Side by side: a start spends part of its time waiting (for the agent's first answer, the
            # CLI's), so three at once are done sooner than one after another, even on two cores.
            with concurrent.futures.ThreadPoolExecutor(len(made.agents)) as pool:
                list(pool.map(start_with_image, made.agents))
            wait_for(lambda: [h["state"] for h in made.json("get", "hosts")] == ["ready"] * 3, timeout=60)
            made.zone_of = {h["id"]: h["labels"]["zone"] for h in made.json("get", "hosts")}
            yield made
        finally:
            _teardown(made)


@dataclass
class ClusterShelf:
    """The one cluster alive at a time, handed from a test module to the next.

    Building a cluster and tearing it down again takes some 12 s on two cores, and after every test
    ``clean_between_tests`` leaves the cluster as each test expects to find it (every component running,
    every link up, no service, every host ready), so a module that runs the schedulers with the previous
    module's flags gets the same cluster. A module with other flags, or one after a module in which a
    test failed (``Cluster.reusable``), gets a new one, the old one torn down (and checked) first: a
    failure is not carried into another module."""

    tmp_path_factory: pytest.TempPathFactory
    _args: tuple[str, ...] = ()
    _current: Cluster | None = None
    _stack: contextlib.ExitStack | None = None

    def get(self, image: Path, scheduler_args: Sequence[str]) -> Cluster:
        args = tuple(scheduler_args)
        if self._current is not None and self._current.reusable and self._args == args:
            return self._current
        self.close()
        stack = contextlib.ExitStack()
        self._current = stack.enter_context(_built(self.tmp_path_factory.mktemp("cluster"), image, args))
        self._stack, self._args = stack, args
        return self._current

    def close(self) -> None:
        stack, self._stack, self._current = self._stack, None, None
        if stack is not None:
            stack.close()


@pytest.fixture(scope="package")
def cluster_shelf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterShelf]:
    """Package-scoped: the last cluster goes when the package's last test is done, not at the end of a
    session that goes on with other tests."""
    shelf = ClusterShelf(tmp_path_factory)
    try:
        yield shelf
    finally:
        shelf.close()


@pytest.fixture(scope="module")
def cluster(cluster_shelf: ClusterShelf, busybox_image: Path,  # noqa: F811
            scheduler_args: list[str]) -> Cluster:
    if os.geteuid() != 0:
        pytest.skip("a cluster needs root")
    return cluster_shelf.get(busybox_image, scheduler_args)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that failed (in its setup, body or clean-up) marks its cluster not to be handed on."""
    report = yield
    made = (getattr(item, "funcargs", None) or {}).get("cluster")
    if report.failed and isinstance(made, Cluster):
        made.reusable = False
    return report


@pytest.fixture(autouse=True)
def clean_between_tests(cluster: Cluster) -> Iterator[None]:
    """Each test starts on an empty, ready cluster: deleting a service is asynchronous, so without this
    one test's leftovers (containers still stopping, a host still draining) leak into the next one's view."""
    yield
    made = cluster
    assert made.etcd is not None
    for index, member in enumerate(made.etcd.members):  # a failure test may have killed some
        if member.pid is None:
            made.etcd.restart(index)
    for instance in made.schedulers:
        if not instance.alive:
            instance.start()
    for index, agent in enumerate(made.agents):  # a failure test that failed may have left a host down
        made.set_network(index, up=True)
        if agent.proc is None:
            agent.start()
    for service in made.json("get", "services"):
        made.cli("delete", "service", service["name"], check=False)
    wait_for(lambda: not made.json("get", "services") and not made.json("get", "replicas"), timeout=60)
    wait_for(lambda: not made.all_containers(), timeout=60)

    def all_ready() -> bool:  # a host a test cordoned or drained is uncordoned (one listing per poll)
        states = {h["id"]: h["state"] for h in made.json("get", "hosts")}
        for host, state in states.items():
            if state not in ("ready", "not_ready"):
                made.cli("uncordon", host, check=False)
        return list(states.values()) == ["ready"] * 3

    wait_for(all_ready, timeout=60)


def _teardown(made: Cluster) -> None:
    problems = []
    if made.up:
        for service in made.json("get", "services"):
            made.cli("delete", "service", service["name"], check=False)
        try:
            wait_for(lambda: not made.json("get", "services"), timeout=60)
        except AssertionError as err:
            problems.append(f"services not deleted: {err}")
    for instance in made.schedulers:
        instance.stop()
    for agent in made.agents:
        if agent.proc is None:
            continue
        left = agent.run("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if left:
            problems.append(f"containers left on {agent.root}: {left}")
            agent.run("rm", "-f", *left, check=False)
        agent.stop()
        for d in Path("/sys/fs/cgroup").glob(f"*/{agent.cgroup_parent}"):
            try:
                d.rmdir()
            except OSError as err:
                problems.append(f"cgroup left: {d} ({err})")
    if made.etcd is not None:
        made.etcd.close()
    assert not problems, problems


__all__ = ["AGENT_PORT", "IDLE", "IMAGE", "ZONES", "Cluster", "ClusterShelf", "SchedulerProcess",
           "agent_process", "clean_between_tests", "cluster", "cluster_shelf", "exits_on_sigterm",
           "scheduler_args", "wait_for"]
