"""``record_decision``: seeding, recommendations, scale events, pruning; and decisions made every
second over time, the way the scheduler's loop will make them."""

from __future__ import annotations

from dataclasses import replace

from scheduler.autoscale import hpa
from tests.unit.scheduler.autoscale.builders import cpu, decision_input, policy, replicas, value

AT_TARGET = cpu(50, replicas(500, 500, 500, 500, 500))


def busy(current: int) -> hpa.ValueMetric:
    """A service-level metric asking for far more replicas than any max."""
    return value(1000, 1_000_000, ready=current)


def idle(current: int) -> hpa.ValueMetric:
    """A service-level metric asking for 1 replica out of 10."""
    return value(1000, 100, ready=current)


def run(inp: hpa.DecisionInput, *, load: str, start: float,
        seconds: int) -> tuple[list[int], hpa.DecisionInput]:
    """Decide and act every second from ``start``; the replica count after each decision."""
    counts = []
    for t in range(seconds):
        now = start + t
        metric = busy(inp.current_replicas) if load == "busy" else idle(inp.current_replicas)
        inp = replace(inp, metrics=(metric,))
        d = hpa.decide(inp, now=now)
        history = hpa.record_decision(inp.history, inp, d, now=now)
        assert d.desired_replicas is not None
        inp = replace(inp, current_replicas=d.desired_replicas, history=history)
        counts.append(d.desired_replicas)
    return counts, inp


def changes(counts: list[int]) -> list[tuple[int, int]]:
    """(second, new count) at each change."""
    return [(t, c) for t, c in enumerate(counts) if t == 0 or c != counts[t - 1]]


def test_default_behavior_scales_up_3_7_14_28_40_every_15_seconds() -> None:
    inp = decision_input(busy(3), current=3, max_replicas=40, behavior=hpa.Behavior())
    counts, _ = run(inp, load="busy", start=1000.0, seconds=50)
    # Kubernetes' documented sequence; an event exactly 15 s old is out of its period.
    assert changes(counts) == [(0, 7), (15, 14), (30, 28), (45, 40)]


def test_default_behavior_scales_down_once_the_window_has_passed() -> None:
    inp = decision_input(busy(10), current=10, max_replicas=10, behavior=hpa.Behavior())
    _, inp = run(inp, load="busy", start=0.0, seconds=5)  # the last recommendation of 10 at t = 4
    counts, _ = run(inp, load="idle", start=5.0, seconds=310)
    # 0.1 of target 1 on 10 replicas asks for 1; held by the 10s of t ≤ 4 until they are 300 s old.
    assert changes(counts) == [(0, 10), (299, 1)]


def test_legacy_window_holds_one_second_longer() -> None:
    inp = decision_input(busy(10), current=10, max_replicas=10)
    _, inp = run(inp, load="busy", start=0.0, seconds=5)
    counts, _ = run(inp, load="idle", start=5.0, seconds=310)
    # Legacy counts a recommendation exactly as old as the window.
    assert changes(counts) == [(0, 10), (300, 1)]


def test_record_seeds_then_adds_the_recommendation_and_the_scale_event() -> None:
    inp = decision_input(cpu(60, replicas(1820, 1820, 1820)), current=3, max_replicas=20,
                         behavior=hpa.Behavior())
    d = hpa.decide(inp, now=50.0)
    h = hpa.record_decision(hpa.History(), inp, d, now=50.0)
    assert h.recommendations == (hpa.Recommendation(replicas=3, at=50.0),
                                 hpa.Recommendation(replicas=10, at=50.0))
    assert h.scale_up_events == (hpa.ScaleEvent(change=4, at=50.0),)
    assert h.scale_down_events == ()


def test_no_scale_event_without_behavior_or_when_not_applied() -> None:
    inp = decision_input(cpu(60, replicas(1820, 1820, 1820)), current=3, max_replicas=20)
    d = hpa.decide(inp)
    assert hpa.record_decision(inp.history, inp, d).scale_up_events == ()
    inp = replace(inp, behavior=hpa.Behavior())
    d = hpa.decide(inp)
    h = hpa.record_decision(inp.history, inp, d, applied=False)
    assert (h.scale_up_events, [r.replicas for r in h.recommendations]) == ((), [3, 10])


def test_a_scale_down_is_recorded_with_a_positive_change() -> None:
    inp = decision_input(cpu(50, replicas(100, 100, 100, 100)), current=4, behavior=hpa.Behavior(),
                         downscale_stabilization_seconds=0)
    d = hpa.decide(inp)
    h = hpa.record_decision(inp.history, inp, d)
    assert (d.desired_replicas, h.scale_down_events) == (1, (hpa.ScaleEvent(change=3, at=0.0),))


def test_no_recommendation_is_recorded_without_a_decision_from_the_metrics() -> None:
    inp = decision_input(cpu(50, ()), current=12, max_replicas=10, behavior=hpa.Behavior())
    d = hpa.decide(inp)
    h = hpa.record_decision(inp.history, inp, d)
    # Only the seed; the move to max is a scale event.
    assert ([r.replicas for r in h.recommendations], h.scale_down_events) == (
        [12], (hpa.ScaleEvent(change=2, at=0.0),))


def test_recommendations_older_than_the_longest_window_are_dropped() -> None:
    behavior = hpa.Behavior(scale_up=hpa.scale_up_rules(stabilization_window_seconds=30),
                            scale_down=hpa.scale_down_rules(stabilization_window_seconds=60))
    old = hpa.History(recommendations=tuple(hpa.Recommendation(replicas=5, at=t) for t in (0.0, 40.0, 41.0)))
    inp = decision_input(AT_TARGET, current=5, behavior=behavior, history=old)
    d = hpa.decide(inp, now=101.0)
    h = hpa.record_decision(old, inp, d, now=101.0)
    assert [r.at for r in h.recommendations] == [41.0, 101.0]  # 60 s old is kept (unused), 61 s dropped


def test_legacy_keeps_recommendations_for_its_window() -> None:
    old = hpa.History(recommendations=(hpa.Recommendation(replicas=5, at=0.0),
                                       hpa.Recommendation(replicas=5, at=1.0)))
    inp = decision_input(AT_TARGET, current=5, history=old,
                         downscale_stabilization_seconds=100)
    h = hpa.record_decision(old, inp, hpa.decide(inp, now=101.0), now=101.0)
    assert [r.at for r in h.recommendations] == [1.0, 101.0]


def test_scale_events_are_kept_while_either_direction_can_count_them() -> None:
    # Scale-up periods are 15 s, scale-down 120 s: a scale-up 100 s old still moves the start of the
    # scale-down period, so it is kept (Kubernetes may reuse its slot); one 121 s old is dropped.
    behavior = hpa.Behavior(scale_down=hpa.scale_down_rules(policies=(policy("replicas", 1, 120),)))
    old = hpa.History(recommendations=(hpa.Recommendation(replicas=5, at=0.0),),
                      scale_up_events=(hpa.ScaleEvent(change=2, at=-21.0), hpa.ScaleEvent(change=2, at=0.0)))
    inp = decision_input(AT_TARGET, current=5, behavior=behavior, history=old)
    h = hpa.record_decision(old, inp, hpa.decide(inp, now=100.0), now=100.0)
    assert h.scale_up_events == (hpa.ScaleEvent(change=2, at=0.0),)


def test_history_stays_bounded_over_many_decisions() -> None:
    inp = decision_input(busy(3), current=3, max_replicas=40, behavior=hpa.Behavior())
    _, inp = run(inp, load="busy", start=0.0, seconds=1000)
    # 300 s scale-down window (the longest) at one recommendation a second, plus the one made now.
    assert len(inp.history.recommendations) == 301
    assert inp.history.scale_up_events == ()
