"""The history a service's decisions look back at: its recommendations and its scale events, kept as
HPA's controller keeps them in memory (``recommendations``, ``scaleUpEvents``, ``scaleDownEvents``).

``record`` is the pure update after a decision: seed the recommendations with the current count if
there are none (Kubernetes' ``recordInitialRecommendation``), append the decision's recommendation,
append a scale event when the count changed under a ``behavior`` (the legacy path keeps none), and drop
what no window or period can count any more.

Where Shoal differs, on purpose: Kubernetes overwrites *one* stale entry per decision, so stale entries
can linger, and it reuses the slot of a scale event older than its own direction's longest period even
when the other direction's longer period would still count it. Shoal drops every recommendation older
than the longest stabilization window, and keeps every scale event until no policy of either direction
can count it. The decisions are the same while the behavior is unchanged; the history stays bounded
however often decisions are made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from scheduler.autoscale.behavior import Aged, stabilization_windows
from scheduler.autoscale.inputs import Behavior, History, Recommendation, ScaleEvent


def aged_recommendations(history: History, *, current_replicas: int, now: float) -> list[Aged]:
    """The recommendations as (replicas, age), seeded with the current count made now if there are none."""
    if not history.recommendations:
        return [(current_replicas, 0.0)]
    return [(r.replicas, now - r.at) for r in history.recommendations]


def aged_events(events: Sequence[ScaleEvent], *, now: float) -> list[Aged]:
    return [(e.change, now - e.at) for e in events]


def record(history: History, *, current_replicas: int, recommendation: int | None, new_replicas: int | None,
           behavior: Behavior | None, downscale_stabilization_seconds: int, now: float) -> History:
    """``history`` after a decision made at ``now``: ``recommendation`` is what the metrics asked for (None
    if the decision did not get that far) and ``new_replicas`` the count actually set (None if unchanged
    or not applied)."""
    recommendations = list(history.recommendations)
    if not recommendations:
        recommendations.append(Recommendation(replicas=current_replicas, at=now))
    if recommendation is not None:
        recommendations.append(Recommendation(replicas=recommendation, at=now))
    up = list(history.scale_up_events)
    down = list(history.scale_down_events)
    if behavior is not None and new_replicas is not None and new_replicas != current_replicas:
        if new_replicas > current_replicas:
            up.append(ScaleEvent(change=new_replicas - current_replicas, at=now))
        else:
            down.append(ScaleEvent(change=current_replicas - new_replicas, at=now))

    if behavior is None:
        # The legacy window counts a recommendation exactly as old as the window (``<=``).
        keep_recommendations = float(downscale_stabilization_seconds)
        return History(recommendations=_younger(recommendations, keep_recommendations, now),
                       scale_up_events=tuple(up), scale_down_events=tuple(down))
    keep_recommendations = float(max(stabilization_windows(behavior, downscale_stabilization_seconds)))
    keep_events = float(max(behavior.scale_up.longest_period_seconds,
                            behavior.scale_down.longest_period_seconds))
    return History(recommendations=_younger(recommendations, keep_recommendations, now),
                   scale_up_events=_younger(up, keep_events, now),
                   scale_down_events=_younger(down, keep_events, now))


_Timed = TypeVar("_Timed", Recommendation, ScaleEvent)


def _younger(items: list[_Timed], horizon: float, now: float) -> tuple[_Timed, ...]:
    return tuple(item for item in items if now - item.at <= horizon)
