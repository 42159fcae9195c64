"""bench/sim/etcd_watch.py: etcd's metrics and log lines are read as etcd writes them, and every slow
lease renewal is lined up with the write rate, apply backlog and log events around it (pure functions
on recorded samples; a real member's metrics and log are read in tests/integration/scheduler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sim.etcd_watch import (
    Sample,
    go_duration,
    line_up,
    log_events,
    parse_metrics,
    put_rates,
    summarize_events,
    summarize_samples,
)

EXPOSITION = """# HELP etcd_mvcc_put_total Total number of puts seen by this member.
# TYPE etcd_mvcc_put_total counter
etcd_mvcc_put_total 1234
etcd_server_is_leader 1
etcd_server_proposals_committed_total 5.5e+06
etcd_server_proposals_applied_total 5.49e+06
etcd_disk_backend_commit_duration_seconds_bucket{le="0.001"} 3
etcd_server_slow_apply_total not-a-number
go_goroutines 99
"""


def test_parse_metrics_keeps_the_wanted_unlabelled_samples_only() -> None:
    values = parse_metrics(EXPOSITION)
    assert values == {"etcd_mvcc_put_total": 1234.0, "etcd_server_is_leader": 1.0,
                      "etcd_server_proposals_committed_total": 5.5e6,
                      "etcd_server_proposals_applied_total": 5.49e6}
    assert Sample(0.0, "n0", values).backlog == pytest.approx(10_000)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1.400142ms", 0.001400142), ("808.546µs", 0.000808546), ("2.5s", 2.5), ("1m2.5s", 62.5),
    ("1h0m0s", 3600.0), ("", 0.0), ("soon", 0.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


def sample(wall: float, member: str, *, puts: float, leader: bool, committed: float = 0.0,
           applied: float = 0.0, changes: float = 1.0) -> Sample:
    return Sample(wall, member, {
        "etcd_mvcc_put_total": puts, "etcd_server_is_leader": 1.0 if leader else 0.0,
        "etcd_server_proposals_committed_total": committed, "etcd_server_proposals_applied_total": applied,
        "etcd_server_leader_changes_seen_total": changes,
        "etcd_disk_backend_commit_duration_seconds_sum": wall / 100,
        "etcd_disk_backend_commit_duration_seconds_count": wall})


# n0 leads until 110 s, n1 from then (the put rates are the leader's).
SAMPLES = [
    sample(100.0, "n0", puts=0, leader=True), sample(100.5, "n1", puts=0, leader=False),
    sample(105.0, "n0", puts=5_000, leader=True, committed=900, applied=100),
    sample(105.5, "n1", puts=4_000, leader=False),
    sample(110.0, "n0", puts=6_000, leader=False, changes=2),
    sample(110.5, "n1", puts=9_000, leader=True, changes=2),
    sample(115.5, "n1", puts=9_500, leader=True, changes=2),
]


def test_put_rates_come_from_whichever_member_led_at_the_end_of_each_interval() -> None:
    assert put_rates(SAMPLES) == [(100.0, 105.0, 1_000.0), (105.5, 110.5, 1_000.0), (110.5, 115.5, 100.0)]


def test_summary_per_member_and_the_busiest_intervals() -> None:
    summary = summarize_samples(SAMPLES, {"n2": 3})
    assert summary["members"]["n0"]["leader_changes"] == 1.0
    assert summary["members"]["n0"]["max_apply_backlog"] == 800.0
    assert summary["members"]["n0"]["backend_commit_mean_ms"] == pytest.approx(10.0)
    assert summary["members"]["n1"]["scrapes_failed"] == 0
    assert summary["puts_per_s_max"] == 1_000.0
    assert [row[2] for row in summary["busiest"]] == [1_000.0, 1_000.0, 100.0]


def write_log(path: Path, *entries: dict[str, str]) -> None:
    path.write_text("not json\n" + "\n".join(json.dumps(e) for e in entries) + "\n")


def test_log_events_reads_elections_late_heartbeats_slow_applies_and_warnings(tmp_path: Path) -> None:
    write_log(tmp_path / "n0.log",
              {"level": "info", "ts": "1970-01-01T00:01:40.000Z", "msg": "starting an etcd server"},
              {"level": "info", "ts": "1970-01-01T00:01:41.000Z",
               "msg": "raft.node: a1dbcbdb4c9f942d elected leader a1dbcbdb4c9f942d at term 2"},
              {"level": "warn", "ts": "1970-01-01T00:01:47.000Z", "msg": "apply request took too long",
               "took": "1.5s"})
    write_log(tmp_path / "n1.log",
              {"level": "warn", "ts": "1970-01-01T00:01:46.000Z",
               "msg": "leader failed to send out heartbeat on time; took too long, leader is overloaded "
                      "likely from slow disk", "exceeded-duration": "2.2s"},
              {"level": "warn", "ts": "1970-01-01T00:01:48.000Z",
               "msg": "raft.node: f242104f27631386 lost leader a1dbcbdb4c9f942d at term 3"},
              {"level": "warn", "ts": "1970-01-01T00:01:49.000Z",
               "msg": "f242104f27631386 is starting a new election at term 3"})
    events = log_events({"n0": tmp_path / "n0.log", "n1": tmp_path / "n1.log",
                         "gone": tmp_path / "missing.log"}, since=100.5)
    assert [(e.wall, e.member, e.kind) for e in events] == [
        (101.0, "n0", "election"), (106.0, "n1", "late-heartbeat"), (107.0, "n0", "slow-apply"),
        (108.0, "n1", "lost-leader"), (109.0, "n1", "warning: ID is starting a new election at term N")]
    assert events[1].took == pytest.approx(2.2)
    summary = summarize_events(events)
    assert summary["by_kind"]["slow-apply"] == {"count": 1, "max_took_s": 1.5}
    assert [row[1] for row in summary["elections"]] == ["n0"]


def test_a_slow_renewal_is_lined_up_with_what_etcd_did_around_it(tmp_path: Path) -> None:
    write_log(tmp_path / "n1.log",
              {"level": "warn", "ts": "1970-01-01T00:01:48.000Z",
               "msg": "raft.node: f242104f27631386 lost leader a1dbcbdb4c9f942d at term 3"})
    events = log_events({"n1": tmp_path / "n1.log"})
    rows = line_up([(107.0, 4.0), (112.0, 1.0), (200.0, 3.5)], SAMPLES, events)
    assert [(r["took_s"], r["puts_per_s_max"], r["max_apply_backlog"], r["etcd_log"]) for r in rows] == [
        (4.0, 1_000.0, 800.0, {"lost-leader": 1}),  # 97-111 s: both busy intervals, n0's backlog
        (3.5, 0.0, 0.0, {}),                         # 190-203.5 s: nothing sampled, nothing logged
    ]
