"""The keeper's pure parts: its command line and its restart backoff."""

from __future__ import annotations

import pytest

from agent.runtime.supervisor.keeper import BACKOFF_MAX, parse_args, respawn_delay


def test_arguments() -> None:
    opts = parse_args(["--root", "/r", "--launcher=x:y", "--idle-grace", "2.5"])
    assert (opts.root, opts.launcher, opts.idle_grace, opts.resume_fd, opts.listen_fd) == (
        "/r", "x:y", 2.5, None, None)
    resumed = parse_args(["--root=/r", "--resume-fd", "7", "--listen-fd", "8"])
    assert (resumed.resume_fd, resumed.listen_fd) == (7, 8)


@pytest.mark.parametrize("argv", [
    [], ["--root"], ["--root", ""], ["--root", "/r", "--bogus", "1"], ["--root", "/r", "--resume-fd", "7"],
    ["--root", "/r", "--idle-grace", "x"],
])
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_args(argv)


def test_restart_backoff_doubles_and_is_capped() -> None:
    assert respawn_delay(0) == 0.0
    assert [respawn_delay(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert respawn_delay(50) == BACKOFF_MAX
