"""``shoal-scheduler serve`` flags: plain TCP only on loopback (issue 12, finding 10)."""

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
