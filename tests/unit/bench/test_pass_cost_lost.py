"""``bench/pass_cost.py --lost``: the pass after hosts are lost marks their replicas and places as many
replacements elsewhere, and the passes end with one that writes nothing (what the benchmark times)."""

from __future__ import annotations

import asyncio
import gc

from bench import pass_cost


def test_a_mass_failure_is_marked_and_replaced_in_the_first_pass_and_settles() -> None:
    passes = pass_cost.after_loss(400, 20, 2, "")
    lost = 2 * 400 // 20  # replicas are dealt round-robin over the hosts: 20 on each lost host
    assert passes[0]["writes"] == 2 * lost   # each marked stopping, and a replacement placed
    assert passes[0]["actions"] == lost      # each replacement launched
    assert passes[0]["view_s"] > 0           # the pass built a placement view
    assert passes[-1]["writes"] == 0 and len(passes) <= 3
    # Its launches were handed over during its commit, in order, within the pass.
    first, middle, last = (passes[0][k] for k in ("launched_first_s", "launched_p50_s", "launched_last_s"))
    assert 0 < first <= middle <= last <= passes[0]["wall_s"]
    assert "launched_p50_s" not in passes[-1]  # a pass that launches nothing says nothing of it


def test_hosts_lost_after_the_first_pass_are_marked_by_the_second() -> None:
    passes = pass_cost.after_loss(400, 20, 2, "", later=1)
    per_host = 400 // 20
    assert passes[0]["writes"] == 2 * 2 * per_host  # the first two hosts' replicas only
    # The third host's: its own, and the replacements the first pass put there.
    assert passes[1]["actions"] >= per_host and passes[1]["writes"] == 2 * passes[1]["actions"]
    assert passes[1]["view_s"] > 0                   # placed against a view brought up to date
    assert passes[-1]["writes"] == 0 and len(passes) <= 4


def test_the_collectors_pauses_within_each_pass_are_timed() -> None:
    saved = gc.get_threshold()
    gc.set_threshold(100, 10, 10)  # collections the marking pass cannot avoid triggering
    try:
        passes = pass_cost.after_loss(400, 20, 2, "")
    finally:
        gc.set_threshold(*saved)
    assert passes[0]["collections"] > 0 and passes[0]["gc_s"] > 0
    assert passes[0]["gc_s"] < passes[0]["wall_s"]


def test_hosts_registered_again_before_the_loss_have_new_records_and_the_same_outcome() -> None:
    records, sessions = pass_cost.cluster(400, 20)
    ctl = asyncio.run(pass_cost.controller(records, sessions))
    assert ctl.mirror is not None
    before = dict(ctl.mirror.hosts)
    pass_cost.reregister(ctl, 5)
    again = [h for h in before if ctl.mirror.hosts[h] is not before[h]]
    assert len(again) == 5
    assert all(ctl.mirror.hosts[h].revision == before[h].revision + 1 for h in again)
    assert ctl.mirror.dirt.hosts == set()  # nothing a pass reads changed
    passes = pass_cost.after_loss(400, 20, 2, "", reregistered=10)
    assert passes[0]["writes"] == 2 * 2 * 400 // 20 and passes[-1]["writes"] == 0


def test_hosts_with_new_committed_figures_before_the_loss_change_the_view_and_not_the_outcome() -> None:
    _, sessions = pass_cost.cluster(400, 20)
    before = {h: s.info.cpu_committed_millis for h, s in sessions.items()}
    pass_cost.resize(sessions, 5)
    assert sum(s.info.cpu_committed_millis != before[h] for h, s in sessions.items()) == 5
    passes = pass_cost.after_loss(400, 20, 2, "", resized=10)
    assert passes[0]["writes"] == 2 * 2 * 400 // 20 and passes[-1]["writes"] == 0


def test_hosts_whose_statuses_are_recorded_again_before_the_loss_have_the_same_outcome() -> None:
    records, sessions = pass_cost.cluster(400, 20)
    ctl = asyncio.run(pass_cost.controller(records, sessions))
    assert ctl.mirror is not None
    before = dict(ctl.mirror.statuses)
    pass_cost.relist(ctl, 5)
    again = [h for h in before if ctl.mirror.statuses[h] is not before[h]]
    assert len(again) == 5 and all(ctl.mirror.statuses[h].since != before[h].since for h in again)
    passes = pass_cost.after_loss(400, 20, 2, "", relisted=10)
    assert passes[0]["actions"] == 2 * 400 // 20 and passes[-1]["writes"] == 0


def test_sessions_unlisted_at_the_terms_first_pass_list_again_and_the_outcome_is_the_same() -> None:
    _, sessions = pass_cost.cluster(400, 20)
    listed = pass_cost.unlist(sessions, 5)
    assert len(listed) == 5 and not any(sessions[h].observation.complete for h in listed)
    passes = pass_cost.after_loss(400, 20, 2, "", unlisted=10)
    assert passes[0]["actions"] == 2 * 400 // 20 and passes[-1]["writes"] == 0
