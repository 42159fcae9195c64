"""Which etcd call failures the store retries: passing conditions and broken transports, not refusals."""

from __future__ import annotations

import grpc
import pytest

from scheduler.store import etcd


def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "details"), [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
    (grpc.StatusCode.UNKNOWN, "etcdserver: leader changed"),
    # A member that lost quorum, on a linearizable read (seen with two of three members killed).
    (grpc.StatusCode.UNKNOWN, "context deadline exceeded"),
    # A member killed mid-stream: gRPC core's own words, seen on a watch in CI.
    (grpc.StatusCode.INTERNAL, "Internal error from Core"),
    (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
])
def test_passing_failures_are_retried(code: grpc.StatusCode, details: str) -> None:
    assert etcd._is_transient(error(code, details))


@pytest.mark.parametrize(("code", "details"), [
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
    (grpc.StatusCode.INTERNAL, "etcdserver: corrupt cluster"),
])
def test_refusals_are_not(code: grpc.StatusCode, details: str) -> None:
    assert not etcd._is_transient(error(code, details))
