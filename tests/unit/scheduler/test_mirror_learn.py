"""``Mirror.learn``: what a failed compare-and-swap read of the keys it met, kept as the watch's changes
would be, so the next pass does not write the same keys from the same old revisions while the watch is
behind (docs/scaling.md, part 33)."""

from __future__ import annotations

import dataclasses

from scheduler.mirror import Mirror
from scheduler.model import Replica, ReplicaId, ServiceName
from scheduler.store import base
from scheduler.store.errors import Conflict, KeyConflict
from tests.fixtures import scheduler_records as build

KEY = "/replicas/web/web-00001"
RID = ReplicaId("web-00001")


def _mirror(*records: object) -> Mirror:
    mirror = Mirror(revision=10)
    for record in records:
        mirror.put(record)
    mirror.take_dirt()
    return mirror


def _conflict(*conflicts: KeyConflict) -> Conflict:
    return Conflict(conflicts, etcd_revision=30)


def test_a_key_changed_by_another_writer_is_put_at_its_revision_and_marked() -> None:
    read = build.replica("web", 1, revision=5)
    mirror = _mirror(read)
    theirs = dataclasses.replace(read, reason="recorded running", revision=20)
    mine = dataclasses.replace(read, reason="placed")
    assert mirror.learn(_conflict(KeyConflict(KEY, 5, 20, written=mine, current=theirs))) == 1
    assert mirror.replicas[RID] is theirs
    dirt = mirror.take_dirt()
    assert RID in dirt.replicas and ServiceName("web") in dirt.services  # the next scoped pass looks at it
    assert mirror.revision == 10  # the watch's progress is the watch's: nothing skipped for it


def test_a_newer_record_the_mirror_already_holds_is_kept() -> None:
    newer = build.replica("web", 1, revision=25)
    mirror = _mirror(newer)
    older = dataclasses.replace(newer, reason="older", revision=20)
    assert mirror.learn(_conflict(KeyConflict(KEY, 5, 20, written=newer, current=older))) == 0
    assert mirror.replicas[RID] is newer
    assert not mirror.take_dirt().replicas


def test_a_key_created_by_another_writer_is_put() -> None:
    mirror = _mirror()
    theirs = build.service("web", replicas=3, revision=20)
    conflict = KeyConflict("/services/web", 0, 20, written=build.service("web"), current=theirs)
    assert mirror.learn(_conflict(conflict)) == 1
    assert mirror.services[ServiceName("web")] is theirs


def test_a_key_deleted_since_it_was_read_is_dropped() -> None:
    read = build.replica("web", 1, revision=5)
    mirror = _mirror(read)
    assert mirror.learn(_conflict(KeyConflict(KEY, 5, 0, written=dataclasses.replace(read, reason="x")))) == 1
    assert RID not in mirror.replicas and RID not in mirror.by_service.get(ServiceName("web"), set())
    assert RID in mirror.take_dirt().replicas


def test_a_record_made_again_after_the_revision_read_is_not_dropped() -> None:
    """Deleted and made again since: the mirror's newer record is not the one etcd no longer held."""
    again = build.replica("web", 1, revision=25)
    mirror = _mirror(again)
    assert mirror.learn(_conflict(KeyConflict(KEY, 5, 0, written=build.replica("web", 1, revision=5)))) == 0
    assert mirror.replicas[RID] is again


def test_a_key_holding_what_is_not_a_record_changes_nothing() -> None:
    read = build.replica("web", 1, revision=5)
    mirror = _mirror(read)
    assert mirror.learn(_conflict(KeyConflict(KEY, 5, 20, written=read, current=None))) == 0
    assert mirror.replicas[RID] is read
    assert mirror.learn(_conflict(KeyConflict(KEY, 5, 20))) == 0  # raised without what it read
    assert mirror.replicas[RID] is read


def test_a_drop_keeps_a_record_made_again_after_the_one_deleted() -> None:
    """A delete that went in names the record as it was read; the same key made again since (a service
    applied again by its name) is a later revision the mirror keeps."""
    again = build.service("web", revision=40)
    mirror = _mirror(again)
    mirror.drop(build.service("web", revision=20))
    assert mirror.services[ServiceName("web")] is again
    mirror.drop(again)
    assert ServiceName("web") not in mirror.services


def _put(record: Replica, revision: int) -> base.Change:
    return base.Change(kind=base.ChangeKind.PUT, key=KEY, record_type=Replica, ids=("web", RID),
                       value=dataclasses.replace(record, revision=revision), revision=revision)


def _deleted(revision: int) -> base.Change:
    return base.Change(kind=base.ChangeKind.DELETE, key=KEY, record_type=Replica, ids=("web", RID),
                       value=None, revision=revision)


def test_a_put_made_before_a_drop_is_not_put_back_by_a_watch_behind() -> None:
    """The leader deleted web-00001 (read at revision 5); the watch, behind, still brings puts of it made
    before: kept out until the delete arrives, so no pass deletes it again and conflicts on it as absent
    (docs/scaling.md, part 33)."""
    read = build.replica("web", 1, revision=5)
    mirror = _mirror(read)
    mirror.drop(read)
    mirror.take_dirt()
    assert mirror.apply(_put(read, 3)) is False and RID not in mirror.replicas  # older still
    assert mirror.apply(_put(read, 5)) is False and RID not in mirror.replicas  # the very record dropped
    mirror.put(dataclasses.replace(read, revision=4))  # a write put back by hand, older: kept out too
    assert RID not in mirror.replicas and not mirror.take_dirt().replicas
    assert mirror.apply(_deleted(9)) is False and not mirror.gone  # the delete arrived: forgotten
    again = mirror.apply(_put(read, 12))  # made again later under the same id: kept
    assert again and mirror.replicas[RID].revision == 12


def test_a_key_made_again_after_its_drop_is_kept_before_the_delete_arrives() -> None:
    read = build.replica("web", 1, revision=5)
    mirror = _mirror(read)
    mirror.drop(read)
    assert mirror.apply(_put(read, 12)) and mirror.replicas[RID].revision == 12
    assert not mirror.gone
