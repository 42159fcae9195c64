"""bench/sim/scheduler_log.py: the lines of a scheduler log a scale run keeps."""

from __future__ import annotations

from bench.sim.scheduler_log import election_lines

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
