"""bench/sim/scheduler_log.py: the lines of a scheduler log a scale run keeps."""

from __future__ import annotations

from bench.sim.scheduler_log import election_lines, log_time, long_passes

LOG = """\
2026-12-04 12:07:40,001 INFO scheduler.election: election: a leads, epoch 12
2026-12-04 12:07:40,002 INFO shoal.scheduler: leading (epoch 12)
2026-12-04 12:08:00,000 INFO scheduler.controller: a full pass held the loop for 2.00s
2026-12-04 12:19:19,385 INFO session-worker scheduler.session_breaks: 401 agent sessions broke and will relist
2026-12-04 12:19:20,000 INFO session-worker scheduler.session_breaks: 3 agent sessions broke and will relist
2026-12-04 12:29:10,000 WARNING scheduler.keepalive: election: keepalive failed after 6.70s
2026-12-04 12:29:11,000 WARNING scheduler.election: election: a lost leadership (epoch 12): no keepalive
2026-12-04 12:29:30,000 WARNING scheduler.controller: 900 of 5000 hosts have been unreachable past their grace
"""


def test_keeps_terms_refreshes_mass_losses_and_waves_of_breaks() -> None:
    kept = election_lines(LOG)
    assert [line[11:19] for line in kept] == ["12:07:40", "12:07:40", "12:19:19", "12:29:10", "12:29:11",
                                              "12:29:30"]
    assert "401 agent sessions" in kept[2]  # the wave; the 3 broken sessions are left out


def test_many_lines_keep_the_first_and_last() -> None:
    text = "\n".join(f"2026-12-04 12:00:00,000 INFO x: election: line {i}" for i in range(500))
    kept = election_lines(text, limit=10)
    assert len(kept) == 11
    assert kept[0].endswith("line 0") and kept[-1].endswith("line 499")
    assert kept[5] == "... 490 lines left out ..."


PASSES = "\n".join((
    "2026-12-07 19:52:49,000 INFO shoal.scheduler: leading (epoch 7)",
    "2026-12-07 19:52:50,000 INFO scheduler.controller: a full pass held the loop for 3.20s: 0.65s to build, "
    "1.76s to decide (0 writes, 0 actions, no placing), 0.79s to write and hand over (and 0.00s waiting for "
    "etcd; 0 replicas recorded ahead, 0 meanwhile); 1000 services in scope; view: 101 hosts rebuilt, "
    "1168 updated",
    "2026-12-07 19:52:55,003 INFO scheduler.controller: a scoped pass held the loop for 6.12s: "
    "0.02s to build, "
    "6.01s to decide (3918 writes, 1959 actions, placing), 0.09s to write and hand over (and 3.15s waiting "
    "for etcd; 0 replicas recorded ahead, 229 meanwhile); 854 services in scope; view: 5000 hosts rebuilt, "
    "0 updated; 1959 launches went 0.39/1.09/1.86s into the commit",
    "2026-12-07 19:53:31,028 INFO scheduler.controller: a scoped pass held the loop for 1.06s: "
    "0.72s to build, "
    "0.32s to decide (223 writes, 0 actions, no placing), 0.01s to write and hand over (and 0.24s waiting "
    "for etcd; 0 replicas recorded ahead, 0 meanwhile); 321 services in scope"))


def test_long_passes_with_their_views_from_a_time_on() -> None:
    passes = long_passes(PASSES)
    assert [(p["kind"], p["held_s"], p["placing"], p.get("rebuilt")) for p in passes] == [
        ("full", 3.2, False, 101), ("scoped", 6.12, True, 5000), ("scoped", 1.06, False, None)]
    assert passes[1] | {"at": 0} == {"at": 0, "kind": "scoped", "held_s": 6.12, "build_s": 0.02,
                                     "decide_s": 6.01, "writes": 3918, "actions": 1959, "placing": True,
                                     "rebuilt": 5000, "updated": 0}
    marking = log_time("2026-12-07 19:52:55,003 x")
    assert marking is not None and passes[1]["at"] == round(marking, 3)
    assert [p["held_s"] for p in long_passes(PASSES, since=marking)] == [6.12, 1.06]
    assert [p["held_s"] for p in long_passes(PASSES, placing_only=True)] == [6.12]


def test_a_line_without_a_time_is_left_out() -> None:
    assert long_passes("a full pass held the loop for 1.00s: 0.10s to build, 0.20s to decide (0 writes, "
                       "0 actions, no placing)") == []
