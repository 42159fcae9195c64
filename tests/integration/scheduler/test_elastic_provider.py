"""Delivery to a provider for real: the webhook against an HTTP(S) server on loopback (answers, retries,
timeouts, TLS with a CA and client certificates, the bearer token, redirects), the command as small
scripts (accepted, refused with its stderr, killed at its timeout), and both at once."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from pathlib import Path

import httpx
import pytest

from agent import certs
from scheduler.elastic.provider import Attempt, ProviderClient, post_webhook, run_command
from scheduler.model import (
    CommandProvider,
    GroupName,
    HostGroupSpec,
    HostShape,
    ProviderRequest,
    ProviderRequestKind,
    WebhookProvider,
)
from tests.integration.scheduler.provider_server import HANG, Answer, provider_server

pytestmark = pytest.mark.integration

BODY = b'{"kind":"scale_out","request_id":"workers-1"}'


def post(webhook: WebhookProvider, request_id: str = "workers-1") -> Attempt:
    return asyncio.run(post_webhook(webhook, BODY, request_id=request_id))


# -- the webhook ----------------------------------------------------------------------------------------

def test_a_2xx_accepts_and_the_request_carries_its_id_and_json() -> None:
    with provider_server(Answer(202)) as server:
        assert post(WebhookProvider(url=server.url)) == Attempt(True)
    [got] = server.received
    assert got.path == "/shoal" and got.body == BODY
    assert got.headers["content-type"] == "application/json"
    assert got.headers["idempotency-key"] == "workers-1"
    assert "authorization" not in got.headers


def test_a_500_is_an_error_and_the_retry_with_the_same_id_is_accepted() -> None:
    with provider_server(Answer(500, "out of machines"), Answer(200)) as server:
        first = post(WebhookProvider(url=server.url))
        assert not first.ok
        assert "answered 500" in first.error and "out of machines" in first.error
        assert post(WebhookProvider(url=server.url)).ok
    assert [r.headers["idempotency-key"] for r in server.received] == ["workers-1", "workers-1"]


def test_no_answer_within_the_timeout_is_an_error() -> None:
    with provider_server(Answer(HANG)) as server:
        attempt = post(WebhookProvider(url=server.url, timeout_seconds=0.3))
    assert not attempt.ok and "no answer within 0.3s" in attempt.error


def test_nobody_listening_is_an_error() -> None:
    with provider_server() as server:
        url = server.url
    attempt = post(WebhookProvider(url=url))
    assert not attempt.ok and url in attempt.error and "onnect" in attempt.error


def test_redirects_are_not_followed() -> None:
    moved = Answer(307, headers=(("Location", "http://127.0.0.1:1/elsewhere"),))
    with provider_server(moved, Answer(200)) as server:
        attempt = post(WebhookProvider(url=server.url))
    assert not attempt.ok
    assert "not followed" in attempt.error and "/elsewhere" in attempt.error
    assert len(server.received) == 1


def test_the_bearer_token_is_read_at_every_attempt_and_never_in_an_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-one\n")
    echo = Answer(401, "bad credentials: {authorization}")
    with provider_server(echo, Answer(200)) as server:
        webhook = WebhookProvider(url=server.url, token_file=str(token))
        refused = post(webhook)
        token.write_text("s3cret-two\n")  # rotated between attempts
        assert post(webhook).ok
    assert [r.headers["authorization"] for r in server.received] == ["Bearer s3cret-one", "Bearer s3cret-two"]
    assert not refused.ok and "401" in refused.error and "s3cret" not in refused.error
    assert "Bearer <token>" in refused.error


def test_an_unreadable_or_empty_token_file_sends_nothing(tmp_path: Path) -> None:
    with provider_server() as server:
        missing = post(WebhookProvider(url=server.url, token_file=str(tmp_path / "nope")))
        (tmp_path / "empty").write_text("\n")
        empty = post(WebhookProvider(url=server.url, token_file=str(tmp_path / "empty")))
    assert not missing.ok and "cannot read token_file" in missing.error and "nope" in missing.error
    assert not empty.ok and "is empty" in empty.error
    assert server.received == []


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA; ``agent.pem`` serves as the provider's certificate, ``scheduler.pem`` is the client's."""
    directory = tmp_path_factory.mktemp("pki")
    certs.init_pki(directory, hosts=["127.0.0.1"])
    return directory


def server_tls(pki: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "agent.pem", pki / "agent-key.pem")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_mtls_with_a_ca_and_a_client_certificate(pki: Path) -> None:
    with provider_server(Answer(200), tls=server_tls(pki)) as server:
        webhook = WebhookProvider(url=server.url, ca_file=str(pki / "ca.pem"),
                                  cert_file=str(pki / "scheduler.pem"),
                                  key_file=str(pki / "scheduler-key.pem"))
        assert post(webhook) == Attempt(True)
    [got] = server.received
    assert "commonName=shoal-scheduler" in got.client_cert_subject


def test_tls_refusals_say_why(pki: Path) -> None:
    with provider_server(Answer(200), tls=server_tls(pki)) as server:
        untrusted = post(WebhookProvider(url=server.url))  # the system's CAs do not know ours
        anonymous = post(WebhookProvider(url=server.url, ca_file=str(pki / "ca.pem")))
        bad_files = post(WebhookProvider(url=server.url, ca_file=str(pki / "missing.pem")))
    assert not untrusted.ok and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
    assert not anonymous.ok and "client certificate" in anonymous.error  # the server requires one
    assert not bad_files.ok and f"cannot read ca_file {pki / 'missing.pem'}: no such file" in bad_files.error
    assert server.received == []


def test_a_tls_alert_on_the_first_read_is_an_error_that_says_why() -> None:
    # TLS 1.3 servers check the client's certificate after the handshake, so the refusal can arrive on
    # the first read as a bare ssl.SSLError that httpx does not wrap (which of the two paths a real
    # server takes is a race; this pins the second)
    def alert(request: httpx.Request) -> httpx.Response:
        raise ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")

    url = "https://provider.example/shoal"
    attempt = asyncio.run(post_webhook(WebhookProvider(url=url), BODY, request_id="workers-1",
                                       transport=httpx.MockTransport(alert)))
    assert not attempt.ok and attempt.error.startswith(url)
    assert "CERTIFICATE_REQUIRED" in attempt.error and "set cert_file and key_file" in attempt.error


# -- the command ----------------------------------------------------------------------------------------

def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return str(path)


def run(command: CommandProvider, body: bytes = BODY) -> Attempt:
    return asyncio.run(run_command(command, body, request_id="workers-7", kind="scale_out", group="workers"))


def test_exit_0_accepts_with_the_json_on_stdin_and_a_clean_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = script(tmp_path, "ok", f'cat > {out}.json\nenv > {out}.env\n')
    os.environ["SHOAL_TEST_SECRET"] = "not for the command"
    try:
        assert run(CommandProvider(argv=(argv,))) == Attempt(True)
    finally:
        del os.environ["SHOAL_TEST_SECRET"]
    assert Path(f"{out}.json").read_bytes() == BODY
    env = dict(line.split("=", 1) for line in Path(f"{out}.env").read_text().splitlines())
    env.pop("PWD", None), env.pop("SHLVL", None), env.pop("_", None)  # the shell's own
    assert env == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "LANG": "C.UTF-8", "SHOAL_REQUEST_ID": "workers-7", "SHOAL_REQUEST_KIND": "scale_out",
                   "SHOAL_GROUP": "workers"}


def test_a_failing_command_gives_its_status_and_stderr_tail(tmp_path: Path) -> None:
    argv = script(tmp_path, "no", 'cat >/dev/null\necho "quota exceeded for pool workers" >&2\nexit 3\n')
    attempt = run(CommandProvider(argv=(argv, "--pool", "workers")))
    assert not attempt.ok
    assert "exited with status 3" in attempt.error and "quota exceeded for pool workers" in attempt.error
    long = script(tmp_path, "long", 'i=0; while [ $i -lt 500 ]; do echo "line $i" >&2; i=$((i+1)); done\n'
                                    'exit 1\n')
    attempt = run(CommandProvider(argv=(long,)))
    assert "line 499" in attempt.error and "line 0 " not in attempt.error  # the tail, bounded


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    argv = script(tmp_path, "slow", f'sleep 1000 &\necho $! > {pid_file}\nwait\n')
    attempt = run(CommandProvider(argv=(argv,), timeout_seconds=2))
    assert not attempt.ok and "no exit within 2s (killed)" in attempt.error
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # reaped by init once killed
        time.sleep(0.02)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_missing_command_or_one_that_ignores_stdin(tmp_path: Path) -> None:
    missing = run(CommandProvider(argv=(str(tmp_path / "absent"),)))
    assert not missing.ok and "cannot run" in missing.error and "absent" in missing.error
    deaf = script(tmp_path, "deaf", "exit 0\n")
    assert run(CommandProvider(argv=(deaf,)), body=b"x" * (1 << 20)).ok  # a closed stdin is not a failure


# -- both -----------------------------------------------------------------------------------------------

def test_both_targets_get_every_attempt_and_both_must_accept(tmp_path: Path) -> None:
    marker = tmp_path / "accept"
    argv = script(tmp_path, "maybe",
                  f'cat > /dev/null\n[ -e {marker} ] || {{ echo "not yet" >&2; exit 1; }}\n')
    request = ProviderRequest(id="workers-3", kind=ProviderRequestKind.SCALE_OUT, created_at=0.0, count=1,
                              shape=HostShape(cpu_millis=1000, memory_bytes=1 << 30))

    async def attempt(url: str) -> Attempt:
        group = HostGroupSpec(name=GroupName("workers"), max_hosts=3, webhook=WebhookProvider(url=url),
                              command=CommandProvider(argv=(argv,)))
        return await ProviderClient().deliver(request, group=group, hosts={})

    with provider_server(Answer(200)) as server:
        first = asyncio.run(attempt(server.url))
        marker.touch()
        second = asyncio.run(attempt(server.url))
    assert not first.ok and first.error.startswith("command: ") and "not yet" in first.error
    assert second.ok
    assert [json.loads(r.body)["request_id"] for r in server.received] == ["workers-3", "workers-3"]
