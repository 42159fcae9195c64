"""Certificate roles on a real ``shoal-scheduler serve --tls-dir`` (state in ``--etcd memory:``), with the
certificates ``shoal certs init`` writes: client and scheduler certificates may call the Scheduler
service but not register hosts; an agent certificate may register its host but not call the Scheduler
service; a certificate from another CA is refused by the TLS handshake, before any handler runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from proto.agent.v1 import agent_pb2 as apb
from proto.scheduler.v1 import scheduler_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.fixtures.etcd import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 10.0
SERVICE = "name: web\nreplicas: 0\ntemplate: {image: 'busybox:1'}\n"


def shoal_bin(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def certs_init(directory: Path) -> Path:
    result = subprocess.run([shoal_bin("shoal"), "certs", "init", str(directory), "--host", "127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return directory


@dataclass(frozen=True)
class Scheduler:
    address: str
    pki: Path       # shoal certs init: ca.pem and a certificate of every kind
    foreign: Path   # the same, from another CA
    log: Path

    def channel(self, kind: str, *, pki: Path | None = None, ca: Path | None = None) -> grpc.Channel:
        """A channel presenting the ``kind`` certificate of ``pki`` and trusting ``ca`` (default: the
        scheduler's CA, so only the client's certificate is in question)."""
        pki = pki or self.pki
        creds = grpc.ssl_channel_credentials(
            root_certificates=(ca or self.pki / "ca.pem").read_bytes(),
            private_key=(pki / f"{kind}-key.pem").read_bytes(),
            certificate_chain=(pki / f"{kind}.pem").read_bytes())
        return grpc.secure_channel(self.address, creds)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    workdir = tmp_path_factory.mktemp("scheduler-roles")
    pki = certs_init(workdir / "pki")
    foreign = certs_init(workdir / "foreign")
    address = f"127.0.0.1:{free_port()}"
    log = workdir / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([shoal_bin("shoal-scheduler"), "serve", "--etcd", "memory:",
                                 "--listen", address, "--tls-dir", str(pki), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT)
    running = Scheduler(address=address, pki=pki, foreign=foreign, log=log)
    try:
        with running.channel("client") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=STARTUP_TIMEOUT_S)
            except grpc.FutureTimeoutError:
                raise AssertionError(f"the scheduler did not start: {log.read_text()}") from None
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()  # SIGTERM is a clean shutdown


def metadata(err: grpc.RpcError) -> dict[str, str]:
    return {key: str(value) for key, value in err.trailing_metadata() or ()}


def register_request(n: int) -> pb.RegisterHostRequest:
    info = apb.HostInfo(host_id=f"{n:032x}", hostname=f"node-{n}", cpu_allocatable_millis=1000,
                        memory_allocatable_bytes=1 << 30)
    return pb.RegisterHostRequest(info=info, address=f"127.0.0.{n}:7070")


@pytest.mark.parametrize("kind", ["client", "scheduler"])
def test_client_and_scheduler_certificates_may_call_the_scheduler_service(scheduler: Scheduler,
                                                                          kind: str) -> None:
    with scheduler.channel(kind) as channel:
        api = pb_grpc.SchedulerStub(channel)
        applied = api.ApplyService(pb.ApplyServiceRequest(yaml=SERVICE), timeout=CALL_TIMEOUT_S)
        assert applied.results[0].service.spec.name == "web"
        listed = api.ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S)
        assert [s.spec.name for s in listed.services] == ["web"]
        api.ListHosts(pb.ListHostsRequest(), timeout=CALL_TIMEOUT_S)
        api.ListSchedulers(pb.ListSchedulersRequest(), timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize("kind", ["client", "scheduler"])
def test_client_and_scheduler_certificates_may_not_register_hosts(scheduler: Scheduler, kind: str) -> None:
    with scheduler.channel(kind) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RegistrationStub(channel).RegisterHost(register_request(9), timeout=CALL_TIMEOUT_S)
        err = info.value
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert metadata(err).get("shoal-error") == "PermissionDenied"
        assert f"role '{kind}' may not call this API (allowed: agent)" in err.details()
        hosts = pb_grpc.SchedulerStub(channel).ListHosts(pb.ListHostsRequest(), timeout=CALL_TIMEOUT_S)
        assert f"{9:032x}" not in [h.id for h in hosts.hosts]


def test_an_agent_certificate_may_register_its_host_but_not_call_the_scheduler_service(
        scheduler: Scheduler) -> None:
    with scheduler.channel("agent") as channel:
        registration = pb_grpc.RegistrationStub(channel)
        registered = registration.RegisterHost(register_request(1), timeout=CALL_TIMEOUT_S)
        assert registered.host.id == f"{1:032x}" and registered.refresh_seconds > 0
        api = pb_grpc.SchedulerStub(channel)
        calls: list[Callable[[], object]] = [
            lambda: api.ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S),
            lambda: api.ListSchedulers(pb.ListSchedulersRequest(), timeout=CALL_TIMEOUT_S),
            lambda: api.ApplyService(pb.ApplyServiceRequest(yaml=SERVICE.replace("web", "sneaky")),
                                     timeout=CALL_TIMEOUT_S),
            lambda: api.CordonHost(pb.HostRequest(host="node-1"), timeout=CALL_TIMEOUT_S),
            lambda: next(iter(api.Watch(pb.WatchRequest(), timeout=CALL_TIMEOUT_S)))]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            err = info.value
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert metadata(err).get("shoal-error") == "PermissionDenied"
            assert "role 'agent' may not call this API" in err.details()
    with scheduler.channel("client") as channel:
        api = pb_grpc.SchedulerStub(channel)
        host = api.GetHost(pb.GetHostRequest(host="node-1"), timeout=CALL_TIMEOUT_S)
        assert host.state != pb.HOST_STATE_CORDONED  # the agent's cordon did not happen
        listed = api.ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S)
        assert "sneaky" not in [s.spec.name for s in listed.services]


def test_a_certificate_from_another_ca_is_refused_by_the_tls_handshake(scheduler: Scheduler) -> None:
    request = pb.ApplyServiceRequest(yaml=SERVICE.replace("web", "foreign"))
    with scheduler.channel("client", pki=scheduler.foreign) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.SchedulerStub(channel).ApplyService(request, timeout=CALL_TIMEOUT_S)
    err = info.value
    # No handler ran: no shoal-error, which a scheduler's own refusals always carry.
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "shoal-error" not in metadata(err)
    # And a client that trusts only its own (foreign) CA does not accept the scheduler either.
    own_ca = scheduler.foreign / "ca.pem"
    with scheduler.channel("client", pki=scheduler.foreign, ca=own_ca) as channel, \
            pytest.raises(grpc.RpcError) as info:
        pb_grpc.SchedulerStub(channel).ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with scheduler.channel("client") as channel:
        listed = pb_grpc.SchedulerStub(channel).ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S)
        assert "foreign" not in [s.spec.name for s in listed.services]


def test_a_plaintext_client_is_refused(scheduler: Scheduler) -> None:
    with grpc.insecure_channel(scheduler.address) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.SchedulerStub(channel).ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_scheduler_is_still_serving(scheduler: Scheduler) -> None:
    """The refusals above did not hurt the server (and the log shows no internal error)."""
    with scheduler.channel("client") as channel:
        pb_grpc.SchedulerStub(channel).ListServices(pb.ListServicesRequest(), timeout=CALL_TIMEOUT_S)
    log = scheduler.log.read_text()
    assert "internal error" not in log and "Traceback" not in log, log
