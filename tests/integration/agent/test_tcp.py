"""TCP listeners carry the whole API: plain TCP only when explicitly asked, mTLS otherwise."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from scheduler.model import HostId
from tests.fixtures.certs import write_pki
from tests.fixtures.cut_session import assert_noticed_by_keepalive, follow_then_cut
from tests.integration.agent.conftest import AgentProcess, shoal_bin

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent(tmp_path: Path, *extra: str) -> AgentProcess:
    return AgentProcess(root=tmp_path / "root", socket=tmp_path / "a.sock",
                        cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent.log",
                        extra_args=list(extra))


def _shoal(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shoal_bin("shoal"), "--agent", address, *args], capture_output=True, text=True,
                          timeout=30)


def test_plain_tcp_is_refused_without_the_explicit_flag(tmp_path: Path) -> None:
    port = _free_port()
    result = subprocess.run(
        [shoal_bin("shoal-agent"), "serve", "--root", str(tmp_path / "root"),
         "--listen", f"unix://{tmp_path}/a.sock", "--listen", f"127.0.0.1:{port}",
         "--cgroup-parent", f"shoal-test-{secrets.token_hex(4)}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "needs mutual TLS" in result.stderr and "--tls-dir" in result.stderr
    assert not (tmp_path / "a.sock").exists()


def test_insecure_tcp_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    agent = _agent(tmp_path, "--listen", f"127.0.0.1:{port}", "--insecure-tcp")
    agent.start()
    try:
        assert _shoal(f"127.0.0.1:{port}", "ps").returncode == 0
    finally:
        agent.stop()


def test_the_agent_allows_the_schedulers_keepalive_and_a_cut_is_noticed(tmp_path: Path) -> None:
    """The scheduler's keepalive pings every second on one connection, no GOAWAY for them; a cut network
    between them ends the session's stream by an unanswered ping (agent.server_options)."""
    port = _free_port()
    agent = _agent(tmp_path, "--listen", f"127.0.0.1:{port}", "--insecure-tcp")
    agent.start()
    try:
        cut = asyncio.run(asyncio.wait_for(follow_then_cut(HostId("keepalive-test"), port), 60))
    finally:
        agent.stop()
    assert_noticed_by_keepalive(cut)


def test_mtls_requires_a_valid_client_certificate(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    agent = _agent(tmp_path, "--listen", address, "--tls-dir", str(pki["agent"]))
    agent.start()
    try:
        assert _shoal(address, "--tls-dir", str(pki["good"]), "ps").returncode == 0
        for bad in ("foreign", "expired"):
            result = _shoal(address, "--tls-dir", str(pki[bad]), "ps")
            assert result.returncode != 0, f"{bad} client certificate was accepted"
        no_cert = _shoal(address, "ps")  # plaintext client against a TLS port
        assert no_cert.returncode != 0
    finally:
        agent.stop()


def test_certs_init_output_works_for_agent_and_cli(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init = subprocess.run([shoal_bin("shoal"), "certs", "init", str(pki), "--host", "127.0.0.1"],
                          capture_output=True, text=True, timeout=30)
    assert init.returncode == 0, init.stderr
    port = _free_port()
    address = f"127.0.0.1:{port}"
    agent = _agent(tmp_path, "--listen", address, "--tls-dir", str(pki))
    agent.start()
    try:
        assert _shoal(address, "--tls-dir", str(pki), "ps").returncode == 0
        other = tmp_path / "other"
        subprocess.run([shoal_bin("shoal"), "certs", "init", str(other), "--host", "127.0.0.1"],
                       check=True, capture_output=True, timeout=30)
        assert _shoal(address, "--tls-dir", str(other), "ps").returncode != 0  # another cluster's CA
    finally:
        agent.stop()


def test_certificate_roles_decide_who_may_call_an_agent(tmp_path: Path) -> None:
    """Schedulers and clients may call an agent; another agent's certificate, or one with no role, may
    not; and a path on the agent's host is only for the unix socket."""
    import grpc

    from proto.agent.v1 import agent_pb2 as pb
    from proto.agent.v1 import agent_pb2_grpc as pb_grpc

    pki = write_pki(tmp_path / "pki")
    address = f"127.0.0.1:{_free_port()}"
    agent = _agent(tmp_path, "--listen", address, "--tls-dir", str(pki["agent"]))
    agent.start()
    try:
        assert _shoal(address, "--tls-dir", str(pki["good"]), "ps").returncode == 0
        assert _shoal(address, "--tls-dir", str(pki["scheduler"]), "ps").returncode == 0
        peer = _shoal(address, "--tls-dir", str(pki["peer-agent"]), "ps")
        assert peer.returncode != 0 and "role 'agent' may not call this API" in peer.stderr
        old = _shoal(address, "--tls-dir", str(pki["roleless"]), "ps")
        assert old.returncode != 0 and "carries no Shoal role" in old.stderr

        client = pki["good"]
        creds = grpc.ssl_channel_credentials(
            root_certificates=(client / "ca.pem").read_bytes(),
            private_key=(client / "client-key.pem").read_bytes(),
            certificate_chain=(client / "client.pem").read_bytes())
        with grpc.secure_channel(address, creds) as channel:
            images = pb_grpc.ImagesStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(images.ImportImage(iter([pb.ImportImageRequest(path="/etc/shadow")])))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only allowed over the agent's unix socket" in (info.value.details() or "")
    finally:
        agent.stop()
