"""The keeper's custody table: what is forwarded, what waits for the next worker, what is dropped."""

from __future__ import annotations

from agent.runtime.supervisor.custody import Custody


def test_a_reaped_container_keeps_its_status_until_the_worker_drops_it() -> None:
    custody = Custody()
    assert custody.hold(100, b"a", (3, 4, 5)) == ()
    custody.hold(200, b"b", (6, 7, 8))
    entry = custody.reaped(100, 7 << 8, 1.5)
    assert entry is not None and (entry.pid, entry.status, entry.finished_at) == (100, 7 << 8, 1.5)
    # Handed to a new worker with the status, oldest first, until the worker has recorded it.
    handover = custody.entries()
    assert [(e.pid, e.blob, e.status, e.fds) for e in handover] == [
        (100, b"a", 7 << 8, (3, 4, 5)), (200, b"b", None, (6, 7, 8))]
    assert custody.drop(100) == (3, 4, 5)
    assert [e.pid for e in custody.entries()] == [200] and 100 not in custody and len(custody) == 1


def test_pids_not_in_custody_are_not_containers() -> None:
    custody = Custody()
    custody.hold(100, b"a", (3, 4, 5))
    assert custody.reaped(999, 0, 1.0) is None  # an orphaned descendant, or a failed launch's init
    assert custody.drop(999) == ()
    assert [e.status for e in custody.entries()] == [None]


def test_a_status_is_recorded_once() -> None:
    custody = Custody()
    custody.hold(100, b"a", (3, 4, 5))
    assert custody.reaped(100, 0, 1.0) is not None
    assert custody.reaped(100, 9, 2.0) is None  # cannot happen for one pid; must not overwrite
    (entry,) = custody.entries()
    assert (entry.status, entry.finished_at) == (0, 1.0)


def test_holding_a_pid_again_returns_the_old_descriptors_to_close() -> None:
    custody = Custody()
    custody.hold(100, b"old", (3, 4, 5))
    assert custody.hold(100, b"new", (6, 7, 8)) == (3, 4, 5)
    assert [(e.blob, e.fds) for e in custody.entries()] == [(b"new", (6, 7, 8))]
    assert custody.close_all() == (6, 7, 8) and len(custody) == 0
