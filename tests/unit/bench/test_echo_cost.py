"""``bench/echo_cost.py`` at a tiny size against the session's etcd: a commit of several transactions in
flight, followed by a watch, hears every put as the record written, none decoded."""

from __future__ import annotations

import asyncio

import pytest

from bench import echo_cost
from tests.fixtures.etcd import EtcdCluster, etcd  # noqa: F401 - a fixture, found by name


@pytest.mark.integration
def test_a_pipelined_commits_echoes_are_shared_not_decoded(etcd: EtcdCluster) -> None:  # noqa: F811
    out = asyncio.run(echo_cost.one_round(etcd.endpoints, replicas=600, in_flight=4))
    assert out["txns"] > 1 and out["echoes"] == 600
    assert out["shared"] == 600 and out["decoded"] == 0
    assert out["cpu_us_per_put"] > 0
