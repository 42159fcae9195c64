"""``bench.scale.patiently``: a call etcd pushes back ("too many requests", "request timed out") is made
again after a pause; any other error is raised at once; a call refused every time ends in an error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aetcd
import pytest

from bench import scale


def failing(errors: list[Exception], value: str = "done") -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return value

    return calls, call


def test_a_call_pushed_back_is_made_again_until_it_goes_through() -> None:
    calls, call = failing([aetcd.exceptions.ConnectionFailedError("etcdserver: request timed out"),
                           aetcd.exceptions.ClientError("etcdserver: too many requests")])
    assert asyncio.run(scale.patiently(call, "a batch")) == "done"
    assert len(calls) == 3


def test_any_other_error_is_raised_at_once() -> None:
    calls, call = failing([aetcd.exceptions.ClientError("etcdserver: permission denied")])
    with pytest.raises(aetcd.exceptions.ClientError, match="permission denied"):
        asyncio.run(scale.patiently(call, "a batch"))
    assert len(calls) == 1


def test_a_call_refused_every_time_ends_in_an_error_that_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "TOO_MANY_RETRIES", 3)
    calls, call = failing([aetcd.exceptions.ClientError("etcdserver: too many requests")] * 5)
    with pytest.raises(RuntimeError, match="refused a clean-up delete 3 times"):
        asyncio.run(scale.patiently(call, "a clean-up delete"))
    assert len(calls) == 3
