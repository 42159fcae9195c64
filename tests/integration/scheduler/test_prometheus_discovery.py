"""A real Prometheus (the Debian package) discovering Shoal's agents and replicas through a real
``shoal-scheduler serve --http-listen`` on a real etcd, with the configuration from deploy/prometheus/
(templated with the test's addresses) — and promtool checking that configuration and unit-testing the
scheduler's rules.

The "agents" and the replica are small HTTP servers on loopback serving one metric each; the hosts are
registered through the scheduler's RegisterHost (gRPC, plain TCP with ``--insecure-tcp``) with an API
address nothing listens on, so the leader finds them unreachable (not ready) and leaves the running
replica record the test writes into etcd alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from proto.agent.v1 import agent_pb2 as apb
from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc
from scheduler.model import HostId, HostPort, PortRequest, ReplicaPhase
from scheduler.store.base import Delete, Put
from scheduler.store.factory import open_store
from tests.fixtures import scheduler_records as build
from tests.fixtures.etcd import EtcdCluster, free_port

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
PLACEHOLDER_SD = "shoal-scheduler.example:7401"  # the scheduler address in deploy/'s http_sd URLs
POLL_TIMEOUT_S = 60.0  # Prometheus' first scrape lands ~5 s after it starts; discovery refreshes every 1 s


def require(binary: str) -> None:
    if shutil.which(binary) is not None:
        return
    reason = f"missing {binary} (scripts/install.sh installs the prometheus package)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def promtool(*args: str, cwd: Path | None = None) -> None:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def poll(what: str, check: Callable[[], tuple[bool, Any]], *, timeout: float = POLL_TIMEOUT_S,
         alive: Callable[[], None] = lambda: None) -> Any:
    """Call ``check`` (bounded) until it returns (True, value), and return the value."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        done, result = check()
        if done:
            return result
        assert time.monotonic() < deadline, f"never: {what} (last: {result!r})"
        time.sleep(0.25)


def answers(url: str) -> tuple[bool, Any]:
    try:
        code, _ = http_get(url)
    except OSError as err:
        return False, err
    return code == 200, code


# -- fakes of the things Prometheus scrapes -------------------------------------------------------------

class FakeEndpoint:
    """A loopback HTTP server whose /metrics says who it is: ``shoal_test_endpoint{who="NAME"} 1``."""

    def __init__(self, name: str) -> None:
        body = f'# TYPE shoal_test_endpoint gauge\nshoal_test_endpoint{{who="{name}"}} 1\n'.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = 200 if self.path.split("?")[0] == "/metrics" else 404
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def endpoints() -> Iterator[dict[str, FakeEndpoint]]:
    made = {name: FakeEndpoint(name) for name in ("agent-1", "agent-2", "agent-3", "replica")}
    try:
        yield made
    finally:
        for endpoint in made.values():
            endpoint.close()


# -- the scheduler and Prometheus as processes ------------------------------------------------------------

class Scheduler:
    """``shoal-scheduler serve`` on loopback: plain TCP API, HTTP for Prometheus."""

    def __init__(self, tmp: Path, *, etcd: str, prefix: str) -> None:
        self.api = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.log_path = tmp / "scheduler.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["shoal-scheduler", "serve", "--etcd", etcd, "--etcd-prefix", prefix, "--listen", self.api,
                 "--insecure-tcp", "--http-listen", self.http, "--instance-id", "test-scheduler",
                 # The hosts here are only registrations (nothing answers at their API addresses):
                 # without a long grace the leader would rightly move the replica off its host.
                 "--host-grace", "3600"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"shoal-scheduler exited:\n{self.log_path.read_text()[-3000:]}"

    def http_sd(self, kind: str) -> list[dict[str, Any]]:
        try:
            code, body = http_get(f"http://{self.http}/http_sd?kind={kind}")
        except OSError:
            return []  # not listening yet
        return list(json.loads(body)) if code == 200 else []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Prometheus:
    def __init__(self, tmp: Path, config: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()[-3000:]}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            code, body = http_get(url)
        except OSError:
            return []  # not listening yet
        answer = json.loads(body)
        assert code == 200 and answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def poll(self, what: str, promql: str, until: Callable[[list[dict[str, Any]]], bool],
             ) -> list[dict[str, Any]]:
        def check() -> tuple[bool, list[dict[str, Any]]]:
            result = self.query(promql)
            return until(result), result
        found: list[dict[str, Any]] = poll(what, check, alive=self.alive)
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def templated_config(tmp: Path, *, scheduler_http: str) -> Path:
    """deploy/prometheus/prometheus.yml pointed at the test's scheduler, with 1 s intervals."""
    text = (DEPLOY / "prometheus.yml").read_text()
    assert PLACEHOLDER_SD in text, "the deploy config's http_sd URLs changed: update the test"
    config = yaml.safe_load(text.replace(PLACEHOLDER_SD, scheduler_http))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"shoal-scheduler", "shoal-agent", "shoal-replicas"}, set(jobs)
    jobs["shoal-scheduler"]["static_configs"] = [{"targets": [scheduler_http]}]
    for job in jobs.values():
        job.update(scrape_interval="1s", scrape_timeout="1s")
        for sd in job.get("http_sd_configs", []):
            sd["refresh_interval"] = "1s"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- registering hosts, writing records ---------------------------------------------------------------------

def register(scheduler: Scheduler, *, name: str, zone: str, metrics: str) -> str:
    host_id = secrets.token_hex(16)
    info = apb.HostInfo(host_id=host_id, hostname=name, agent_version="test", labels={"zone": zone},
                        cpu_allocatable_millis=2000, memory_allocatable_bytes=1 << 30)
    # The API address: a port nothing listens on, so the leader finds the agent unreachable.
    request = spb.RegisterHostRequest(info=info, address=f"127.0.0.1:{free_port()}", metrics_address=metrics)
    with grpc.insecure_channel(scheduler.api) as channel:
        spb_grpc.RegistrationStub(channel).RegisterHost(request, timeout=10, wait_for_ready=True)
    return host_id


async def write_running_replica(etcd: str, prefix: str, *, host_id: str, port: int) -> None:
    """Service web (metrics_port 9100, one replica) and its replica running on ``host_id`` with 9100
    published on ``port``, in one transaction (so the leader never sees the service without it)."""
    store = await open_store(etcd, prefix=prefix)
    try:
        web = build.service("web", replicas=1)
        facts = replace(web.spec.facts, ports=(PortRequest(9100),))
        web = replace(web, spec=replace(web.spec, metrics_port=9100, facts=facts))
        replica = replace(build.replica("web", 0), host=HostId(host_id), phase=ReplicaPhase.RUNNING,
                          ready=True, created_at=time.time(), ports=(HostPort(9100, port),))
        await store.commit([Put(web), Put(replica)])
    finally:
        await store.close()


async def delete_replica(etcd: str, prefix: str) -> None:
    store = await open_store(etcd, prefix=prefix)
    try:
        record = await store.get(store.schema.replica("web", "web-00000"))
        assert record is not None
        await store.commit([Delete(record)])
    finally:
        await store.close()


def labels_of(result: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """{instance: labels} of a query's series."""
    return {series["metric"]["instance"]: series["metric"] for series in result}


# -- the tests --------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_promtool_accepts_the_config_and_the_scheduler_rules_pass_their_unit_tests() -> None:
    require("promtool")
    promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    promtool("check", "rules", str(DEPLOY / "scheduler-rules.yml"))
    promtool("test", "rules", "scheduler-rules.test.yml", cwd=DEPLOY)


@pytest.mark.integration
def test_prometheus_discovers_agents_and_replicas_through_the_schedulers_http_sd(
        etcd: EtcdCluster, etcd_prefix: str, endpoints: dict[str, FakeEndpoint], tmp_path: Path) -> None:
    require("prometheus")
    require("promtool")
    scheduler = Scheduler(tmp_path, etcd=etcd.endpoints, prefix=etcd_prefix)
    prometheus: Prometheus | None = None
    try:
        poll("the scheduler's HTTP endpoint", lambda: answers(f"http://{scheduler.http}/healthz"),
             alive=scheduler.alive)
        h1 = register(scheduler, name="node-1", zone="a", metrics=endpoints["agent-1"].address)
        h2 = register(scheduler, name="node-2", zone="b", metrics=endpoints["agent-2"].address)
        asyncio.run(write_running_replica(etcd.endpoints, etcd_prefix, host_id=h1,
                                          port=endpoints["replica"].port))
        # Prometheus reads discovery once at start and then every refresh: start it once the lists are full.
        def discovered() -> tuple[bool, Any]:
            agents, replicas = scheduler.http_sd("agent"), scheduler.http_sd("replica")
            return len(agents) == 2 and len(replicas) == 1, (agents, replicas)
        poll("both agents and the replica in http_sd", discovered, alive=scheduler.alive)

        config = templated_config(tmp_path, scheduler_http=scheduler.http)
        promtool("check", "config", str(config))
        prometheus = Prometheus(tmp_path, config)
        up = prometheus.poll("four targets up", "up == 1", lambda r: len(r) == 4)
        targets = labels_of(up)
        agent1, agent2, replica = (endpoints[n].address for n in ("agent-1", "agent-2", "replica"))
        assert set(targets) == {scheduler.http, agent1, agent2, replica}
        assert targets[scheduler.http]["job"] == "shoal-scheduler"
        # Host labels, the host's name and id carried through relabeling; no __meta_* left.
        assert targets[agent1] == {"__name__": "up", "job": "shoal-agent", "instance": agent1,
                                   "host": "node-1", "host_id": h1, "zone": "a"}
        assert targets[agent2] == {"__name__": "up", "job": "shoal-agent", "instance": agent2,
                                   "host": "node-2", "host_id": h2, "zone": "b"}
        # The replica: its service and id, and its host (whose address the target is, with the port
        # published for the service's metrics_port).
        assert targets[replica] == {"__name__": "up", "job": "shoal-replicas", "instance": replica,
                                    "service": "web", "replica": "web-00000", "host": "node-1",
                                    "host_id": h1, "zone": "a"}
        # What the targets serve carries those labels too.
        (scraped,) = prometheus.query('shoal_test_endpoint{who="replica"}')
        assert scraped["metric"]["service"] == "web" and scraped["metric"]["host"] == "node-1"

        # The scheduler's own figures, and the deploy rules evaluated over them.
        def one(promql: str) -> float:
            (series,) = prometheus.poll(promql, promql, lambda r: len(r) == 1)
            return float(series["value"][1])
        assert one('shoal_service_replicas_desired{service="web"}') == 1
        assert one('shoal_service_replicas_ready{service="web"}') == 1
        assert one('shoal_hosts{state="not_ready"}') == 2  # nothing answers at their API addresses
        assert one('shoal:service_replicas_desired:max{service="web"}') == 1
        assert one("shoal_scheduler_leader") == 1

        # A host that joins later is discovered on the next refresh.
        h3 = register(scheduler, name="node-3", zone="c", metrics=endpoints["agent-3"].address)
        (joined,) = prometheus.poll("node-3 up", 'up{host="node-3"} == 1', lambda r: len(r) == 1)
        assert joined["metric"]["host_id"] == h3 and joined["metric"]["zone"] == "c"

        # A replica that goes away stops being a target; its replacement waits for a host (all are
        # unreachable), which the pending figures show.
        asyncio.run(delete_replica(etcd.endpoints, etcd_prefix))
        prometheus.poll("the replica's target gone", 'up{job="shoal-replicas"}', lambda r: r == [])
        prometheus.poll("a pending replica", 'shoal_service_replicas_pending{service="web"} == 1',
                        lambda r: len(r) == 1)
    finally:
        if prometheus is not None:
            prometheus.stop()
        scheduler.stop()
