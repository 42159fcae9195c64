"""scheduler/store/records.py's generated decoders (``_DataclassCodec.fast``) against the generic one
(``decode_fields``): the same record for every valid object of every record type and of every record
nested in one, the same outcome — the same value, or the same error naming the same member — for objects
with a member replaced by any JSON value or left out, and the generic path never called for a record
that decodes."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import model
from scheduler.store import records
from tests.fixtures import scheduler_records as build
from tests.unit.scheduler.test_records import RECORD_TYPES, finite

META = {"revision": 7}


def _nested_types(root: type[Any], seen: set[type[Any]]) -> None:
    if root in seen:
        return
    seen.add(root)
    for tp in typing.get_type_hints(root).values():
        stack = [tp]
        while stack:
            t = stack.pop()
            t = getattr(t, "__supertype__", t)
            if dataclasses.is_dataclass(t) and isinstance(t, type):
                _nested_types(t, seen)
            stack.extend(typing.get_args(t))


ALL_TYPES: set[type[Any]] = set()
for _root in RECORD_TYPES:
    _nested_types(_root, ALL_TYPES)
TYPES = sorted(ALL_TYPES, key=lambda t: t.__name__)

SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=3) | st.sampled_from(["running", "pending", "tcp", "placed"]))
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                 max_size=3),
                    max_leaves=6)


def _meta(record_type: type[Any]) -> dict[str, int]:
    return META if record_type in RECORD_TYPES else {}


def _outcome(decode: Any, obj: Any, meta: dict[str, int]) -> tuple[str, Any]:
    try:
        value = decode(obj, meta)
    except records._BadMember as err:
        return "error", (err.where(), err.message)
    # repr: an int where the generic decoder gives a float compares equal, and must not pass
    return "value", (repr(value), list(getattr(value, "__dict__", ())))


def test_every_nested_record_type_is_covered() -> None:
    assert {model.Replica, model.Decision, model.HostPort, model.Service} <= ALL_TYPES


@pytest.mark.parametrize("record_type", TYPES, ids=lambda t: t.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_generated_decoder_gives_the_generic_ones_record(record_type: type[Any],
                                                              data: st.DataObject) -> None:
    record = data.draw(st.from_type(record_type).filter(finite))
    obj = json.loads(records.encode(record)) if record_type in RECORD_TYPES else \
        records._codec(record_type).encode(record)
    codec = records._codec(record_type)
    fast, slow = _outcome(codec.fast, obj, _meta(record_type)), _outcome(codec.decode_fields, obj,
                                                                         _meta(record_type))
    assert fast[0] == "value"
    assert fast == slow  # the record, and for a record with a __dict__ the same members in the same order


@pytest.mark.parametrize("record", [build.full_replica(), build.full_service(), build.full_host(),
                                    build.full_host_status(), build.full_hostgroup()],
                         ids=lambda r: type(r).__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_member_replaced_or_missing_has_the_same_outcome_either_way(record: Any,
                                                                      data: st.DataObject) -> None:
    obj = json.loads(records.encode(record))
    target = obj
    # Down to a nested object now and then, so the nested decoders' own fallbacks are exercised too.
    for _ in range(data.draw(st.integers(0, 2))):
        nested = [v for v in target.values() if isinstance(v, dict)]
        nested += [item for v in target.values() if isinstance(v, list)
                   for item in v if isinstance(item, dict)]
        if not nested:
            break
        target = data.draw(st.sampled_from(nested))
    member = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[member]
    else:
        target[member] = data.draw(JSON)
    codec = records._codec(type(record))
    assert _outcome(codec.fast, obj, META) == _outcome(codec.decode_fields, obj, META)


ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.5, "", "x", "running", "tcp", [], [1], [[]], [{}],
                         {}, {"a": 1}, ABSENT := object()]


def _objects(obj: Any) -> list[dict[str, Any]]:
    """Every JSON object in ``obj``, itself included, at any depth."""
    found = [obj] if isinstance(obj, dict) else []
    for value in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
        found += _objects(value)
    return found


@pytest.mark.parametrize("record", build.full_records(), ids=lambda r: type(r).__name__)
def test_every_member_at_every_depth_with_every_odd_value_has_the_same_outcome(record: Any) -> None:
    codec = records._codec(type(record))
    original = json.loads(records.encode(record))
    tried = 0
    for path_index, held in enumerate(_objects(original)):
        for member in sorted(held):
            for odd in ODD_VALUES:
                obj = json.loads(records.encode(record))  # a fresh copy to change
                target = _objects(obj)[path_index]
                if odd is ABSENT:
                    del target[member]
                else:
                    target[member] = odd
                assert _outcome(codec.fast, obj, META) == _outcome(codec.decode_fields, obj, META), \
                    (member, odd)
                tried += 1
    assert tried >= len(ODD_VALUES) * len(original)  # every top-level member at least


def test_a_valid_record_never_takes_the_generic_path_and_a_bad_one_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    generic = records._DataclassCodec.decode_fields

    def spy(self: records._DataclassCodec, obj: Any, meta: dict[str, int]) -> Any:
        calls.append(self.cls.__name__)
        return generic(self, obj, meta)

    monkeypatch.setattr(records, "_codecs", {})  # codecs built again, their fallback the spy
    monkeypatch.setattr(records._DataclassCodec, "decode_fields", spy)
    data = records.encode(build.full_replica())
    decoded = records.decode(model.Replica, data, revision=3)
    assert decoded == dataclasses.replace(build.full_replica(), revision=3)
    assert calls == []
    bad = json.loads(data) | {"decisions": [{"time": 1, "action": "placed", "reason": None}]}
    with pytest.raises(records.RecordError, match=r"decisions\[0\].reason: expected a string, got null"):
        records.decode(model.Replica, json.dumps(bad).encode())
    assert "Replica" in calls and "Decision" in calls


def test_a_generated_decoders_record_holds_no_more_memory_than_one_built_by_its_init() -> None:
    """Records a follower holds by the hundred thousand: built field by field, as the dataclass's own
    ``__init__`` builds them, they keep their values inline; an instance whose ``__dict__`` was asked for
    keeps a dict of its own (half as much again per replica, part 32's first version)."""
    objs = [json.loads(records.encode(dataclasses.replace(build.full_replica(), id=model.ReplicaId(f"r{i}"))))
            for i in range(2000)]
    codec = records._codec(model.Replica)
    codec.fast(objs[0], META), codec.decode_fields(objs[0], META)  # nested codecs made before counting

    def held(decode: Any) -> int:
        tracemalloc.start()
        try:
            kept = [decode(obj, META) for obj in objs]
            size = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(kept) == len(objs)
        return size

    held(codec.fast), held(codec.decode_fields)  # the first count of each includes one-time allocations
    # The least of three counts each: tracemalloc counts every allocation in the process, other threads'
    # too, and one count came out 7 % high once in a full run (890 KB against 831), never alone.
    generated = min(held(codec.fast) for _ in range(3))
    generic = min(held(codec.decode_fields) for _ in range(3))
    assert generated <= generic * 1.05
