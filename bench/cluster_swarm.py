"""Docker Swarm as a peer of the cluster benchmark: one dockerd per "host" network namespace, a swarm of them.

The recipe is NOTES.md's ("Docker Swarm as a benchmark peer"): Debian's docker.io 20.10, each
``dockerd`` inside its own namespace with its own data and exec roots, ``--iptables=false
--ip-masq=false`` and an empty config file, a cgroup parent of the benchmark's (``--cgroup-parent``,
which runc resolves under the benchmark's own cgroup where that is not the root), and its own
containerd, which it starts. The first host is the manager (``swarm init --advertise-addr``), the
others join as workers; the manager runs tasks too, as a stock swarm does. The image is the benchmark's
busybox layer given to every node with ``docker import`` (no registry: ``--no-resolve-image``).

The timed commands are whole ``docker`` CLI processes (``service create --detach``, ``service scale
--detach``). ``running`` counts the service's tasks whose desired and current state are both
``running`` — what ``docker service ps NAME --filter desired-state=running`` shows as "Running" and
``docker service ls`` counts in REPLICAS — through the Engine API on the manager's socket
(``poll="api"``) or by running that command (``poll="cli"``).

For the failover benchmark (``bench.failover``): ``kill_node`` is a node's death — its dockerd, its
containerd, its shims (every process whose command line names the node's roots) and every process in
its cgroup parent SIGKILLed at once; ``start_node`` starts its dockerd again on the same roots (it
rejoins the swarm by itself); ``node_id`` and ``node_state`` read the swarm's view through the manager.

Tear-down: services removed, workers then the manager leave the swarm, each dockerd stopped by pid
(its containerd follows), leftover mounts under the roots unmounted, the cgroups removed, and the files
dockerd writes outside its roots (``/etc/docker/key.json``, ``/run/docker``, ``/run/containerd``,
``/var/lib/docker``) removed — only those that did not exist before the run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster_daemon import (
    Daemon,
    cgroup_dirs,
    kill_cgroup_processes,
    remove_cgroups,
    run_checked,
    unmount_under,
    wait_for,
)
from bench.cluster_peer import BenchImage, Workload
from tests.fixtures.netns import TestHost

DOCKER = "/usr/bin/docker"  # /usr/local/bin/docker may be a newer client (NOTES.md)
DOCKERD = "/usr/sbin/dockerd"
API = "/v1.41"  # Engine API of docker 20.10
# A swarm node pulls a task's image before every start, even one it has, and only logs a failure ("We
# always try to pull the image to make sure we have the most up to date version", daemon/cluster/
# executor/container/controller.go). Without a registry in reach that is a DNS timeout per task (≈ 10 s
# here). This variable of that code skips the pull, as Shoal's agents skip it for an image they have.
OFFLINE = {"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
OUTSIDE = (
    Path("/etc/docker/key.json"),
    Path("/run/docker"),
    Path("/run/containerd"),
    Path("/var/lib/docker"),
)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the daemon's unix socket (the Engine API), kept alive across requests."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Engine:
    """A few Engine API GETs on one dockerd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: _UnixHTTPConnection | None = None

    def get(self, url: str, **filters: list[str]) -> Any:
        if filters:
            url += "?filters=" + urllib.parse.quote(json.dumps(filters))
        for attempt in (1, 2):  # a kept-alive connection the daemon closed: reconnect once
            if self._conn is None:
                self._conn = _UnixHTTPConnection(self.path)
            try:
                self._conn.request("GET", API + url)
                response = self._conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status} {body[:300]!r}")
            return json.loads(body)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class SwarmCluster:
    work: Path
    hosts: list[TestHost]  # the first is the manager
    tag: str
    workload: Workload
    poll: str = "api"
    name: str = "swarm"
    image: str = ""  # set by start()
    daemons: list[Daemon] = field(default_factory=list)
    engines: list[Engine] = field(default_factory=list)
    _created_outside: list[Path] = field(default_factory=list)
    _docker_cgroups_before: list[Path] = field(default_factory=list)

    def socket(self, i: int) -> Path:
        return self.work / f"dk{i}.sock"

    def cgroup_parent(self, i: int) -> str:
        return f"swarm-cs{self.tag}-{i}"

    def docker(self, i: int, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.socket(i)}", *args]

    # -- set-up ------------------------------------------------------------------------------------

    def start(self, image: BenchImage) -> dict[str, float]:
        self.image = image.name
        took: dict[str, float] = {}
        self._created_outside = [p for p in OUTSIDE if not p.exists()]
        if Path("/var/lib/docker").exists() and not Path("/var/lib/docker/network/files").exists():
            self._created_outside.append(Path("/var/lib/docker/network/files"))
        self._docker_cgroups_before = cgroup_dirs("docker")
        self.work.mkdir(parents=True)
        (self.work / "daemon.json").write_text("{}")
        started = time.monotonic()
        for i, host in enumerate(self.hosts, start=1):
            daemon = Daemon(
                f"dockerd{i}",
                [
                    DOCKERD,
                    "--data-root",
                    str(self.work / f"dk{i}" / "data"),
                    "--exec-root",
                    str(self.work / f"dk{i}" / "exec"),
                    "--pidfile",
                    str(self.work / f"dk{i}.pid"),
                    "-H",
                    f"unix://{self.socket(i)}",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--cgroup-parent",
                    self.cgroup_parent(i),
                    "--config-file",
                    str(self.work / "daemon.json"),
                ],
                self.work / f"dockerd{i}.log",
                netns=host.name,
                env=OFFLINE,
            )
            self.daemons.append(daemon)
            daemon.start()
            self.engines.append(Engine(self.socket(i)))
        for engine, daemon in zip(self.engines, self.daemons, strict=True):
            wait_for(
                f"{daemon.name}'s API", lambda e=engine: bool(e.get("/version")), timeout=60, daemons=[daemon]
            )
        took["dockerd"] = time.monotonic() - started
        started = time.monotonic()
        for i in range(1, len(self.hosts) + 1):
            with image.rootfs_tar.open("rb") as rootfs:
                result = subprocess.run(
                    self.docker(i, "import", "-", image.name),
                    stdin=rootfs,
                    capture_output=True,
                    check=False,
                    timeout=120,
                )
            if result.returncode != 0:
                raise RuntimeError(f"docker import on dockerd{i}: {result.stderr.decode()[-800:]}")
        took["image import"] = time.monotonic() - started
        started = time.monotonic()
        run_checked(self.docker(1, "swarm", "init", "--advertise-addr", str(self.hosts[0].address)))
        token = run_checked(self.docker(1, "swarm", "join-token", "-q", "worker")).strip()
        for i in range(2, len(self.hosts) + 1):
            run_checked(self.docker(i, "swarm", "join", "--token", token, f"{self.hosts[0].address}:2377"))
        wait_for(
            "every swarm node ready",
            lambda: self.ready_nodes() == len(self.hosts),
            timeout=60,
            daemons=self.daemons,
        )
        took["swarm"] = time.monotonic() - started
        return took

    def ready_nodes(self) -> int:
        return sum(
            n["Status"]["State"] == "ready" and n["Spec"]["Availability"] == "active"
            for n in self.engines[0].get("/nodes")
        )

    # -- the peer interface ------------------------------------------------------------------------

    def create_argv(self, service: str, replicas: int) -> list[str]:
        w = self.workload
        limits = [
            f"--limit-cpu={w.cpus}",
            f"--limit-memory={w.memory_mib}M",
            f"--reserve-cpu={w.cpus_request}",
            f"--reserve-memory={w.memory_mib}M",
        ]
        return self.docker(
            1,
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            service,
            "--replicas",
            str(replicas),
            *limits,
            self.image,
            *w.command,
        )

    def scale_argv(self, service: str, replicas: int) -> list[str]:
        return self.docker(1, "service", "scale", "--detach", f"{service}={replicas}")

    def running(self, service: str) -> int:
        if self.poll == "cli":
            out = subprocess.run(
                self.docker(
                    1,
                    "service",
                    "ps",
                    service,
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.CurrentState}}",
                ),
                capture_output=True,
                check=True,
                timeout=30,
            ).stdout.decode()
            return sum(line.startswith("Running") for line in out.splitlines())
        tasks = self.engines[0].get("/tasks", service=[service], **{"desired-state": ["running"]})
        return sum(t["Status"]["State"] == "running" for t in tasks)

    def remove(self, service: str) -> None:
        run_checked(self.docker(1, "service", "rm", service))

    def gone(self, service: str) -> bool:
        if any(s["Spec"]["Name"] == service for s in self.engines[0].get("/services")):
            return False
        return all(not e.get("/containers/json?all=1") for e in self.engines)

    def processes(self) -> dict[str, int]:
        """Each dockerd and the containerd it started (shims come and go with containers)."""
        found: dict[str, int] = {}
        for i, daemon in enumerate(self.daemons, start=1):
            if not daemon.alive():
                continue
            found[daemon.name] = daemon.pid
            for child in _children(daemon.pid):
                if _comm(child) == "containerd":
                    found[f"containerd{i}"] = child
        return found

    # -- failures (bench.failover) ------------------------------------------------------------------

    def node_id(self, i: int) -> str:
        return str(self.engines[i - 1].get("/info")["Swarm"]["NodeID"])

    def node_state(self, node_id: str) -> str:
        """The node's status as the manager sees it: ready, down, unknown, disconnected."""
        return str(self.engines[0].get(f"/nodes/{node_id}")["Status"]["State"])

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks with desired state running, through the manager."""
        tasks: list[dict[str, Any]] = self.engines[0].get(
            "/tasks", service=[service], **{"desired-state": ["running"]}
        )
        return tasks

    def kill_node(self, i: int) -> int:
        """Node ``i`` dies (see the module docstring); returns how many processes were killed."""
        if i == 1:
            raise ValueError("the manager is node 1: kill a worker")
        root = str(self.work / f"dk{i}")
        victims = [pid for pid in _all_pids() if root in _cmdline(pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        daemon = self.daemons[i - 1]
        assert daemon.process is not None
        daemon.process.wait()
        self.engines[i - 1].close()
        return len(victims) + kill_cgroup_processes(self.cgroup_parent(i))

    def start_node(self, i: int) -> None:
        """dockerd ``i`` again on the same roots, once its API answers."""
        daemon = self.daemons[i - 1]
        daemon.start()
        wait_for(
            f"{daemon.name}'s API",
            lambda: bool(self.engines[i - 1].get("/version")),
            timeout=60,
            daemons=[daemon],
        )

    # -- tear-down ---------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        problems: list[str] = []
        for i, daemon in reversed(list(enumerate(self.daemons, start=1))):
            if not daemon.alive():
                problems.append(f"{daemon.name} had exited before tear-down")
                continue
            ids = (
                subprocess.run(self.docker(i, "ps", "-aq"), capture_output=True, check=False, timeout=60)
                .stdout.decode()
                .split()
            )
            if ids:
                problems.append(f"dockerd{i} still had {len(ids)} containers at the end; removed")
            subprocess.run(
                self.docker(i, "swarm", "leave", "--force"), capture_output=True, check=False, timeout=60
            )
            if ids:
                subprocess.run(
                    self.docker(i, "rm", "-f", *ids), capture_output=True, check=False, timeout=120
                )
        for engine in self.engines:
            engine.close()
        for daemon in reversed(self.daemons):
            problems += daemon.stop(grace=30)
        for target in unmount_under(self.work):
            problems.append(f"unmounted {target}")
        for i in range(1, len(self.hosts) + 1):
            problems += remove_cgroups(self.cgroup_parent(i))
        if not self._docker_cgroups_before:
            problems += remove_cgroups("docker")
        for path in self._created_outside:
            if path.is_dir():
                unmount_under(path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return problems  # the work dir (logs) is the caller's to remove


def _all_pids() -> list[int]:
    own = os.getpid()
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != own]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a Go daemon forks from any of its threads
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


__all__ = ["Engine", "SwarmCluster"]
