"""The cluster verbs of ``shoal`` (agent/cli/cluster*.py) against an in-process fake scheduler: a gRPC
server on loopback with mutual TLS (tests/fixtures/certs.py) serving the Scheduler service from canned
services, replicas, hosts and endpoints, recording every request. The real ``shoal`` runs as a process,
so what is checked is what a user or a script sees: output, JSON keys, exit status, the requests sent,
failover between addresses, watches (with a compacted revision and a scheduler going away), errors."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from proto.scheduler.v1 import scheduler_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler import spec as service_file
from tests.fixtures.certs import write_pki

pytestmark = [pytest.mark.integration]

SHOAL = str(Path(sys.executable).parent / "shoal")
WEB = """\
name: web
replicas: 2
template:
  image: registry.example:5000/team/web:1.4
  command: ["httpd", "-f", "-p", "8080"]
  resources: {cpus: 0.5, memory: 64M}
  ports: [{container: 8080}]
  health: {http: {port: 8080, path: /healthz}, interval: 2s}
  restart: always
placement:
  constraints: ["zone!=c"]
  topology_spread: {label: zone, max_skew: 1}
update: {max_surge: 25%, max_unavailable: 0}
"""


def _ts(seconds: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=seconds)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, kind: str, message: str) -> None:
    context.set_trailing_metadata((("shoal-error", kind),))
    context.abort(code, message)


class FakeScheduler(pb_grpc.SchedulerServicer):
    """Canned cluster state; answers as the real scheduler's API says, records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Message]] = []
        self.lock = threading.Lock()
        self.revision = 100
        self.services: dict[str, pb.Service] = {}
        self.events: queue.Queue[pb.WatchEvent] = queue.Queue()
        self.watching = threading.Event()
        self.compact_watches = 0
        self.down_with_etcd = False
        self.drained_after_watch = False
        self.rollout = pb.Rollout(service="web", template_generation=2, desired=2, updated=1,
                                  updated_ready=1, old=1, message="waiting for web-b to be ready")
        self._apply(WEB, "canned.yaml")
        self.requests.clear()
        self.revision = 100
        self.hosts = [
            pb.Host(id="h-1111", name="node-1", address="10.0.0.1:7070", state=pb.HOST_STATE_READY,
                    labels={"zone": "a"}, replicas=1, registered_at=_ts(1_700_000_000)),
            pb.Host(id="h-2222", name="node-2", address="10.0.0.2:7070", state=pb.HOST_STATE_CORDONED,
                    labels={"zone": "b"}, replicas=1, registered_at=_ts(1_700_000_000)),
        ]
        self.hosts[0].info.cpu_allocatable_millis = 2000
        self.hosts[0].info.memory_allocatable_bytes = 4 << 30
        self.replicas = [
            pb.Replica(id="web-a", service="web", host="h-1111", host_name="node-1",
                       state=pb.REPLICA_STATE_RUNNING, ready=True, generation=1,
                       created_at=_ts(1_700_000_000),
                       endpoints=[pb.Endpoint(service="web", replica="web-a", host="h-1111",
                                              address="10.0.0.1:31001", container_port=8080,
                                              protocol="tcp")]),
            pb.Replica(id="web-b", service="web", state=pb.REPLICA_STATE_PENDING, generation=1,
                       reason="0/2 hosts: 1 insufficient memory, 1 cordoned", created_at=_ts(1_700_000_000)),
        ]

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def record(self, name: str, request: Message) -> None:
        with self.lock:
            self.requests.append((name, request))

    def calls(self, name: str) -> list[Any]:
        with self.lock:
            return [r for n, r in self.requests if n == name]

    def _apply(self, text: str, source: str) -> list[pb.ApplyResult]:
        results = []
        for spec in service_file.parse_service_file(text, source=source):
            message = json_format.ParseDict(service_file.api_dict(spec), pb.ServiceSpec())
            old = self.services.get(spec.name)
            self.revision += 1
            if old is None:
                service = pb.Service(spec=message, generation=1, template_generation=1,
                                     revision=self.revision, created_at=_ts(1_700_000_000))
                service.status.CopyFrom(pb.ServiceStatus(replicas=2, ready=1, pending=1, updated=2,
                                                         message="1 replica pending"))
                action = "created"
            elif old.spec == message:
                service, action = old, "unchanged"
            else:
                service = pb.Service()
                service.CopyFrom(old)
                service.spec.CopyFrom(message)
                service.generation += 1
                action = "updated"
            self.services[spec.name] = service
            results.append(pb.ApplyResult(service=service, action=action))
        return results

    def _service(self, name: str, context: grpc.ServicerContext) -> pb.Service:
        if self.down_with_etcd:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "StoreUnavailable",
                   "etcd is unreachable at http://127.0.0.1:2379: nothing was written, retry")
        if name not in self.services:
            _abort(context, grpc.StatusCode.NOT_FOUND, "NotFound", f"no such service: {name}")
        return self.services[name]

    def _host(self, ref: str, context: grpc.ServicerContext) -> pb.Host:
        for host in self.hosts:
            if ref in (host.id, host.name):
                return host
        _abort(context, grpc.StatusCode.NOT_FOUND, "NotFound", f"no such host: {ref}")
        raise AssertionError("unreachable")

    # -- the API ---------------------------------------------------------------------------------------------

    def ApplyService(self, request: pb.ApplyServiceRequest, context: grpc.ServicerContext
                     ) -> pb.ApplyServiceResponse:
        self.record("ApplyService", request)
        try:
            return pb.ApplyServiceResponse(results=self._apply(request.yaml, request.source or "<input>"))
        except service_file.SpecError as err:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument", str(err))
            raise AssertionError("unreachable") from None

    def GetService(self, request: pb.GetServiceRequest, context: grpc.ServicerContext) -> pb.Service:
        self.record("GetService", request)
        return self._service(request.name, context)

    def ListServices(self, request: pb.ListServicesRequest, context: grpc.ServicerContext
                     ) -> pb.ListServicesResponse:
        self.record("ListServices", request)
        return pb.ListServicesResponse(services=list(self.services.values()), revision=self.revision)

    def DeleteService(self, request: pb.DeleteServiceRequest, context: grpc.ServicerContext
                      ) -> pb.DeleteServiceResponse:
        self.record("DeleteService", request)
        service = pb.Service()
        service.CopyFrom(self._service(request.name, context))
        service.deleting = True
        return pb.DeleteServiceResponse(service=service)

    def ScaleService(self, request: pb.ScaleServiceRequest, context: grpc.ServicerContext) -> pb.Service:
        self.record("ScaleService", request)
        service = self._service(request.name, context)
        if request.expected_generation and request.expected_generation != service.generation:
            _abort(context, grpc.StatusCode.ABORTED, "Conflict",
                   f"service web is at generation {service.generation}, not {request.expected_generation}")
        service.spec.replicas = request.replicas
        service.generation += 1
        return service

    def RolloutStatus(self, request: pb.GetServiceRequest, context: grpc.ServicerContext) -> pb.Rollout:
        self.record("RolloutStatus", request)
        self._service(request.name, context)
        return self.rollout

    def RolloutUndo(self, request: pb.RolloutUndoRequest, context: grpc.ServicerContext) -> pb.Service:
        self.record("RolloutUndo", request)
        service = self._service(request.name, context)
        service.generation += 1
        service.template_generation = service.generation
        return service

    def ListReplicas(self, request: pb.ListReplicasRequest, context: grpc.ServicerContext
                     ) -> pb.ListReplicasResponse:
        self.record("ListReplicas", request)
        found = [r for r in self.replicas
                 if (not request.service or r.service == request.service)
                 and (not request.host or request.host in (r.host, r.host_name))
                 and (not request.states or r.state in request.states)]
        return pb.ListReplicasResponse(replicas=found, revision=self.revision)

    def GetReplica(self, request: pb.GetReplicaRequest, context: grpc.ServicerContext) -> pb.Replica:
        self.record("GetReplica", request)
        found = [r for r in self.replicas if r.id.startswith(request.id)]
        if len(found) != 1:
            _abort(context, grpc.StatusCode.NOT_FOUND, "NotFound", f"no such replica: {request.id}")
        return found[0]

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.Explanation:
        self.record("Explain", request)
        replica = self.GetReplica(pb.GetReplicaRequest(id=request.replica), context)
        return pb.Explanation(
            replica=replica, summary="0/2 hosts: 1 insufficient memory, 1 cordoned",
            hosts=[pb.HostVerdict(host="h-1111", host_name="node-1", feasible=False,
                                  reasons=["insufficient memory"]),
                   pb.HostVerdict(host="h-2222", host_name="node-2", feasible=False, reasons=["cordoned"])],
            decisions=[pb.Decision(time=_ts(1_700_000_100), action="pending",
                                   reason="0/2 hosts: 1 insufficient memory, 1 cordoned")])

    def ListHosts(self, request: pb.ListHostsRequest, context: grpc.ServicerContext) -> pb.ListHostsResponse:
        self.record("ListHosts", request)
        return pb.ListHostsResponse(hosts=self.hosts, revision=self.revision)

    def GetHost(self, request: pb.GetHostRequest, context: grpc.ServicerContext) -> pb.Host:
        self.record("GetHost", request)
        return self._host(request.host, context)

    def _set_host_state(self, request: pb.HostRequest, context: grpc.ServicerContext, state: int) -> pb.Host:
        host = self._host(request.host, context)
        host.state = state  # type: ignore[assignment]
        return host

    def CordonHost(self, request: pb.HostRequest, context: grpc.ServicerContext) -> pb.Host:
        self.record("CordonHost", request)
        return self._set_host_state(request, context, pb.HOST_STATE_CORDONED)

    def UncordonHost(self, request: pb.HostRequest, context: grpc.ServicerContext) -> pb.Host:
        self.record("UncordonHost", request)
        return self._set_host_state(request, context, pb.HOST_STATE_READY)

    def DeleteHost(self, request: pb.HostRequest, context: grpc.ServicerContext) -> pb.Host:
        self.record("DeleteHost", request)
        host = self._host(request.host, context)
        if host.state == pb.HOST_STATE_READY:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"host {host.name} is ready (its agent is "
                          "connected): stop its agent first")
        return host

    def DrainHost(self, request: pb.HostRequest, context: grpc.ServicerContext) -> pb.Host:
        self.record("DrainHost", request)
        return self._set_host_state(request, context, pb.HOST_STATE_DRAINING)

    def ListEndpoints(self, request: pb.ListEndpointsRequest, context: grpc.ServicerContext
                      ) -> pb.ListEndpointsResponse:
        self.record("ListEndpoints", request)
        endpoints = [e for r in self.replicas for e in r.endpoints
                     if not request.service or e.service == request.service]
        return pb.ListEndpointsResponse(endpoints=endpoints, revision=self.revision)

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.WatchEvent]:
        self.record("Watch", request)
        if self.compact_watches:
            self.compact_watches -= 1
            self.revision += 50  # what the relist will see
            _abort(context, grpc.StatusCode.OUT_OF_RANGE, "RevisionCompacted",
                   f"revision {request.after_revision} has been compacted")
        self.watching.set()
        while context.is_active():
            try:
                event = self.events.get(timeout=0.05)  # wakes to notice a client that went away
            except queue.Empty:
                continue
            if self.drained_after_watch:
                self.hosts[0].state = pb.HOST_STATE_DRAINED
            yield event


class Server:
    """A FakeScheduler served with mTLS on a loopback port."""

    def __init__(self, pki: dict[str, Path], fake: FakeScheduler | None = None) -> None:
        self.fake = fake or FakeScheduler()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_SchedulerServicer_to_server(self.fake, self.server)
        d = pki["scheduler"]  # a scheduler certificate: server usage, SAN 127.0.0.1
        creds = grpc.ssl_server_credentials([((d / "client-key.pem").read_bytes(),
                                              (d / "client.pem").read_bytes())],
                                            root_certificates=(d / "ca.pem").read_bytes(),
                                            require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki: dict[str, Path]) -> Iterator[Server]:
    s = Server(pki)
    yield s
    s.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens there once closed


def run(pki: dict[str, Path], address: str, *args: str, stdin: str | None = None,
        tls: str | None = "good", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [SHOAL, *(["--scheduler", address] if address else []),
            *(["--tls-dir", str(pki[tls])] if tls else []), *args]
    environ = {k: v for k, v in os.environ.items() if k != "SHOAL_SCHEDULER"} | (env or {})
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=environ)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


# -- apply ---------------------------------------------------------------------------------------------------

def test_apply_sends_the_yaml_and_its_source_and_prints_what_happened(
        server: Server, pki: dict[str, Path], tmp_path: Path) -> None:
    api = tmp_path / "api.yaml"
    api.write_text(WEB.replace("name: web", "name: api"))
    assert ok(run(pki, server.address, "apply", "-f", str(api))) == "service/api created\n"
    assert ok(run(pki, server.address, "apply", "-f", str(api))) == "service/api unchanged\n"
    sent = server.fake.calls("ApplyService")
    assert [(r.yaml, r.source) for r in sent] == [(api.read_text(), str(api))] * 2
    assert ok(run(pki, server.address, "apply", "-f", "-", stdin=WEB.replace("replicas: 2", "replicas: 3"))) \
        == "service/web updated\n"
    assert server.fake.calls("ApplyService")[-1].source == "<stdin>"


def test_apply_a_directory_and_several_files_of_several_documents(
        server: Server, pki: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.yaml").write_text(WEB.replace("name: web", "name: a") + "---\n"
                                             + WEB.replace("name: web", "name: b"))
    (tmp_path / "dir" / "notes.txt").write_text("not a service")
    (tmp_path / "c.yml").write_text(WEB.replace("name: web", "name: c"))
    out = ok(run(pki, server.address, "apply", "-f", str(tmp_path / "dir"), "-f", str(tmp_path / "c.yml")))
    assert out == "service/a created\nservice/b created\nservice/c created\n"
    assert [r.source for r in server.fake.calls("ApplyService")] == [str(tmp_path / "dir" / "a.yaml"),
                                                                      str(tmp_path / "c.yml")]


def test_apply_reports_the_schedulers_path_and_line_and_exits_1(
        server: Server, pki: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "web.yaml"
    bad.write_text("name: bad\nreplicas: 1\nreplcias: 2\ntemplate:\n  image: x\n  resources: {memory: 64X}\n")
    result = run(pki, server.address, "apply", "-f", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f'shoal: {bad}:3: replcias: unknown key (did you mean "replicas"?)',
        f"shoal: {bad}:6: template.resources.memory: invalid memory limit '64X': expected a number with an "
        "optional unit k, m, g or t (e.g. 64M)",
    ]


def test_apply_of_an_unreadable_file_sends_nothing(server: Server, pki: dict[str, Path],
                                                   tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(WEB)
    result = run(pki, server.address, "apply", "-f", str(good), "-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "missing.yaml: No such file or directory" in result.stderr
    assert server.fake.calls("ApplyService") == []


# -- get -----------------------------------------------------------------------------------------------------

def test_get_json_has_the_contract_keys_of_every_kind(server: Server, pki: dict[str, Path]) -> None:
    contract = {
        "services": {"name", "replicas", "ready", "generation"},
        "replicas": {"id", "service", "host", "state", "ready", "generation", "reason"},
        "hosts": {"id", "name", "address", "state", "labels"},
        "endpoints": {"service", "replica", "host", "address"},
    }
    for kind, keys in contract.items():
        objects = as_json(run(pki, server.address, "get", kind, "-o", "json"))
        assert isinstance(objects, list) and objects, kind
        for obj in objects:
            assert keys <= set(obj), (kind, keys - set(obj))


def test_get_json_values(server: Server, pki: dict[str, Path]) -> None:
    [web] = as_json(run(pki, server.address, "get", "services", "web", "-o", "json"))
    assert (web["name"], web["replicas"], web["ready"], web["generation"]) == ("web", 2, 1, 1)
    replicas = as_json(run(pki, server.address, "get", "replicas", "-o", "json"))
    assert [(r["id"], r["service"], r["host"], r["state"], r["ready"], r["generation"], r["reason"])
            for r in replicas] == [
        ("web-a", "web", "h-1111", "running", True, 1, ""),
        ("web-b", "web", "", "pending", False, 1, "0/2 hosts: 1 insufficient memory, 1 cordoned")]
    hosts = as_json(run(pki, server.address, "get", "hosts", "-o", "json"))
    assert [(h["id"], h["name"], h["address"], h["state"], h["labels"]) for h in hosts] == [
        ("h-1111", "node-1", "10.0.0.1:7070", "ready", {"zone": "a"}),
        ("h-2222", "node-2", "10.0.0.2:7070", "cordoned", {"zone": "b"})]
    endpoints = as_json(run(pki, server.address, "get", "endpoints", "web", "-o", "json"))
    assert endpoints == [{"service": "web", "replica": "web-a", "host": "h-1111", "address": "10.0.0.1:31001",
                          "container_port": 8080, "protocol": "tcp"}]
    assert server.fake.calls("ListEndpoints")[-1].service == "web"


def test_get_tables_like_kubectl(server: Server, pki: dict[str, Path]) -> None:
    services = ok(run(pki, server.address, "get", "services")).splitlines()
    assert services[0].split() == ["NAME", "READY", "UP-TO-DATE", "PENDING", "GENERATION", "AGE"]
    assert services[1].split()[:5] == ["web", "1/2", "2", "1", "1"]
    replicas = ok(run(pki, server.address, "get", "replicas", "-o", "wide")).splitlines()
    assert replicas[0].split() == ["ID", "SERVICE", "STATE", "READY", "HOST", "RESTARTS", "AGE", "REASON",
                                   "GENERATION", "ENDPOINTS"]
    assert replicas[1].split()[:5] == ["web-a", "web", "running", "yes", "node-1"]
    assert replicas[1].split()[-1] == "10.0.0.1:31001"
    assert "0/2 hosts: 1 insufficient memory, 1 cordoned" in replicas[2]
    hosts = ok(run(pki, server.address, "get", "hosts")).splitlines()
    assert [line.split()[:4] for line in hosts[1:]] == [["node-1", "ready", "10.0.0.1:7070", "1"],
                                                       ["node-2", "cordoned", "10.0.0.2:7070", "1"]]


def test_get_replicas_filters_go_to_the_scheduler(server: Server, pki: dict[str, Path]) -> None:
    out = as_json(run(pki, server.address, "get", "replicas", "--service", "web", "--host", "node-1",
                      "--state", "running,pending", "-o", "json"))
    assert [r["id"] for r in out] == ["web-a"]
    sent = server.fake.calls("ListReplicas")[-1]
    assert (sent.service, sent.host, list(sent.states)) == (
        "web", "node-1", [pb.REPLICA_STATE_RUNNING, pb.REPLICA_STATE_PENDING])
    one = as_json(run(pki, server.address, "get", "replica", "web-b", "-o", "json"))
    assert [r["id"] for r in one] == ["web-b"]


def test_get_services_yaml_is_a_service_file_that_applies_back_unchanged(
        server: Server, pki: dict[str, Path]) -> None:
    rendered = ok(run(pki, server.address, "get", "service", "web", "-o", "yaml"))
    assert service_file.parse_service(rendered) == service_file.parse_service(WEB)
    assert "max_surge: 25%" in rendered
    assert ok(run(pki, server.address, "apply", "-f", "-", stdin=rendered)) == "service/web unchanged\n"


def test_get_other_kinds_as_yaml(server: Server, pki: dict[str, Path]) -> None:
    hosts = yaml.safe_load(ok(run(pki, server.address, "get", "hosts", "-o", "yaml")))
    assert [h["name"] for h in hosts] == ["node-1", "node-2"]


def test_get_of_an_unknown_name_prints_the_schedulers_message(server: Server, pki: dict[str, Path]) -> None:
    result = run(pki, server.address, "get", "services", "nope")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "shoal: no such service: nope\n")


def test_an_empty_listing(server: Server, pki: dict[str, Path]) -> None:
    server.fake.services.clear()
    assert as_json(run(pki, server.address, "get", "services", "-o", "json")) == []
    result = run(pki, server.address, "get", "services")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "No services found.\n")


# -- the other verbs -----------------------------------------------------------------------------------------

def test_scale_with_and_without_an_expected_generation(server: Server, pki: dict[str, Path]) -> None:
    assert ok(run(pki, server.address, "scale", "web", "--replicas", "10")) == \
        "service/web scaled to 10 (generation 2)\n"
    conflict = run(pki, server.address, "scale", "web", "--replicas", "3", "--expected-generation", "1")
    assert conflict.returncode == 1
    assert conflict.stderr == "shoal: service web is at generation 2, not 1\n"
    assert [(r.name, r.replicas, r.expected_generation) for r in server.fake.calls("ScaleService")] == [
        ("web", 10, 0), ("web", 3, 1)]


def test_negative_replicas_are_refused_before_calling(server: Server, pki: dict[str, Path]) -> None:
    result = run(pki, server.address, "scale", "web", "--replicas", "-1")
    assert result.returncode == 1 and "--replicas must be 0 or more, got -1" in result.stderr
    assert server.fake.calls("ScaleService") == []


def test_delete_service(server: Server, pki: dict[str, Path]) -> None:
    assert ok(run(pki, server.address, "delete", "service", "web")) == "service/web deleted\n"
    assert [r.name for r in server.fake.calls("DeleteService")] == ["web"]
    wrong = run(pki, server.address, "delete", "replica", "web-1")
    assert wrong.returncode == 1 and "only services, host groups and hosts can be deleted" in wrong.stderr
    live = run(pki, server.address, "delete", "host", "node-1")  # the scheduler's refusal, word for word
    assert live.returncode == 1 and "host node-1 is ready (its agent is connected)" in live.stderr
    assert [r.host for r in server.fake.calls("DeleteHost")] == ["node-1"]


def test_cordon_uncordon_drain(server: Server, pki: dict[str, Path]) -> None:
    assert ok(run(pki, server.address, "cordon", "node-1")) == "host/node-1 cordoned\n"
    assert ok(run(pki, server.address, "uncordon", "h-1111")) == "host/node-1 uncordoned\n"
    assert ok(run(pki, server.address, "drain", "node-1")) == "host/node-1 draining\n"
    assert [(n, r.host) for n, r in server.fake.requests] == [
        ("CordonHost", "node-1"), ("UncordonHost", "h-1111"), ("DrainHost", "node-1")]
    missing = run(pki, server.address, "cordon", "node-9")
    assert (missing.returncode, missing.stderr) == (1, "shoal: no such host: node-9\n")


def test_drain_wait_returns_once_the_host_is_drained(server: Server, pki: dict[str, Path]) -> None:
    server.fake.drained_after_watch = True
    proc = subprocess.Popen([SHOAL, "--scheduler", server.address, "--tls-dir", str(pki["good"]), "drain",
                             "node-1", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.fake.watching.wait(30)
    server.fake.events.put(pb.WatchEvent(revision=101, type="put", host=server.fake.hosts[0]))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["host/node-1 draining: waiting for its 1 replicas to move",
                                "host/node-1 drained"]
    watch = server.fake.calls("Watch")[0]
    assert (watch.after_revision, list(watch.kinds)) == (100, ["host", "replica"])


def test_describe_service_host_and_replica(server: Server, pki: dict[str, Path]) -> None:
    service = ok(run(pki, server.address, "describe", "service", "web"))
    for expected in ("Name:", "web", "2 desired | 2 current | 1 ready", "registry.example:5000/team/web:1.4",
                     "cpus 0.5, memory 64Mi", "8080/tcp", "http GET :8080/healthz, every 2s",
                     "Constraints:", "zone!=c", "over zone (max skew 1)", "max surge 25%, max unavailable 0",
                     "Rollout:", "1 of 2 updated", "waiting for web-b to be ready", "web-a", "node-1",
                     "0/2 hosts: 1 insufficient memory, 1 cordoned"):
        assert expected in service, expected
    host = ok(run(pki, server.address, "describe", "host", "node-1"))
    for expected in ("h-1111", "10.0.0.1:7070", "zone=a", "2 cores allocatable", "4Gi allocatable", "web-a"):
        assert expected in host, expected
    assert server.fake.calls("ListReplicas")[-1].host == "h-1111"
    replica = ok(run(pki, server.address, "describe", "replica", "web-b"))
    for expected in ("web-b", "pending", "0/2 hosts", "insufficient memory", "cordoned", "Decisions:"):
        assert expected in replica, expected


def test_explain_replica(server: Server, pki: dict[str, Path]) -> None:
    text = ok(run(pki, server.address, "explain", "replica", "web-b")).splitlines()
    assert text[0] == "replica web-b of service web: pending"
    assert text[1] == "Placement:  0/2 hosts: 1 insufficient memory, 1 cordoned"
    assert any("node-1" in line and "insufficient memory" in line for line in text)
    raw = as_json(run(pki, server.address, "explain", "replica", "web-b", "-o", "json"))
    assert raw["summary"] == "0/2 hosts: 1 insufficient memory, 1 cordoned"
    assert [h["host_name"] for h in raw["hosts"]] == ["node-1", "node-2"]


def test_rollout_status_undo_and_waiting(server: Server, pki: dict[str, Path]) -> None:
    assert ok(run(pki, server.address, "rollout", "status", "web")) == (
        "service/web: 1 of 2 replicas updated, 1 ready, 1 old (template generation 2): "
        "waiting for web-b to be ready\n")
    proc = subprocess.Popen([SHOAL, "--scheduler", server.address, "--tls-dir", str(pki["good"]), "rollout",
                             "status", "web", "-w"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("service/web: 1 of 2 replicas updated")
    assert server.fake.watching.wait(30)
    server.fake.rollout = pb.Rollout(service="web", template_generation=2, desired=2, updated=2,
                                     updated_ready=2, complete=True)
    server.fake.events.put(pb.WatchEvent(revision=101, type="put", replica=server.fake.replicas[1]))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == "service/web rolled out (template generation 2)\n"
    watch = server.fake.calls("Watch")[0]
    assert (list(watch.kinds), watch.service) == (["service", "replica"], "web")
    assert ok(run(pki, server.address, "rollout", "undo", "web")) == \
        "service/web rolled back (template generation 2, generation 2)\n"


def test_waiting_gives_up_at_its_timeout(server: Server, pki: dict[str, Path]) -> None:
    result = run(pki, server.address, "rollout", "status", "web", "-w", "--timeout", "300ms")
    assert result.returncode == 1
    assert result.stdout.startswith("service/web: 1 of 2 replicas updated")
    assert result.stderr == "shoal: timed out after 300ms\n"
    bad = run(pki, server.address, "drain", "node-1", "--wait", "--timeout", "soon")
    assert (bad.returncode, bad.stderr) == (
        1, "shoal: invalid timeout 'soon': expected e.g. 500ms, 30s, 2m or 1h\n")
    assert server.fake.calls("DrainHost") == []


# -- watching ------------------------------------------------------------------------------------------------

def _watcher(pki: dict[str, Path], address: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([SHOAL, "--scheduler", address, "--tls-dir", str(pki["good"]), "get", *args,
                             "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(proc: subprocess.Popen[str], n: int) -> list[str]:
    assert proc.stdout is not None
    return [proc.stdout.readline().rstrip("\n") for _ in range(n)]


def _interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def _replica(fake: FakeScheduler, index: int, **changes: Any) -> pb.Replica:
    replica = pb.Replica()
    replica.CopyFrom(fake.replicas[index])
    for key, value in changes.items():
        setattr(replica, key, value)
    return replica


def test_watch_prints_changes_after_the_listing_and_ctrl_c_exits_0(server: Server,
                                                                   pki: dict[str, Path]) -> None:
    fake = server.fake
    proc = _watcher(pki, server.address, "replicas")
    head, a, b = _lines(proc, 3)
    assert head.split()[:3] == ["ID", "SERVICE", "STATE"] and a.startswith("web-a") and b.startswith("web-b")
    assert fake.watching.wait(30)
    placed = _replica(fake, 1, state=pb.REPLICA_STATE_STARTING, host="h-1111", host_name="node-1", reason="")
    fake.events.put(pb.WatchEvent(revision=101, type="put", replica=placed))
    fake.events.put(pb.WatchEvent(revision=102, type="put", replica=placed))  # nothing visible changed
    fake.events.put(pb.WatchEvent(revision=103, type="delete", name="web-a"))
    changed, deleted = _lines(proc, 2)
    assert changed.split()[:5] == ["web-b", "web", "starting", "no", "node-1"]
    assert deleted.startswith("web-a") and deleted.endswith("(deleted)")
    code, err = _interrupt(proc)
    assert (code, err) == (0, "")
    watch = fake.calls("Watch")[0]
    assert (watch.after_revision, list(watch.kinds)) == (100, ["replica"])


def test_watch_json_lines(server: Server, pki: dict[str, Path]) -> None:
    fake = server.fake
    proc = _watcher(pki, server.address, "services", "-o", "json")
    [first] = _lines(proc, 1)
    assert json.loads(first)["name"] == "web"
    assert fake.watching.wait(30)
    scaled = pb.Service()
    scaled.CopyFrom(fake.services["web"])
    scaled.spec.replicas = 5
    fake.events.put(pb.WatchEvent(revision=101, type="put", service=scaled))
    fake.events.put(pb.WatchEvent(revision=102, type="delete", name="web"))
    changed, deleted = (json.loads(line) for line in _lines(proc, 2))
    assert (changed["name"], changed["replicas"]) == ("web", 5)
    assert (deleted["name"], deleted["deleted"]) == ("web", True)
    assert _interrupt(proc)[0] == 0


def test_watch_endpoints_follows_each_services_whole_set(server: Server, pki: dict[str, Path]) -> None:
    fake = server.fake
    proc = _watcher(pki, server.address, "endpoints", "web")
    _, first = _lines(proc, 2)
    assert "10.0.0.1:31001" in first
    assert fake.watching.wait(30)
    moved = pb.Endpoint(service="web", replica="web-b", host="h-2222", address="10.0.0.2:31002",
                        container_port=8080, protocol="tcp")
    fake.events.put(pb.WatchEvent(revision=101, type="put", name="web",
                                  endpoints=pb.ListEndpointsResponse(endpoints=[moved], revision=101)))
    gone, added = _lines(proc, 2)
    assert "10.0.0.1:31001" in gone and gone.endswith("(deleted)")
    assert "10.0.0.2:31002" in added and "web-b" in added
    assert fake.calls("Watch")[0].service == "web"
    assert _interrupt(proc)[0] == 0


def test_a_compacted_revision_makes_the_watch_list_again(server: Server, pki: dict[str, Path]) -> None:
    fake = server.fake
    fake.compact_watches = 1
    fake.replicas[0].ready = False  # seen only by the relist
    proc = _watcher(pki, server.address, "replicas")
    _, a, _ = _lines(proc, 3)
    assert a.split()[3] == "no"
    assert fake.watching.wait(30)  # the second watch, after the relist
    fake.events.put(pb.WatchEvent(revision=160, type="delete", name="web-b"))
    [deleted] = _lines(proc, 1)
    assert deleted.startswith("web-b") and deleted.endswith("(deleted)")
    assert _interrupt(proc)[0] == 0
    assert [w.after_revision for w in fake.calls("Watch")] == [100, 150]
    assert len(fake.calls("ListReplicas")) == 2


def test_a_watch_moves_to_the_next_scheduler_and_resumes_after_the_last_revision(
        pki: dict[str, Path]) -> None:
    first, second = Server(pki), Server(pki)
    try:
        proc = _watcher(pki, f"{first.address},{second.address}", "replicas")
        _lines(proc, 3)
        assert first.fake.watching.wait(30)
        placed = _replica(first.fake, 1, state=pb.REPLICA_STATE_RUNNING, host="h-2222", host_name="node-2")
        first.fake.events.put(pb.WatchEvent(revision=120, type="put", replica=placed))
        assert _lines(proc, 1)[0].split()[2] == "running"
        first.stop()
        assert second.fake.watching.wait(30)
        second.fake.events.put(pb.WatchEvent(revision=121, type="delete", name="web-a"))
        assert _lines(proc, 1)[0].endswith("(deleted)")
        assert _interrupt(proc) == (0, "")
        assert [w.after_revision for w in second.fake.calls("Watch")] == [120]
    finally:
        first.stop()
        second.stop()


# -- addresses, failover and errors --------------------------------------------------------------------------

def test_the_next_address_is_tried_when_one_is_down(server: Server, pki: dict[str, Path]) -> None:
    dead = f"127.0.0.1:{_free_port()}"
    out = as_json(run(pki, f"{dead},{server.address}", "get", "hosts", "-o", "json"))
    assert [h["name"] for h in out] == ["node-1", "node-2"]


def test_shoal_scheduler_from_the_environment(server: Server, pki: dict[str, Path]) -> None:
    dead = f"127.0.0.1:{_free_port()}"
    result = run(pki, "", "get", "services", "-o", "json",
                 env={"SHOAL_SCHEDULER": f"{dead}, {server.address}"})
    assert [s["name"] for s in as_json(result)] == ["web"]


def test_no_scheduler_reachable(pki: dict[str, Path]) -> None:
    a, b = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    result = run(pki, f"{a},{b}", "get", "services")
    assert result.returncode == 69  # EX_UNAVAILABLE: retrying may work
    assert result.stderr == (f"shoal: cannot reach the scheduler at {a} (connection refused), {b} "
                             "(connection refused) (choose another with --scheduler ADDR or "
                             "SHOAL_SCHEDULER)\n")


def test_a_scheduler_that_answers_unavailable_itself_is_not_failed_over(pki: dict[str, Path]) -> None:
    first, second = Server(pki), Server(pki)
    try:
        first.fake.down_with_etcd = True
        result = run(pki, f"{first.address},{second.address}", "scale", "web", "--replicas", "1")
        assert (result.returncode, result.stderr) == (
            69, "shoal: etcd is unreachable at http://127.0.0.1:2379: nothing was written, retry\n")
        assert second.fake.requests == []
    finally:
        first.stop()
        second.stop()


def test_without_a_client_certificate_the_message_says_so(server: Server, pki: dict[str, Path]) -> None:
    result = run(pki, server.address, "get", "services", tls=None)
    assert result.returncode == 1
    assert result.stderr.startswith(f"shoal: cannot reach the scheduler at {server.address} (")
    assert "a scheduler on TCP requires mTLS: --tls-dir DIR" in result.stderr
    foreign = run(pki, server.address, "get", "services", tls="foreign")
    assert foreign.returncode == 1 and "cannot reach the scheduler" in foreign.stderr
    assert server.fake.requests == []
