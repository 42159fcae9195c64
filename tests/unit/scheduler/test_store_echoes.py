"""``scheduler.store.echoes``: own writes matched by key and revision, forgotten as watches pass."""

from __future__ import annotations

import dataclasses

from scheduler import model
from scheduler.store.base import Committed
from scheduler.store.echoes import Echoes
from scheduler.store.records import encode
from scheduler.store.txn import Write
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


def test_a_key_put_again_keeps_both_puts_until_the_watch_has_passed_them() -> None:
    # A replica is put placed, then running, seconds apart; a watch running behind delivers the first put
    # after the second has landed, and its echo is still the record written (not decoded again).
    echoes = Echoes()
    earlier = committed(7, 0)
    echoes.expect(earlier)
    later = committed(9, 0)
    echoes.expect(later)
    assert echoes.take("/r/web-00000", 7) is earlier.written[0]
    assert echoes.take("/r/web-00000", 9) is later.written[0]
    assert echoes.take("/r/web-00000", 8) is None  # no put of ours at that revision
    echoes.passed(8)  # the watch is past revision 7: that put is forgotten, the later one stays
    assert echoes.take("/r/web-00000", 7) is None
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


def landing(*indices: int) -> list[Write]:
    return [Write(f"/r/web-{i:05d}", 0, encode(r), r) for i in indices for r in [build.replica("web", i)]]


def test_a_put_under_way_is_matched_by_its_bytes_and_its_echo_is_the_record_written() -> None:
    echoes = Echoes()
    puts = landing(0, 1)
    echoes.landing(puts)
    key, value, record = puts[0].key, puts[0].value, puts[0].record
    early = echoes.take(key, 7, value)  # the watch delivers it before the commit's reply
    assert early == dataclasses.replace(record, revision=7)
    assert echoes.take(key, 7, value) is early  # a second watch gets the same object
    assert echoes.take(key, 7, encode(dataclasses.replace(record, reason="other"))) is None
    assert echoes.take(key, 7) is None  # bytes not given: only a landed commit's revision matches
    batch = committed(7, 0, 1)
    echoes.expect(batch)
    echoes.settled(puts)
    assert batch.written[0] is early  # one object for the record, whichever came first
    assert batch.written[1] == dataclasses.replace(puts[1].record, revision=7)
    assert echoes.take(key, 7) is early
    assert echoes.take(puts[1].key, 8, puts[1].value) is None  # settled: matched by revision only now


def test_an_echo_at_another_revision_is_not_shared_with_the_commit() -> None:
    echoes = Echoes()
    puts = landing(0)
    echoes.landing(puts)
    key, value = puts[0].key, puts[0].value
    other = echoes.take(key, 6, value)  # the same bytes put by someone else first
    batch = committed(7, 0)
    echoes.expect(batch)
    assert other is not None and other.revision == 6
    assert batch.written[0].revision == 7 and batch.written[0] is not other


def test_a_settled_commit_leaves_a_later_commits_puts_of_the_same_key() -> None:
    echoes = Echoes()
    first, second = landing(0), landing(0)
    echoes.landing(first)
    echoes.landing(second)  # another commit of that key, under way too
    echoes.settled(first)   # the first failed
    key, value = second[0].key, second[0].value
    assert echoes.take(key, 9, value) is not None
    echoes.settled(second)
    assert echoes.take(key, 9, value) is None


def test_two_commits_under_way_with_puts_of_one_key_each_match_their_own_bytes() -> None:
    # A pass's placement of a replica has landed but its commit goes on; the recording of the replica's
    # start is sent meanwhile. A watch behind delivers the placement then: it is the record placed.
    echoes = Echoes()
    placed = landing(0)
    replica = placed[0].record
    started = dataclasses.replace(replica, phase=model.ReplicaPhase.RUNNING)
    running = [Write(placed[0].key, 7, encode(started), started)]
    echoes.landing(placed)
    echoes.landing(running)
    assert echoes.take(placed[0].key, 7, placed[0].value) == dataclasses.replace(replica, revision=7)
    assert echoes.take(placed[0].key, 9, running[0].value) == dataclasses.replace(started, revision=9)
    echoes.settled(running)  # the recording's commit ended first: the placement's put is still matched
    assert echoes.take(placed[0].key, 7, placed[0].value) is not None
    assert echoes.take(placed[0].key, 9, running[0].value) is None


def test_a_leader_keys_record_is_never_matched_by_bytes() -> None:
    echoes = Echoes()
    leader = build.full_leader()
    echoes.landing([Write("/leader", 0, encode(leader), leader)])
    # its epoch and lease are the key's metadata, not its bytes
    assert echoes.take("/leader", 3, encode(leader)) is None
