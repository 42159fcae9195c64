"""How the cluster verbs pick a scheduler (agent/cli/scheduler_client.py): the addresses, failover on
what "cannot be reached" means and only on that, streams that fail before their first message, and the
one-line messages."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from agent.cli import scheduler_client as sc
from agent.cli.client import CliError
from agent.cli.transport import RpcFailure
from proto.scheduler.v1 import scheduler_lite as spb

LIST = spb.SchedulerStub.ListServices_method
WATCH = spb.SchedulerStub.Watch_method


@pytest.mark.parametrize(("flag", "env", "expected"), [
    ("a:1", "b:2", ["a:1"]),
    (None, "b:2, c:3 ,", ["b:2", "c:3"]),
    (None, None, [sc.DEFAULT_SCHEDULER]),
    ("/run/shoal/scheduler.sock,unix:///x.sock", None, ["unix:///run/shoal/scheduler.sock", "unix:///x.sock"]),
])
def test_addresses(flag: str | None, env: str | None, expected: list[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sc.ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(sc.ENV, env)
    assert sc.resolve_addresses(flag) == expected


def test_an_address_list_with_no_address_is_refused() -> None:
    with pytest.raises(CliError, match="no scheduler address in ' , '"):
        sc.resolve_addresses(" , ")


class FakeTransport:
    """Answers with what ``script`` says for its address: a response, or an RpcFailure to raise."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.calls = 0
        self.closed = False

    def unary(self, method: Any, request: Any) -> Any:
        self.calls += 1
        if isinstance(self.outcome, RpcFailure):
            raise self.outcome
        return self.outcome

    def server_stream(self, method: Any, request: Any) -> Iterator[Any]:
        self.calls += 1
        return self._stream()

    def _stream(self) -> Iterator[Any]:
        for item in self.outcome:
            if isinstance(item, RpcFailure):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True


class Scripted(sc.SchedulerConnection):
    def __init__(self, script: dict[str, Any]) -> None:
        super().__init__(list(script))
        self.fakes = {address: FakeTransport(outcome) for address, outcome in script.items()}

    def _transport(self, address: str) -> Any:
        self._transports[address] = self.fakes[address]  # type: ignore[assignment]
        return self.fakes[address]


DOWN = RpcFailure("UNAVAILABLE", "connection refused")
ANSWER = spb.ListServicesResponse(revision=7)


def test_calls_go_to_the_first_address_that_answers_and_stay_there() -> None:
    conn = Scripted({"a:1": DOWN, "b:2": ANSWER, "c:3": ANSWER})
    assert conn.unary(LIST, spb.ListServicesRequest()) == ANSWER
    assert conn.unary(LIST, spb.ListServicesRequest()) == ANSWER
    assert conn.address == "b:2"
    assert [f.calls for f in conn.fakes.values()] == [1, 2, 0]
    assert conn.fakes["a:1"].closed


@pytest.mark.parametrize("failure", [
    RpcFailure("UNAVAILABLE", "etcd is unreachable", {"shoal-error": "StoreUnavailable"}),
    RpcFailure("NOT_FOUND", "no such service: web", {"shoal-error": "NotFound"}),
    RpcFailure("INVALID_ARGUMENT", "web.yaml:3: replcias: unknown key"),
])
def test_an_answer_from_a_scheduler_is_not_failed_over(failure: RpcFailure) -> None:
    conn = Scripted({"a:1": failure, "b:2": ANSWER})
    with pytest.raises(RpcFailure) as info:
        conn.unary(LIST, spb.ListServicesRequest())
    assert info.value is failure and conn.fakes["b:2"].calls == 0


def test_when_no_address_answers_the_failure_names_them_all() -> None:
    conn = Scripted({"a:1": DOWN, "b:2": RpcFailure("UNAVAILABLE", "no answer in 5s")})
    with pytest.raises(RpcFailure) as info:
        conn.unary(LIST, spb.ListServicesRequest())
    assert sc.describe_failure(info.value, conn) == (
        "cannot reach the scheduler at a:1 (connection refused), b:2 (no answer in 5s) "
        "(choose another with --scheduler ADDR or SHOAL_SCHEDULER)")


def test_a_stream_fails_over_before_its_first_message_only() -> None:
    event = spb.WatchEvent(revision=5, type="put")
    conn = Scripted({"a:1": [DOWN], "b:2": [event, DOWN], "c:3": [event]})
    stream = conn.server_stream(WATCH, spb.WatchRequest())
    assert next(stream) == event
    with pytest.raises(RpcFailure):  # broke mid-stream: the caller resumes from its revision
        next(stream)
    assert [f.calls for f in conn.fakes.values()] == [1, 1, 0]


def test_an_empty_stream_ends() -> None:
    conn = Scripted({"a:1": []})
    assert list(conn.server_stream(WATCH, spb.WatchRequest())) == []


def test_a_refused_tcp_connection_is_recognised_without_grpc() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RpcFailure) as info:
        sc._tcp_reachable(f"127.0.0.1:{port}")
    assert (info.value.code, info.value.message) == ("UNAVAILABLE", "connection refused")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        sc._tcp_reachable(f"127.0.0.1:{listening.getsockname()[1]}")  # accepted: no failure


@pytest.mark.parametrize(("address", "parts"), [
    ("10.0.0.1:7400", ("10.0.0.1", 7400)), ("[::1]:7400", ("::1", 7400)),
    ("ipv4:127.0.0.1:1", ("127.0.0.1", 1)),
    ("dns:///sched.example:443", ("sched.example", 443)), ("sched.example", None),
])
def test_host_and_port(address: str, parts: tuple[str, int] | None) -> None:
    assert sc._split_host_port(address) == parts


def test_a_message_hints_at_tls_only_when_a_tcp_scheduler_answered_the_connection() -> None:
    conn = sc.SchedulerConnection(["a:1"])
    failure = RpcFailure("UNAVAILABLE", "a:1 (Socket closed)", {sc.UNREACHABLE: "1"})
    assert "--tls-dir" not in sc.describe_failure(failure, conn)
    conn.refused_plain_tcp = True
    assert sc.describe_failure(failure, conn).endswith(
        "(choose another with --scheduler ADDR or SHOAL_SCHEDULER; a scheduler on TCP requires mTLS: "
        "--tls-dir DIR)")
    assert sc.describe_failure(RpcFailure("ABORTED", "generation moved on"), conn) == "generation moved on"
