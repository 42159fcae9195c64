"""``bench/follow_cost.py`` at a tiny size against the session's etcd: a follower in a process of its own
applies every change the writes make (each replica's three puts), and says what it cost."""

from __future__ import annotations

import pytest

from bench import follow_cost
from tests.fixtures.etcd import EtcdCluster, etcd  # noqa: F401 - a fixture, found by name

ROOT = str(follow_cost.ROOT)


@pytest.mark.integration
def test_a_follower_applies_every_change_written_and_its_cost_is_counted(etcd: EtcdCluster) -> None:  # noqa: F811
    out = follow_cost.one_round(ROOT, etcd.endpoints, replicas=200)
    assert out["changes"] == 200 * follow_cost.STAGES
    assert out["cpu_s"] > 0 and out["cpu_us_per_change"] > 0
    assert out["caught_up_after_last_write_s"] >= 0
