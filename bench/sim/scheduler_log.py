"""What a scale run keeps of each scheduler's log: the lines that say who led, when and why it stopped.

A run's scheduler logs live in its temp dir and go with it; the tail kept on an error shows the last
seconds only. A term lost in the middle of a run, and what the leader saw just before (refreshes that
failed, hosts it held as lost, sessions breaking in waves), is what a run's figures must be read with.
"""

from __future__ import annotations

import re
import time
from typing import Any

# Substrings of the lines kept, in the scheduler's own words (scheduler/election.py, keepalive.py,
# controller.py, session_breaks.py, __main__.py).
PATTERNS = (
    "election: ",                       # campaigns, terms won and lost, refreshes that failed
    "shoal.scheduler: leading (epoch",  # a term's work begun
    "unreachable past their grace",     # a mass loss held (--max-lost-share)
    "are no longer more than",          # ... and released
    "agent sessions broke",             # sessions broken in waves
)
LINE_CHARS = 300


def election_lines(text: str, *, limit: int = 200, min_breaks: int = 100) -> list[str]:
    """The lines of a scheduler log matching ``PATTERNS`` (session breaks only in waves of at least
    ``min_breaks``), each cut to ``LINE_CHARS``; the first ``limit`` // 2 and last ``limit`` // 2 when
    there are more."""
    kept = []
    for line in text.splitlines():
        if not any(p in line for p in PATTERNS):
            continue
        if "agent sessions broke" in line and _broken(line) < min_breaks:
            continue
        kept.append(line[:LINE_CHARS])
    if len(kept) > limit:
        kept = [*kept[:limit // 2], f"... {len(kept) - limit} lines left out ...", *kept[-(limit // 2):]]
    return kept


def _broken(line: str) -> int:
    """How many sessions a ``session_breaks`` line counts ("401 agent sessions broke ...")."""
    words = line.split("agent sessions broke")[0].split()
    return int(words[-1]) if words and words[-1].isdigit() else 0


__all__ = ["PATTERNS", "election_lines"]


def log_time(line: str) -> float | None:
    """The wall-clock time of a scheduler log line (``%(asctime)s``: local time, milliseconds)."""
    stamp, _, millis = line[:23].partition(",")
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    except ValueError:
        return None


# ``Controller.step``'s line for a pass that held the loop a second or more (scheduler/controller.py).
_LONG_PASS = re.compile(
    r"a (?P<kind>full|scoped) pass held the loop for (?P<held>[\d.]+)s: (?P<build>[\d.]+)s to build, "
    r"(?P<decide>[\d.]+)s to decide \((?P<writes>\d+) writes, (?P<actions>\d+) actions, "
    r"(?P<placing>placing|no placing)\)"
    r"(?:.*?; view: (?P<rebuilt>\d+) hosts rebuilt, (?P<updated>\d+) updated)?")


def long_passes(text: str, *, since: float = 0.0, placing_only: bool = False) -> list[dict[str, Any]]:
    """The passes a scheduler log says held its loop a second or more, from ``since`` (wall clock) on:
    when (``at``), which kind, the seconds to build, decide and in all, writes and actions, and — for a
    pass that placed or refreshed the placement view — the hosts its view counted again (``rebuilt``)
    and brought up to date (``updated``)."""
    found = []
    for line in text.splitlines():
        match = _LONG_PASS.search(line)
        if match is None or (at := log_time(line)) is None or at < since:
            continue
        placing = match["placing"] == "placing"
        if placing_only and not placing:
            continue
        found.append({
            "at": round(at, 3), "kind": match["kind"], "held_s": float(match["held"]),
            "build_s": float(match["build"]), "decide_s": float(match["decide"]),
            "writes": int(match["writes"]), "actions": int(match["actions"]), "placing": placing,
            **({"rebuilt": int(match["rebuilt"]), "updated": int(match["updated"])}
               if match["rebuilt"] is not None else {})})
    return found
