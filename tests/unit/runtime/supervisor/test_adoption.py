"""Rebuilding a new worker's table from the keeper's handover."""

from __future__ import annotations

import pytest

from agent.runtime.supervisor.adoption import ContainerRecord, Handed, plan_adoption


def record(cid: str, *, orphan: bool = False) -> ContainerRecord:
    return ContainerRecord(id=cid, directory=f"/root/containers/{cid}", started_at=100.0,
                           log_max_bytes=1 << 20, log_max_files=3, orphan=orphan)


def handed(pid: int, rec: ContainerRecord | bytes, *, status: int | None = None) -> Handed:
    blob = rec if isinstance(rec, bytes) else rec.to_blob()
    return Handed(pid=pid, status=status, finished_at=None if status is None else 200.0, blob=blob,
                  fds=(pid, pid + 1, pid + 2))


def test_running_and_exited_containers_are_sorted_with_their_records() -> None:
    plan = plan_adoption([handed(10, record("a")), handed(20, record("b"), status=42 << 8),
                          handed(30, record("c", orphan=True))])
    assert [(a.pid, a.record.id, a.record.orphan, a.fds) for a in plan.running] == [
        (10, "a", False, (10, 11, 12)), (30, "c", True, (30, 31, 32))]
    assert [(a.pid, a.status, a.finished_at) for a in plan.exited] == [(20, 42 << 8, 200.0)]
    assert plan.rejected == []


def test_an_unreadable_record_is_rejected() -> None:
    plan = plan_adoption([handed(10, b"not json"), handed(20, b'{"id": "x"}'), handed(30, record("ok"))])
    assert [r.handed.pid for r in plan.rejected] == [10, 20]
    assert [a.pid for a in plan.running] == [30]


def test_a_stale_run_of_the_same_id_never_wins() -> None:
    # An older run whose exit was never released, then a newer one still running.
    older, newer = handed(10, record("a"), status=0), handed(20, record("a"))
    plan = plan_adoption([older, newer])
    assert [a.pid for a in plan.running] == [20] and plan.exited == []
    assert [r.handed.pid for r in plan.rejected] == [10]
    # In either order, the running one is kept.
    plan = plan_adoption([newer, older])
    assert [a.pid for a in plan.running] == [20] and [r.handed.pid for r in plan.rejected] == [10]
    # Two exited runs: the newer (later in custody) is recorded, the older released untouched.
    plan = plan_adoption([handed(10, record("a"), status=0), handed(20, record("a"), status=1 << 8)])
    assert [a.pid for a in plan.exited] == [20] and [r.handed.pid for r in plan.rejected] == [10]


def test_records_round_trip_and_refuse_wrong_types() -> None:
    rec = record("a")
    assert ContainerRecord.from_blob(rec.to_blob()) == rec
    assert ContainerRecord.from_blob(rec.as_orphan().to_blob()).orphan
    for bad in (b'{"id":"a","directory":"/d","started_at":1,"log_max_bytes":true,"log_max_files":1}',
                b'{"id":"","directory":"/d","started_at":1,"log_max_bytes":1,"log_max_files":1}',
                b'{"id":"a","directory":"/d","started_at":"x","log_max_bytes":1,"log_max_files":1}',
                b'[]'):
        with pytest.raises(ValueError):
            ContainerRecord.from_blob(bad)
