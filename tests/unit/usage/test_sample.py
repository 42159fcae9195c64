"""Parsers and rate arithmetic of agent.usage.sample and agent.usage.host.parse_meminfo."""

from __future__ import annotations

import pytest

from agent.usage import sample
from agent.usage.host import parse_meminfo

from .builders import NET_DEV_HEADER, net_dev_line


def test_net_dev_leaves_out_loopback_and_sorts_interfaces() -> None:
    text = (NET_DEV_HEADER
            + net_dev_line("lo", rx_bytes=999, rx_packets=9, tx_bytes=999, tx_packets=9)
            + net_dev_line("eth1", rx_bytes=10, rx_packets=1, tx_bytes=20, tx_packets=2)
            + net_dev_line("eth0", rx_bytes=1500, rx_packets=3, tx_bytes=600, tx_packets=4))
    got = sample.parse_net_dev(text)
    assert [i.name for i in got] == ["eth0", "eth1"]
    assert got[0] == sample.InterfaceCounters(name="eth0", rx_bytes=1500, rx_packets=3, tx_bytes=600,
                                              tx_packets=4)
    totals = sample.NetworkTotals.of(got)
    assert (totals.rx_bytes, totals.rx_packets, totals.tx_bytes, totals.tx_packets) == (1510, 4, 620, 6)


def test_net_dev_skips_malformed_lines_and_handles_glued_counters() -> None:
    # The kernel pads names to 6 columns; a long name makes "name:counter" one token.
    text = NET_DEV_HEADER + "veth1234567:  5 1 0 0 0 0 0 0 7 2 0 0 0 0 0 0\n" + "bogus: 1 2 3\n" + "junk\n"
    got = sample.parse_net_dev(text)
    assert got == (sample.InterfaceCounters("veth1234567", 5, 1, 7, 2),)


def test_read_network_of_a_vanished_pid_is_empty(tmp_path: pytest.TempPathFactory) -> None:
    assert sample.read_network(123456, proc=tmp_path) == ()  # type: ignore[arg-type]


def test_proc_stat_busy_excludes_idle_and_iowait() -> None:
    text = "cpu  100 5 20 1000 50 1 2 3 7 0\ncpu0 1 1 1 1 1 1 1 1 1 1\nintr 1\n"
    got = sample.parse_proc_stat(text)
    assert got.total_ticks == 100 + 5 + 20 + 1000 + 50 + 1 + 2 + 3
    assert got.busy_ticks == got.total_ticks - 1000 - 50
    with pytest.raises(ValueError):
        sample.parse_proc_stat("intr 1\n")


@pytest.mark.parametrize(("prev", "now", "wall", "expected"), [
    (10.0, 10.5, 1.0, 0.5),
    (10.0, 12.0, 1.0, 2.0),
    (10.0, 10.0, 1.0, 0.0),
    (10.0, 3.0, 1.0, 0.0),  # counter reset: the group was re-created
    (10.0, 11.0, 0.0, 0.0),  # empty interval
])
def test_cores_used(prev: float, now: float, wall: float, expected: float) -> None:
    assert sample.cores_used(prev_seconds=prev, now_seconds=now, wall_seconds=wall) == pytest.approx(expected)


@pytest.mark.parametrize(("cores", "limit", "expected"), [
    (0.5, 500, 1.0), (0.25, 1000, 0.25), (1.5, 2000, 0.75), (0.5, None, 0.0), (0.5, 0, 0.0),
])
def test_fraction_of_limit(cores: float, limit: int | None, expected: float) -> None:
    assert sample.fraction_of_limit(cores, limit) == pytest.approx(expected)


def test_meminfo_in_bytes() -> None:
    got = parse_meminfo("MemTotal:  2048 kB\nMemAvailable:   1024 kB\nHugePages_Total:       3\n")
    assert got == {"MemTotal": 2048 * 1024, "MemAvailable": 1024 * 1024, "HugePages_Total": 3}
