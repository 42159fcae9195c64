"""A cut network is noticed by the session's keepalive pings (``--agent-keepalive``), not only by missed
usage reports: a session follows a simulated host (bench/sim, with the agent's own server options)
through a TCP forwarder that then swallows every byte both ways without closing anything
(``tests.fixtures.cut_session``). An unanswered HTTP/2 ping ends the stream (``UNAVAILABLE``, "ping
timeout") long before the session's heartbeat timeout, and the agent allowed the pings before the cut on
a single connection. Without ``--agent-keepalive`` a channel sends no keepalive pings."""

from __future__ import annotations

import asyncio

from agent.server_options import MIN_PING_INTERVAL_S
from bench.sim.host import HostSpec, SimHost
from scheduler.agents import CHANNEL_OPTIONS, KEEPALIVE_MIN_S, keepalive_options
from scheduler.model import HostId
from tests.fixtures.cut_session import LONG_S, Cut, assert_noticed_by_keepalive, follow_then_cut
from tests.fixtures.etcd import free_port


def test_the_agent_allows_the_schedulers_shortest_keepalive() -> None:
    assert KEEPALIVE_MIN_S >= 2 * MIN_PING_INTERVAL_S  # room for a ping sent early by the scheduler's timers


def test_keepalive_is_off_unless_asked_for_and_its_answer_waits_two_periods() -> None:
    assert keepalive_options(0) == ()
    assert not any("keepalive" in name or "ping" in name for name, _ in CHANNEL_OPTIONS)
    options = dict(keepalive_options(1.5))
    assert options["grpc.keepalive_time_ms"] == 1500
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"] == 3000
    assert options["grpc.http2.max_pings_without_data"] == 0


def test_a_cut_network_breaks_the_session_by_keepalive_long_before_its_heartbeat() -> None:
    async def scenario() -> Cut:
        spec = HostSpec(name="cut-1", port=free_port(), usage_interval=LONG_S)
        host = SimHost(spec)
        await host.start()
        try:
            return await follow_then_cut(HostId(spec.host_id), spec.port)
        finally:
            await host.stop()

    assert_noticed_by_keepalive(asyncio.run(asyncio.wait_for(scenario(), 60)))
