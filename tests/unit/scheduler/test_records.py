"""scheduler/store/records.py: every record type round-trips (property-based), the stored JSON is pinned,
and the compatibility rules hold — unknown members ignored, missing ones defaulted, newer formats refused,
wrong types named by their path."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import model
from scheduler.store import records
from scheduler.store.records import LeaderRecord, RecordError
from tests.fixtures import scheduler_records as build

RECORD_TYPES: list[type[Any]] = [model.Service, model.Replica, model.HostRecord, model.HostStatus,
                                 model.AutoscaleStatus, model.HostGroup, model.HostGroupStatus, LeaderRecord]


def finite(value: Any) -> bool:
    """JSON has no NaN or infinity, and no record holds one; nor an integer past 64 bits (etcd's revisions
    and every whole number of the API are within them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -(1 << 63) <= value < (1 << 64)
    if isinstance(value, tuple):
        return all(finite(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(finite(getattr(value, f.name)) for f in dataclasses.fields(value))
    return True


def round_trip(record: Any) -> Any:
    data = records.encode(record)
    return records.decode(type(record), data, revision=record.revision,
                          create_revision=getattr(record, "epoch", 0), lease=getattr(record, "lease", 0))


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_record_round_trips(record_type: type[Any], data: st.DataObject) -> None:
    record = data.draw(st.from_type(record_type).filter(finite))
    assert round_trip(record) == record


@pytest.mark.parametrize("record", build.full_records(), ids=lambda r: type(r).__name__)
def test_fully_populated_records_round_trip(record: Any) -> None:
    assert round_trip(record) == record


def test_the_stored_json_is_pinned() -> None:
    # A rename or a type change of a model field shows up here: it breaks every record already in etcd.
    assert json.loads(records.encode(build.full_replica())) == {
        "v": 1, "id": "web-7f3a", "service": "web", "generation": 3, "host": "h2", "phase": "running",
        "ready": True, "reason": "", "created_at": 1700000000.0, "updated_at": 1700000001.5, "restarts": 2,
        "next_attempt_at": 0.0, "ports": [{"container_port": 8080, "host_port": 32768, "protocol": "tcp"}],
        "decisions": [{"time": 1700000000.0, "action": "placed",
                       "reason": "h2: most free memory (3/3 hosts fit)"}],
    }
    service = json.loads(records.encode(build.full_service()))
    assert service["spec"]["placement"]["constraints"][0] == {"key": "zone", "op": "!=", "values": ["c"],
                                                              "text": "zone!=c"}
    assert service["spec"]["labels"] == [["team", "web"], ["tier", "front"]]
    assert json.loads(records.encode(build.full_leader())) == {
        "v": 1, "instance": "sched-a", "address": "10.0.0.9:7443", "acquired_at": 1700000000.125}


def test_metadata_comes_from_etcd_not_from_the_bytes() -> None:
    stored = records.encode(dataclasses.replace(build.full_host_status(), revision=99))
    assert b"revision" not in stored
    assert records.decode(model.HostStatus, stored, revision=7).revision == 7
    leader = records.decode(LeaderRecord, records.encode(build.full_leader()), revision=12,
                            create_revision=10, lease=0xABC)
    assert (leader.epoch, leader.lease, leader.revision) == (10, 0xABC, 12)


def test_unknown_members_are_ignored_and_missing_ones_take_defaults() -> None:
    newer = {"v": 1, "id": "web-1", "service": "web", "generation": 2, "phase": "running",
             "cpu_throttled": True, "ports": [{"container_port": 80, "host_port": 8080, "ipv6": True}]}
    replica = records.decode(model.Replica, json.dumps(newer).encode(), revision=5)
    assert replica == model.Replica(id=model.ReplicaId("web-1"), service=model.ServiceName("web"),
                                    generation=2, phase=model.ReplicaPhase.RUNNING,
                                    ports=(model.HostPort(80, 8080),), revision=5)


@pytest.mark.parametrize(("data", "message"), [
    (b"\xff", "not JSON"),
    (b"[1]", "expected a JSON object, got list"),
    (b'{"id": "h1"}', "member 'v'"),
    (b'{"v": true, "id": "h1"}', "member 'v'"),
    (b'{"v": 2, "id": "h1"}', "format 2 by a newer scheduler"),
    (b'{"v": 1}', "id: required member missing"),
    (b'{"v": 1, "id": 7}', "id: expected a string, got number"),
    (b'{"v": 1, "id": "h1", "ready": 1}', "ready: expected a boolean, got number"),
    (b'{"v": 1, "id": "h1", "since": "now"}', "since: expected a number, got string"),
])
def test_bad_host_status_bytes_are_refused_with_the_member_at_fault(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        records.decode(model.HostStatus, data)


@pytest.mark.parametrize(("patch", "message"), [
    ({"phase": "paused"}, r"phase: unknown ReplicaPhase 'paused' \(known: 'pending'"),
    ({"generation": 1.5}, "generation: expected an integer, got number"),
    ({"generation": True}, "generation: expected an integer, got boolean"),
    ({"ports": {"container_port": 1}}, "ports: expected an array, got object"),
    ({"ports": [{"host_port": 1}]}, r"ports\[0\].container_port: required member missing"),
    ({"decisions": [{"time": 1, "action": "placed", "reason": None}]},
     r"decisions\[0\].reason: expected a string, got null"),
])
def test_bad_nested_members_are_named_by_their_path(patch: dict[str, Any], message: str) -> None:
    obj = json.loads(records.encode(build.full_replica())) | patch
    with pytest.raises(RecordError, match=message):
        records.decode(model.Replica, json.dumps(obj).encode())


def test_labels_must_be_pairs() -> None:
    obj = json.loads(records.encode(build.full_host())) | {"labels": [["zone"]]}
    with pytest.raises(RecordError, match=r"labels\[0\]: expected an array of 2"):
        records.decode(model.HostRecord, json.dumps(obj).encode())


def test_an_integer_is_a_valid_float_and_null_a_missing_optional() -> None:
    obj = json.loads(records.encode(build.full_replica())) | {"created_at": 5, "host": None}
    replica = records.decode(model.Replica, json.dumps(obj).encode())
    assert replica.created_at == 5.0 and isinstance(replica.created_at, float) and replica.host is None


@pytest.mark.parametrize("record", [
    dataclasses.replace(build.full_host_status(), since=math.inf),  # a member
    dataclasses.replace(build.full_replica(), created_at=math.nan),
    dataclasses.replace(build.full_replica(), decisions=(model.Decision(-math.inf, "placed", ""),)),  # nested
    dataclasses.replace(build.full_hostgroup_status(),  # inside tuples (the generic encoder's)
                        underused_since=((model.HostId("h1"), math.nan),)),
], ids=["member", "nan", "nested", "in-tuples"])
def test_non_finite_floats_are_not_stored(record: Any) -> None:
    # orjson writes NaN and infinity as null: the encoder must refuse them before it does.
    with pytest.raises(ValueError, match=r"is not stored \(JSON has no NaN or infinity\)"):
        records.encode(record)


def _standard_library_json(record: Any) -> Any:
    """What the record's JSON holds when written member by member through the standard library (the
    generic encoder and ``json``, as before part 35)."""
    body = records._codec(type(record)).encode(record)
    return json.loads(json.dumps({"v": records.FORMAT_VERSION, **body}, allow_nan=False))


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_the_generated_encoder_writes_what_the_generic_one_does(record_type: type[Any],
                                                               data: st.DataObject) -> None:
    record = data.draw(st.from_type(record_type).filter(finite))
    assert json.loads(records.encode(record)) == _standard_library_json(record)


@pytest.mark.parametrize("record", build.full_records(), ids=lambda r: type(r).__name__)
def test_the_bytes_are_compact_utf8_in_field_order(record: Any) -> None:
    body = records._codec(type(record)).encode(record)
    assert records.encode(record) == json.dumps({"v": records.FORMAT_VERSION, **body}, separators=(",", ":"),
                                                ensure_ascii=False).encode()


def test_integers_past_64_bits_are_not_stored() -> None:
    with pytest.raises(ValueError, match=r"Replica: .*64-bit"):
        records.encode(dataclasses.replace(build.full_replica(), restarts=1 << 64))


def test_json_without_numbers_for_nan_is_refused() -> None:
    with pytest.raises(RecordError, match="not JSON"):
        records.decode(model.HostStatus, b'{"v": 1, "id": "h1", "since": NaN}')


def test_decoded_replicas_share_the_strings_many_records_repeat() -> None:
    """A follower decodes every replica of the cluster: a service's name, a host id and a common reason
    (``model.SHARED`` fields) are one string for all the records that hold them; ids stay their own."""
    def replica(rid: str) -> model.Replica:
        return model.Replica(id=model.ReplicaId(rid), service=model.ServiceName("web-frontend"), generation=1,
                             host=model.HostId("0123456789abcdef0123456789abcdef"),
                             phase=model.ReplicaPhase.RUNNING, ready=True, reason="running as asked",
                             decisions=(model.Decision(1.0, "created", "the service wants 100 replicas"),))

    a, b = (records.decode(model.Replica, records.encode(replica(rid))) for rid in ("web-1", "web-2"))
    assert a.service == "web-frontend" and a.service is b.service
    assert a.host is b.host and a.reason is b.reason
    assert a.decisions[0].action is b.decisions[0].action and a.decisions[0].reason is b.decisions[0].reason
    assert a == dataclasses.replace(replica("web-1"), revision=0)
