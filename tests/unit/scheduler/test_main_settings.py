"""``shoal-scheduler serve`` flags: plain TCP only on loopback (issue 12, finding 10); the elastic loop's
interval; the share of hosts placement scores; the hang limit of a leader's event loop."""

from __future__ import annotations

import re

import pytest

from scheduler import __main__ as main


def settings(*argv: str) -> main.Settings:
    args = main.build_parser().parse_args(["serve", "--etcd", "http://127.0.0.1:2379", *argv])
    return main.settings_from_args(args)


def test_insecure_tcp_on_loopback_is_allowed() -> None:
    s = settings("--listen", "127.0.0.1:7400", "--insecure-tcp")
    assert s.insecure_tcp and s.listen == ("127.0.0.1:7400",)
    assert settings("--listen", "[::1]:7400", "--insecure-tcp").insecure_tcp


@pytest.mark.parametrize("address", ["0.0.0.0:7400", "10.0.0.1:7400", "scheduler.example:7400", "[::]:7400"])
def test_insecure_tcp_anywhere_else_is_refused(address: str) -> None:
    message = f"--insecure-tcp is for loopback only, and {address} is not"
    with pytest.raises(SystemExit, match=re.escape(message)):
        settings("--listen", address, "--insecure-tcp")


def test_the_elastic_interval_defaults_to_a_second_and_has_a_floor() -> None:
    assert settings("--insecure-tcp").elastic_interval == 1.0
    assert settings("--insecure-tcp", "--elastic-interval", "0.25").elastic_interval == 0.25
    with pytest.raises(SystemExit, match=re.escape("--elastic-interval must be at least 0.1 s")):
        settings("--insecure-tcp", "--elastic-interval", "0")


def test_the_share_of_hosts_placement_scores_is_adaptive_unless_set() -> None:
    assert settings("--insecure-tcp").percentage_of_hosts_to_score == 0
    flag = "--percentage-of-hosts-to-score"
    assert settings("--insecure-tcp", flag, "100").percentage_of_hosts_to_score == 100
    for bad in ("-1", "101"):
        with pytest.raises(SystemExit, match=re.escape(f"{flag} must be 0 (adaptive) to 100")):
            settings("--insecure-tcp", flag, bad)


@pytest.mark.parametrize(("flag", "attr", "default", "given", "bads", "message"), [
    ("--session-workers", "session_workers", 0, 2, ("-1", "65"), "must be 0 (in-process) to 64"),
    ("--etcd-max-txn-ops", "etcd_max_txn_ops", 128, 1024, ("1", "10001"), "must be 2 to 10000"),
    ("--max-lost-share", "max_lost_share", 0.5, 1.0, ("0", "-0.1", "1.5"),
     "must be more than 0 and at most 1"),
    ("--agent-keepalive", "agent_keepalive", 0.0, 1.0, ("0.5", "-1", "31"), "must be 0 (off) or 1 to 30"),
    ("--leader-hang-limit", "leader_hang_limit", 60.0, 0.0, ("0.5", "-1", "nan"),
     "must be 0 (never) or at least 1 second"),
], ids=["sessions in process unless workers are asked for", "etcd's default operations a transaction",
        "lost hosts held past half", "no keepalive pings unless asked for",
        "a hung leader lets its term go after a minute"])
def test_a_setting_has_its_default_takes_a_value_and_refuses_one_out_of_bounds(
        flag: str, attr: str, default: float, given: float, bads: tuple[str, ...], message: str) -> None:
    assert getattr(settings("--insecure-tcp"), attr) == default
    assert getattr(settings("--insecure-tcp", flag, str(given)), attr) == given
    for bad in bads:
        with pytest.raises(SystemExit, match=re.escape(f"{flag} {message}")):
            settings("--insecure-tcp", flag, bad)


def test_registration_refreshes_are_spread_by_half_unless_told_otherwise() -> None:
    assert settings("--insecure-tcp").registration_spread == 0.5
    assert settings("--insecure-tcp", "--registration-spread", "0").registration_spread == 0.0
    message = "--registration-spread must be at least 0 and below 1"
    for bad in ("-0.1", "1", "2"):
        with pytest.raises(SystemExit, match=re.escape(message)):
            settings("--insecure-tcp", "--registration-spread", bad)


def test_usage_reports_every_second_unless_asked_and_the_heartbeat_follows_them() -> None:
    default = settings("--insecure-tcp")  # auto: every second up to 1,700 hosts per process
    assert (default.usage_interval, default.usage_reports_per_second, default.heartbeat_timeout) == (
        None, 1700.0, 2.0)
    assert settings("--insecure-tcp", "--usage-interval", "auto").usage_interval is None
    every = settings("--insecure-tcp", "--usage-interval", "0")
    assert (every.usage_interval, every.heartbeat_timeout) == (0.0, 2.0)
    assert settings("--insecure-tcp", "--usage-reports-per-second", "500").usage_reports_per_second == 500
    with pytest.raises(SystemExit, match=re.escape("--usage-reports-per-second must be more than 0")):
        settings("--insecure-tcp", "--usage-reports-per-second", "0")
    with pytest.raises(SystemExit):  # argparse: "expected auto or seconds, got 'often'"
        settings("--insecure-tcp", "--usage-interval", "often")
    stretched = settings("--insecure-tcp", "--usage-interval", "3")
    assert (stretched.usage_interval, stretched.heartbeat_timeout) == (3.0, 6.0)  # two reports missed
    explicit = settings("--insecure-tcp", "--usage-interval", "3", "--heartbeat-timeout", "5")
    assert explicit.heartbeat_timeout == 5
    with pytest.raises(SystemExit, match=re.escape("--heartbeat-timeout must be at least 1.5 times the time "
                                                   "between usage reports (4.5 seconds")):
        settings("--insecure-tcp", "--usage-interval", "3", "--heartbeat-timeout", "4")
    with pytest.raises(SystemExit, match=re.escape("(1.5 seconds: agents report every 1 s)")):
        settings("--insecure-tcp", "--heartbeat-timeout", "1")
    for bad in ("-1", "31"):
        with pytest.raises(SystemExit, match=re.escape("--usage-interval must be auto or 0 to 30 seconds")):
            settings("--insecure-tcp", "--usage-interval", bad)
