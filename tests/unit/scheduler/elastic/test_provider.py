"""The provider's document (held to the examples in docs/elastic-hosts.md) and what an attempt does to a
request's delivery state."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from scheduler.elastic.provider import IllegalTransition, after_attempt, backoff, request_json, rfc3339
from scheduler.model import (
    DeliveryState,
    GroupName,
    HostGroupSpec,
    HostId,
    HostRecord,
    HostShape,
    ProviderRequest,
    ProviderRequestKind,
)

DOC = Path(__file__).resolve().parents[4] / "docs" / "elastic-hosts.md"
WORKERS = HostGroupSpec(name=GroupName("workers"), max_hosts=10)


def doc_examples() -> dict[str, dict[str, object]]:
    """The JSON examples of the provider contract, by kind."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    parsed = [json.loads(block) for block in blocks]
    return {str(p["kind"]): p for p in parsed}


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_scale_out_is_the_documented_json() -> None:
    example = doc_examples()["scale_out"]
    request = ProviderRequest(
        id="workers-17", kind=ProviderRequestKind.SCALE_OUT, created_at=at("2026-12-02T10:15:00Z") + 0.4,
        count=2, shape=HostShape(cpu_millis=2000, memory_bytes=4294967296, labels=(("zone", "a"),)),
        reason=str(example["reason"]))
    assert request_json(request, WORKERS, {}) == example
    assert list(request_json(request, WORKERS, {})) == list(example)  # the members in the doc's order


def test_scale_in_names_each_host_as_registered() -> None:
    example = doc_examples()["scale_in"]
    host = HostId("4f1c…")
    request = ProviderRequest(id="workers-18", kind=ProviderRequestKind.SCALE_IN,
                              created_at=at("2026-12-02T10:40:00Z"), hosts=(host,),
                              reason=str(example["reason"]))
    record = HostRecord(id=host, name="worker-3", address="10.0.0.13:7070")
    assert request_json(request, WORKERS, {host: record}) == example
    gone = request_json(request, WORKERS, {})  # forgotten meanwhile: the id is what the provider knows
    assert gone["hosts"] == [{"id": host, "name": "", "address": ""}]


def test_the_group_label_is_always_in_the_shape() -> None:
    request = ProviderRequest(id="workers-1", kind=ProviderRequestKind.SCALE_OUT, created_at=0.0, count=1,
                              shape=HostShape(cpu_millis=1000, memory_bytes=1, labels=(("group", "other"),)))
    assert request_json(request, WORKERS, {})["shape"]["labels"] == {"group": "workers"}
    assert rfc3339(0.0) == "1970-01-01T00:00:00Z"


def pending(**kw: object) -> ProviderRequest:
    return ProviderRequest(id="workers-1", kind=ProviderRequestKind.SCALE_OUT, created_at=100.0, count=1,
                           **kw)  # type: ignore[arg-type]


def test_failures_back_off_from_half_a_second_doubling_to_a_minute() -> None:
    assert [backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(10_000) == 60
    request, now = pending(), 100.0
    waits = []
    for _ in range(9):
        request = after_attempt(request, ok=False, error="answered 500", now=now)
        waits.append(request.next_attempt_at - now)
        now = request.next_attempt_at
    assert waits == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert request.state is DeliveryState.PENDING and request.attempts == 9
    assert request.last_error == "answered 500"


def test_an_accepted_attempt_delivers_and_keeps_the_id() -> None:
    failed = after_attempt(pending(), ok=False, error="x" * 5000, now=100.0)
    assert len(failed.last_error) <= 600  # bounded: it is stored in etcd and shown by describe
    delivered = after_attempt(failed, ok=True, error="", now=101.0)
    assert delivered.state is DeliveryState.DELIVERED and delivered.delivered_at == 101.0
    assert (delivered.id, delivered.attempts, delivered.last_error) == ("workers-1", 2, "")
    with pytest.raises(IllegalTransition):
        after_attempt(delivered, ok=True, error="", now=102.0)
