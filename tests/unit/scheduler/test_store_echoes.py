"""``scheduler.store.echoes``: own writes matched by key and revision, forgotten as watches pass."""

from __future__ import annotations

from scheduler.store.base import Committed
from scheduler.store.echoes import Echoes
from tests.fixtures import scheduler_records as build


def committed(revision: int, *indices: int) -> Committed:
    records = tuple(build.replica("web", i) for i in indices)
    return Committed(revisions=(revision,), puts=((revision, records),),
                     keys=tuple(f"/r/web-{i:05d}" for i in indices))


def test_a_write_is_matched_only_at_the_revision_it_was_committed_at() -> None:
    echoes = Echoes()
    batch = committed(7, 0, 1)
    echoes.expect(batch)
    assert echoes.take("/r/web-00000", 7) is batch.written[0]
    assert echoes.take("/r/web-00001", 7) is batch.written[1]
    assert batch.written[0].revision == 7
    assert echoes.take("/r/web-00000", 8) is None  # someone else's write at that key
    assert echoes.take("/r/web-00002", 7) is None


def test_a_later_commit_of_a_key_replaces_the_earlier_one() -> None:
    echoes = Echoes()
    echoes.expect(committed(7, 0))
    later = committed(9, 0)
    echoes.expect(later)
    assert echoes.take("/r/web-00000", 7) is None
    assert echoes.take("/r/web-00000", 9) is later.written[0]
    echoes.passed(8)  # the entry of revision 7 is gone already: the later one stays
    assert echoes.take("/r/web-00000", 9) is later.written[0] and len(echoes) == 1


def test_what_a_watch_has_passed_is_forgotten() -> None:
    echoes = Echoes()
    echoes.expect(committed(7, 0, 1))
    echoes.expect(committed(8, 2))
    echoes.passed(7)  # delivering revision 7: its own entries are still wanted
    assert len(echoes) == 3
    echoes.passed(8)
    assert len(echoes) == 1 and echoes.take("/r/web-00002", 8) is not None


def test_without_a_watch_at_most_the_limit_is_kept_oldest_first_out() -> None:
    echoes = Echoes(limit=3)
    for revision in range(1, 6):
        echoes.expect(committed(revision, revision))
    assert len(echoes) == 3
    assert echoes.take("/r/web-00002", 2) is None
    assert echoes.take("/r/web-00005", 5) is not None
