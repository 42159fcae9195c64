"""Long-lived code never waits with ``asyncio.wait_for``.

On Python 3.11 (the version CI and Debian run) ``wait_for`` returns the inner result and drops a
cancellation that arrives just as the inner future completes (gh-86296, fixed in 3.12). A loop that waits
on an event that something pokes often then misses the cancel that ends it: a controller whose term was
over kept running, and the test waiting for it hung until pytest-timeout. ``asyncio.timeout`` has no such
race, so the daemons, the demo and the simulator use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECKED = ("agent", "scheduler", "scripts/demo", "bench/sim")
WAIT_FOR = re.compile(r"\basyncio\.wait_for\(|\bfrom asyncio import .*\bwait_for\b")


def offenders() -> list[str]:
    found = []
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if WAIT_FOR.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_the_checked_trees_exist() -> None:
    for top in CHECKED:
        assert any((ROOT / top).rglob("*.py")), top


def test_no_asyncio_wait_for_in_long_lived_code() -> None:
    assert offenders() == []


def test_the_check_finds_a_wait_for() -> None:
    assert WAIT_FOR.search("        await asyncio.wait_for(event.wait(), 1.0)")
    assert not WAIT_FOR.search("        async with asyncio.timeout(1.0):")


def test_a_cancel_racing_the_wake_up_ends_a_timeout_wait() -> None:
    """The pattern the daemons use: a cancel that arrives as the event is set still ends the loop."""
    async def go() -> bool:
        wake = asyncio.Event()

        async def loop() -> None:
            while True:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await wake.wait()

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the loop is waiting
        wake.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(5.0):
                await task
        return task.cancelled()

    assert asyncio.run(go())
