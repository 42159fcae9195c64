"""scheduler/store/keys.py: the key layout, parsing back, ranges that hold exactly what they name, and the
refusal of names that would break the schema."""

from __future__ import annotations

import pytest

from scheduler import model
from scheduler.store.keys import InvalidKey, KeySchema, range_end
from scheduler.store.records import LeaderRecord
from tests.fixtures import scheduler_records as build

SCHEMA = KeySchema()


def test_the_layout_under_the_default_prefix() -> None:
    assert SCHEMA.service("web").key == "/shoal/v1/services/web"
    assert SCHEMA.replica("web", "web-1").key == "/shoal/v1/replicas/web/web-1"
    assert SCHEMA.host("h1").key == "/shoal/v1/hosts/h1"
    assert SCHEMA.host_status("h1").key == "/shoal/v1/host-status/h1"
    assert SCHEMA.leader().key == "/shoal/v1/leader"
    assert KeySchema("/team-a/shoal/").service("web").key == "/team-a/shoal/services/web"


@pytest.mark.parametrize(("record", "key"), [
    (build.service("web"), "/shoal/v1/services/web"),
    (build.replica("web", 3), "/shoal/v1/replicas/web/web-00003"),
    (build.host("h1"), "/shoal/v1/hosts/h1"),
    (build.host_status("h1"), "/shoal/v1/host-status/h1"),
    (build.full_autoscale_status(), "/shoal/v1/autoscale/web"),
    (build.hostgroup("workers"), "/shoal/v1/hostgroups/workers"),
    (build.full_hostgroup_status(), "/shoal/v1/hostgroup-status/workers"),
    (build.full_leader(), "/shoal/v1/leader"),
])
def test_a_record_knows_its_key_and_the_key_parses_back(record: object, key: str) -> None:
    assert SCHEMA.key_of(record) == key  # type: ignore[arg-type]
    parsed = SCHEMA.parse(key)
    assert parsed is not None and parsed.record_type is type(record)


def test_parse_gives_the_ids_and_skips_what_it_does_not_know() -> None:
    replica = SCHEMA.parse("/shoal/v1/replicas/web/web-1")
    assert replica is not None and replica.record_type is model.Replica and replica.ids == ("web", "web-1")
    leader = SCHEMA.parse("/shoal/v1/leader")
    assert leader is not None and leader.record_type is LeaderRecord and leader.ids == ()
    for unknown in ["/shoal/v1/replicas/web", "/shoal/v1/replicas/web/a/b", "/shoal/v1/services/",
                    "/shoal/v1/future/x", "/shoal/v2/services/web", "/other/services/web",
                    "/shoal/v1/leader/x", "/shoal/v1/services/a b"]:
        assert SCHEMA.parse(unknown) is None, unknown


def test_host_group_keys_ranges_and_parsing() -> None:
    assert SCHEMA.hostgroup("workers").key == "/shoal/v1/hostgroups/workers"
    assert SCHEMA.hostgroup_status("workers").key == "/shoal/v1/hostgroup-status/workers"
    parsed = SCHEMA.parse("/shoal/v1/hostgroup-status/workers")
    assert parsed is not None and parsed.record_type is model.HostGroupStatus and parsed.ids == ("workers",)
    groups, statuses = SCHEMA.hostgroups(), SCHEMA.hostgroup_statuses()
    # "hostgroups/", "hostgroup-status/", "hosts/" and "host-status/" share leading letters: no range may
    # hold another's keys.
    keys = {groups: SCHEMA.hostgroup("w").key, statuses: SCHEMA.hostgroup_status("w").key,
            SCHEMA.hosts(): SCHEMA.host("w").key, SCHEMA.host_statuses(): SCHEMA.host_status("w").key}
    for key_range in keys:
        assert [k for k in keys.values() if key_range.start <= k < key_range.end] == [keys[key_range]]
    for unknown in ["/shoal/v1/hostgroups/", "/shoal/v1/hostgroups/a/b", "/shoal/v1/hostgroup-status"]:
        assert SCHEMA.parse(unknown) is None, unknown
    with pytest.raises(InvalidKey, match="host group name"):
        SCHEMA.hostgroup("a/b")


def test_ranges_hold_exactly_their_keys() -> None:
    web = SCHEMA.replicas_of("web")
    inside = [SCHEMA.replica("web", "a").key, SCHEMA.replica("web", "\U0001f600").key]
    outside = [SCHEMA.replica("web2", "a").key, SCHEMA.replica("we", "a").key, SCHEMA.service("web").key,
               "/shoal/v1/replicas/web"]
    assert all(web.start <= k < web.end for k in inside)
    assert not any(web.start <= k < web.end for k in outside)
    hosts, statuses = SCHEMA.hosts(), SCHEMA.host_statuses()
    assert not hosts.start <= SCHEMA.host_status("h").key < hosts.end
    assert not statuses.start <= SCHEMA.host("h").key < statuses.end
    everything = SCHEMA.everything()
    assert all(everything.start <= k < everything.end for k in inside + outside)
    leader = SCHEMA.leader_range()
    assert leader.start <= SCHEMA.leader().key < leader.end
    assert not leader.start <= SCHEMA.prefix + "leaders" < leader.end
    # In etcd's byte order too.
    assert all(web.start.encode() <= k.encode() < web.end.encode() for k in inside)


def test_range_end_is_the_prefix_successor() -> None:
    assert range_end("/a/") == "/a0"
    with pytest.raises(InvalidKey):
        range_end("")


@pytest.mark.parametrize("name", ["", "a/b", "a b", "tab\there", "nul\x00", "\x7f"])
def test_names_that_would_break_the_schema_are_refused(name: str) -> None:
    with pytest.raises(InvalidKey, match="cannot be part of an etcd key"):
        SCHEMA.service(name)
    with pytest.raises(InvalidKey):
        SCHEMA.replica("web", name)
    with pytest.raises(InvalidKey):
        SCHEMA.host(name)


@pytest.mark.parametrize("prefix", ["", "shoal/", "/shoal", "/shoal//v1/"])
def test_a_prefix_starts_and_ends_with_a_slash(prefix: str) -> None:
    with pytest.raises(InvalidKey, match="must start and end with '/'"):
        KeySchema(prefix)
