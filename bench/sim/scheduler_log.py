"""What a scale run keeps of each scheduler's log: the lines that say who led, when and why it stopped.

A run's scheduler logs live in its temp dir and go with it; the tail kept on an error shows the last
seconds only. A term lost in the middle of a run, and what the leader saw just before (refreshes that
failed, hosts it held as lost, sessions breaking in waves), is what a run's figures must be read with.
"""

from __future__ import annotations

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
