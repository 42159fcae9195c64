from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from agent import config


def settings(*argv: str) -> config.AgentSettings:
    return config.settings_from_args(config.build_parser().parse_args(["serve", *argv]))


def test_defaults() -> None:
    s = settings()
    assert s.listen == (config.DEFAULT_LISTEN,) and s.subnet is None and s.sample_interval == 1.0
    assert s.cgroup_delegate is False and s.cgroup_parent == "shoal"


def test_registry_limits_have_generous_defaults_and_can_be_set() -> None:
    s = settings()
    assert (s.pull_blob_deadline, s.max_layer_size, s.max_unpacked_layer_size, s.max_compression_ratio) == (
        3600.0, 10 << 30, 32 << 30, 100.0)
    s = settings("--pull-blob-deadline", "2m", "--max-layer-size", "1G", "--max-unpacked-layer-size", "4G",
                 "--max-compression-ratio", "50")
    assert (s.pull_blob_deadline, s.max_layer_size, s.max_unpacked_layer_size, s.max_compression_ratio) == (
        120.0, 1 << 30, 4 << 30, 50.0)


def test_cgroup_delegate() -> None:
    s = settings("--cgroup-delegate", "--cgroup-parent", "containers")
    assert s.cgroup_delegate is True and s.cgroup_parent == "containers"


def test_network_labels_metrics() -> None:
    s = settings("--subnet", "10.88.0.0/24", "--bridge", "br-test", "--label", "zone=a", "--label", "gpu=",
                 "--metrics-listen", "127.0.0.1:9100", "--sample-interval", "500ms", "--memory-reserve", "1G")
    assert s.subnet == ipaddress.IPv4Network("10.88.0.0/24") and s.bridge == "br-test"
    assert s.labels == (("zone", "a"), ("gpu", "")) and s.metrics_listen == "127.0.0.1:9100"
    assert s.sample_interval == 0.5 and s.memory_reserve_bytes == 1 << 30


@pytest.mark.parametrize(("argv", "message"), [
    (["--subnet", "10.88.0.1/24"], "invalid --subnet"),
    (["--subnet", "10.88.0.0/31"], "too small"),
    (["--bridge", "a-name-far-too-long"], "invalid --bridge"),
    (["--label", "novalue"], "--label 'novalue': expected KEY=VALUE"),
    (["--label", "zone=a", "--label", "zone=b"], "given twice"),
    (["--sample-interval", "10ms"], "at least 100ms"),
    (["--listen", "0.0.0.0:7070"], "needs mutual TLS"),
    (["--cgroup-parent", "a/b"], "invalid --cgroup-parent"),
    (["--cgroup-delegate", "--cgroup-parent", "agent"], "taken by the agent itself"),
    (["--pull-blob-deadline", "soon"], "invalid --pull-blob-deadline 'soon'"),
    (["--pull-blob-deadline", "100ms"], "--pull-blob-deadline must be at least 1s"),
    (["--max-layer-size", "lots"], "invalid --max-layer-size 'lots'"),
    (["--max-unpacked-layer-size", "0"], "must be positive"),
    (["--max-compression-ratio", "nan"], "--max-compression-ratio must be a number of at least 1"),
    (["--max-compression-ratio", "0.5"], "--max-compression-ratio must be a number of at least 1"),
])
def test_bad_flags_are_one_clear_line(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        settings(*argv)


def test_join_advertises_the_first_tcp_listener_or_the_given_address() -> None:
    s = settings("--listen", "127.0.0.5:7070", "--insecure-tcp", "--join", "127.0.0.1:7400,127.0.0.2:7400")
    assert s.join == ("127.0.0.1:7400", "127.0.0.2:7400") and s.advertise == "127.0.0.5:7070"
    s = settings("--listen", "127.0.0.1:7070", "--insecure-tcp", "--join", "localhost:7400",
                 "--advertise", "127.0.0.9:7070")
    assert s.advertise == "127.0.0.9:7070"


def test_an_unreachable_advertise_address_is_refused(tmp_path: Path) -> None:
    for name in ("ca.pem", "agent.pem", "agent-key.pem"):
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit, match=r"cannot advertise '0\.0\.0\.0:7070'"):
        settings("--listen", "0.0.0.0:7070", "--tls-dir", str(tmp_path), "--join", "s:7400")


@pytest.mark.parametrize(("argv", "message"), [
    (["--join", "sched:7400"], "needs a TCP listener the scheduler can reach"),
    (["--listen", "127.0.0.1:7070", "--insecure-tcp", "--join", "nope"], "invalid --join address 'nope'"),
    (["--listen", "0.0.0.0:7070", "--insecure-tcp"], "--insecure-tcp is for loopback only, and 0.0.0.0:7070"),
    (["--listen", "10.0.0.5:7070", "--insecure-tcp"], "--insecure-tcp is for loopback only, and 10.0.0.5"),
    (["--listen", "127.0.0.1:7070", "--insecure-tcp", "--join", "sched:7400"], "and sched:7400 is not"),
    (["--advertise", "h:1"], "--advertise only matters with --join"),
])
def test_join_refusals_say_what_to_do(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        settings(*argv)


def test_disk_flags_have_kubelet_like_defaults_and_can_be_set() -> None:
    s = settings()
    assert (s.disk_pressure_fraction, s.disk_pressure_inodes_fraction) == (0.10, 0.05)
    assert (s.min_free_bytes, s.min_free_fraction) == (1 << 30, 0.05)
    s = settings("--disk-pressure-inodes-below", "2%", "--min-free-space", "512M")
    assert s.disk_pressure_inodes_fraction == 0.02
    assert (s.min_free_bytes, s.min_free_fraction) == (512 << 20, None)
    s = settings("--min-free-space", "10%")
    assert (s.min_free_bytes, s.min_free_fraction) == (None, 0.10)
    assert settings("--min-free-space", "0").min_free_bytes == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--disk-pressure-inodes-below", "many"], "invalid --disk-pressure-inodes-below 'many'"),
    (["--min-free-space", "lots"], "invalid --min-free-space 'lots'"),
    (["--min-free-space", "1G,2G"], "gives two sizes"),
    (["--min-free-space", "5%,6%"], "gives two percentages"),
    (["--min-free-space", "150%"], "invalid --min-free-space"),
    (["--min-free-space", ""], "a size .1G., a percentage .5%. or both"),
])
def test_bad_disk_flags_are_one_clear_line(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        settings(*argv)
