"""When the leader brings its placement view up to date between the passes that place.

A placing pass builds its view from the last one (``ViewCache``): hosts whose inputs did not change are
kept, the rest counted again. What keeps the cache close to the cluster between placing passes used to
be the safety net alone (a full pass that places nothing refreshes the cache), which is spaced by its
own cost (``FULL_PASS_SHARE``): a new term's first nets, long because everything is cold, space the next
by one or two minutes, and whatever changes meanwhile (replicas starting on every host after a rollout
or a term begun while placing, hosts reconnecting) waits for the next placing pass — a mass failure's.
One found the view cold for all 5,000 hosts and decided for 6.0 s instead of about 2 (docs/scaling.md,
parts 37 and 38).

So a pass that places nothing also refreshes the cache once it is due: when a pass has run since the
last refresh (every change to the view's inputs wakes one), at least ``VIEW_REFRESH_S`` after it, and
spaced so that refreshing holds the loop at most ``VIEW_SHARE`` of the time (a refresh that counted
every host again for 3 s waits 30 s for the next). A refresh with nothing changed costs about 25 ms of
cpu at 100,000 replicas on 5,000 hosts (``bench/pass_cost.py``): every 10 s, a quarter of a percent.
The controller's loop wakes for a refresh due (``due``), so one comes even if no pass would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VIEW_REFRESH_S = 10.0  # a view brought up to date this long ago, with passes since, is refreshed
VIEW_SHARE = 0.1       # ... at most this share of the time (a refresh's cost spaces the next)


@dataclass
class ViewPace:
    """When the next refresh of a view cache is due, from when and at what cost it was last brought up
    to date (by a refresh, or by a placing pass's build) and whether a pass ran since."""

    interval: float = VIEW_REFRESH_S
    share: float = VIEW_SHARE
    at: float = 0.0       # when the view was last brought up to date (the end of it, time.time())
    cost: float = 0.0     # how long that held the loop
    stale: bool = False   # a pass ran since, which may have changed its inputs

    def brought_up(self, *, at: float, cost: float) -> None:
        self.at, self.cost, self.stale = at, cost, False

    def passed(self) -> None:
        """A pass ran and did not refresh the view after its decisions."""
        self.stale = True

    def due(self) -> float:
        """When the next refresh is due (time.time()); never while no pass ran since the last."""
        if not self.stale:
            return math.inf
        return self.at + max(self.interval, self.cost / self.share)


__all__ = ["VIEW_REFRESH_S", "VIEW_SHARE", "ViewPace"]
