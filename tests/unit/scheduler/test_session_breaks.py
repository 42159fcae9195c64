"""Session breaks are summarised: the first at once, the rest counted by kind into one line per window."""

from __future__ import annotations

import asyncio
import logging

import pytest

from scheduler.session_breaks import SessionBreaks


def test_breaks_are_logged_at_most_once_per_window_with_their_kinds(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    breaks = SessionBreaks(every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="scheduler.session_breaks"):
        breaks.add("heartbeat missed")
        for _ in range(3):
            now[0] += 1
            breaks.add("heartbeat missed")
        breaks.add("UNAVAILABLE")
        assert [r.getMessage() for r in caplog.records] == [
            "1 agent session broke and will relist (heartbeat missed x1)"]
        now[0] = 111.0
        breaks.add("UNAVAILABLE")
    assert caplog.records[-1].getMessage() == \
        "5 agent sessions broke and will relist (heartbeat missed x3, UNAVAILABLE x2)"
    assert breaks.total == {"heartbeat missed": 4, "UNAVAILABLE": 2}


def test_the_windows_breaks_are_logged_when_it_closes_with_no_break_after(
        caplog: pytest.LogCaptureFixture) -> None:
    breaks = SessionBreaks(every=0.05)

    async def scenario() -> None:
        breaks.add("heartbeat missed")
        breaks.add("UNAVAILABLE")
        for _ in range(200):  # bounded: 10 s
            if len(caplog.records) == 2:
                return
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="scheduler.session_breaks"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == [
        "1 agent session broke and will relist (heartbeat missed x1)",
        "1 agent session broke and will relist (UNAVAILABLE x1)"]
