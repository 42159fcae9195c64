"""The pure-Python codec (agent/protolite.py + the generated agent_lite.py) against the real protobuf
runtime: every message type of the agent API, populated at random, must survive pb → lite → pb byte for
byte, lite → pb, and convert to the same JSON as ``json_format.MessageToDict``."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message as PbMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import protolite
from proto.agent.v1 import agent_lite as lite
from proto.agent.v1 import agent_pb2 as pb
from scripts import gen_proto_lite

FD = descriptor.FieldDescriptor
_INTS = {
    FD.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FD.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_UINT32: (0, (1 << 32) - 1),
    FD.TYPE_FIXED32: (0, (1 << 32) - 1), FD.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1), FD.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_UINT64: (0, (1 << 64) - 1), FD.TYPE_FIXED64: (0, (1 << 64) - 1),
}


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INTS:
        low, high = _INTS[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([0, low, high, -1 if low < 0 else 1]))
    if field.type == FD.TYPE_ENUM:
        # Open enums: values the schema does not name survive too.
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99))
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_STRING:
        return st.text(max_size=12)
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=12)
    if field.type == FD.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=False)
    return st.floats(allow_nan=False)  # double (NaN never compares equal)


def _populate(draw: st.DrawFn, msg: PbMessage, depth: int) -> None:
    if msg.DESCRIPTOR.full_name == "google.protobuf.Timestamp":  # only valid ones convert to JSON
        msg.seconds = draw(st.integers(-62135596800, 253402300799))
        msg.nanos = draw(st.integers(0, 999_999_999))
        return
    for field in msg.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for _ in range(draw(st.integers(0, 3))):
                key = draw(_scalar(key_field))
                target = getattr(msg, field.name)
                if value_field.message_type is not None:
                    if depth > 0:
                        _populate(draw, target[key], depth - 1)
                else:
                    target[key] = draw(_scalar(value_field))
        elif field.is_repeated:
            container = getattr(msg, field.name)
            for _ in range(draw(st.integers(0, 3))):
                if field.message_type is not None:
                    if depth > 0:
                        _populate(draw, container.add(), depth - 1)
                else:
                    container.append(draw(_scalar(field)))
        elif field.message_type is not None:
            if depth > 0:
                getattr(msg, field.name).SetInParent()
                _populate(draw, getattr(msg, field.name), depth - 1)
        else:
            setattr(msg, field.name, draw(_scalar(field)))


@st.composite
def _messages(draw: st.DrawFn, cls: type[PbMessage]) -> PbMessage:
    msg = cls()
    _populate(draw, msg, depth=2)
    return msg


ALL_TYPES = sorted(pb.DESCRIPTOR.message_types_by_name)


def test_every_message_of_the_api_has_a_lite_class() -> None:
    for name in ALL_TYPES:
        assert getattr(lite, name)._full_name == f"shoal.agent.v1.{name}"
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        assert getattr(lite, enum.name).items() == [(v.name, v.number) for v in enum.values]
        for value in enum.values:
            assert getattr(lite, value.name) == value.number


@pytest.mark.parametrize("name", ALL_TYPES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_and_json_match_the_protobuf_runtime(name: str, data: st.DataObject) -> None:
    pb_cls = getattr(pb, name)
    original = data.draw(_messages(pb_cls))
    wire = original.SerializeToString(deterministic=True)
    decoded = getattr(lite, name).FromString(wire)
    again = decoded.SerializeToString()
    # Same bytes back (maps may come in another order, so compare what protobuf parses out of them).
    assert pb_cls.FromString(again) == original
    assert getattr(lite, name).FromString(again) == decoded
    for always in (False, True):
        expected = json_format.MessageToDict(original, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=always)
        assert protolite.to_dict(decoded, always_print_fields_with_no_presence=always) == expected
        # Key order too: the CLI prints these dicts as JSON.
        assert list(protolite.to_dict(decoded, always_print_fields_with_no_presence=always)) == list(expected)


def test_lite_messages_built_by_hand_parse_in_the_protobuf_runtime() -> None:
    spec = lite.ContainerSpec(
        image="busybox", command=["sh", "-c", "exit 3"], labels={"app": "web"},
        resources=lite.Resources(memory_bytes=64 << 20, cpu_millis=500),
        network=lite.NETWORK_MODE_BRIDGE, ports=[lite.PortMapping(host_port=8080, container_port=80)],
        health=lite.HealthCheck(tcp=lite.TcpProbe(port=80), interval_seconds=0.5, retries=2),
        restart=lite.RestartPolicy(mode=lite.RESTART_MODE_ON_FAILURE, max_retries=3),
    )
    request = lite.CreateContainerRequest(id="x", spec=spec, start=True)
    parsed = pb.CreateContainerRequest.FromString(request.SerializeToString())
    assert parsed.spec.health.WhichOneof("probe") == "tcp" and parsed.spec.health.tcp.port == 80
    assert parsed.spec.resources.memory_bytes == 64 << 20 and parsed.start
    assert dict(parsed.spec.labels) == {"app": "web"} and parsed.spec.ports[0].host_port == 8080
    assert parsed.spec.HasField("health") and not parsed.HasField("fence")


def test_presence_oneofs_and_optional() -> None:
    # A oneof member or an optional scalar set to its default is still present on the wire.
    exit_zero = lite.ExecOutput(exit_code=0)
    assert exit_zero.WhichOneof("payload") == "exit_code"
    assert pb.ExecOutput.FromString(exit_zero.SerializeToString()).WhichOneof("payload") == "exit_code"
    stop = lite.StopContainerRequest(id="a", timeout_seconds=0)
    assert pb.StopContainerRequest.FromString(stop.SerializeToString()).HasField("timeout_seconds")
    assert not lite.StopContainerRequest(id="a").HasField("timeout_seconds")
    out = lite.ExecOutput(stdout=b"x")
    out.stderr = b"y"  # setting another member clears the first
    assert out.WhichOneof("payload") == "stderr" and out.stdout == b""
    # The last member on the wire wins.
    wire = pb.ExecOutput(stdout=b"a").SerializeToString() + pb.ExecOutput(exit_code=7).SerializeToString()
    assert lite.ExecOutput.FromString(wire).WhichOneof("payload") == "exit_code"
    with pytest.raises(ValueError, match="no presence"):
        lite.Container().HasField("id")


def test_defaults_read_without_attaching() -> None:
    ctr = lite.Container()
    assert (ctr.id, ctr.pid, ctr.spec.image, ctr.argv, ctr.cgroup_paths) == ("", 0, "", [], {})
    assert not ctr.HasField("spec") and ctr.SerializeToString() == b""
    assert ctr.created_at.ToNanoseconds() == 0
    with pytest.raises(AttributeError):
        ctr.no_such_field  # noqa: B018
    with pytest.raises(AttributeError):
        lite.Container(no_such_field=1)
    with pytest.raises(TypeError):
        lite.Container(argv="sh")  # a string is not a list of strings


def test_unknown_fields_and_wire_type_mismatches_are_skipped() -> None:
    known = pb.ContainerRef(id="abc").SerializeToString()
    unknown = (b"\x98\x06\x2a"            # field 99, varint
               b"\xa2\x06\x03xyz"         # field 100, bytes
               b"\xad\x06\x01\x02\x03\x04"  # field 101, fixed32
               b"\xb1\x06" + b"\x00" * 8  # field 102, fixed64
               + b"\x08\x05")             # field 1 (a string) sent as a varint: unknown
    assert lite.ContainerRef.FromString(unknown + known).id == "abc"
    with pytest.raises(protolite.DecodeError):
        lite.ContainerRef.FromString(b"\x0a\x05ab")  # truncated


def test_repeated_scalars_packed_and_unpacked() -> None:
    states = [lite.CONTAINER_STATE_RUNNING, lite.CONTAINER_STATE_EXITED]
    packed = lite.ListContainersRequest(states=states).SerializeToString()
    assert packed == b"\x22\x02\x02\x03"  # field 4, one length-delimited run
    unpacked = b"\x20\x02\x20\x03"
    for wire in (packed, unpacked):
        assert lite.ListContainersRequest.FromString(wire).states == states
        assert list(pb.ListContainersRequest.FromString(wire).states) == states


def test_int64_negative_and_large_values() -> None:
    res = lite.Resources(memory_bytes=-1, cpu_millis=(1 << 63) - 1)
    parsed = pb.Resources.FromString(res.SerializeToString())
    assert (parsed.memory_bytes, parsed.cpu_millis) == (-1, (1 << 63) - 1)
    assert lite.Resources.FromString(parsed.SerializeToString()) == res
    with pytest.raises(ValueError, match="out of range"):
        lite.Resources(pids_max=1 << 63).SerializeToString()


def test_timestamp_helpers_match_the_runtime() -> None:
    for nanos in (0, 1_500_000_000, 1_700_000_000_123_000_000, 1_700_000_000_123_456_000,
                  1_700_000_000_000_000_001):
        mine, theirs = protolite.Timestamp(), pb.LogEntry().time
        mine.FromNanoseconds(nanos)
        theirs.FromNanoseconds(nanos)
        assert mine.ToJsonString() == theirs.ToJsonString()
        assert mine.ToNanoseconds() == nanos


def _all_kinds_module() -> Any:
    """A test-only schema with every scalar kind, nested messages and a message-valued map, rendered by
    the real generator and loaded both ways (protobuf runtime and lite)."""
    proto = descriptor_pb2.FileDescriptorProto(name="kinds.proto", package="t", syntax="proto3")
    inner = proto.message_type.add(name="Inner")
    inner.field.add(name="v", number=1, type=FD.TYPE_SINT64, label=FD.LABEL_OPTIONAL)
    msg = proto.message_type.add(name="Kinds")
    types = [(n, t) for n, t in vars(FD).items() if n.startswith("TYPE_") and t not in
             (FD.TYPE_GROUP, FD.TYPE_MESSAGE, FD.TYPE_ENUM)]
    number = 0
    for type_name, kind in types:
        for repeated in (False, True):
            number += 1
            msg.field.add(name=f"{type_name.lower()}{'_list' if repeated else ''}", number=number, type=kind,
                          label=FD.LABEL_REPEATED if repeated else FD.LABEL_OPTIONAL)
    number += 1
    msg.field.add(name="inner", number=number, type=FD.TYPE_MESSAGE, type_name=".t.Inner",
                  label=FD.LABEL_OPTIONAL)
    entry = msg.nested_type.add(name="ByNameEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=FD.TYPE_INT32, label=FD.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=FD.TYPE_MESSAGE, type_name=".t.Inner",
                    label=FD.LABEL_OPTIONAL)
    msg.field.add(name="by_name", number=number + 1, type=FD.TYPE_MESSAGE, type_name=".t.Kinds.ByNameEntry",
                  label=FD.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    pb_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Kinds"))
    namespace: dict[str, Any] = {}
    exec(compile(gen_proto_lite.render(proto), "kinds_lite.py", "exec"), namespace)
    return pb_cls, namespace["Kinds"]


KINDS_PB, KINDS_LITE = _all_kinds_module()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_scalar_kind_round_trips(data: st.DataObject) -> None:
    original = data.draw(_messages(KINDS_PB))
    decoded = KINDS_LITE.FromString(original.SerializeToString())
    assert KINDS_PB.FromString(decoded.SerializeToString()) == original
    for always in (False, True):
        expected = json_format.MessageToDict(original, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=always)
        assert protolite.to_dict(decoded, always_print_fields_with_no_presence=always) == expected


def test_non_finite_doubles_in_json() -> None:
    check = lite.HealthCheck(interval_seconds=math.inf, timeout_seconds=-math.inf,
                             start_period_seconds=math.nan)
    pb_check = pb.HealthCheck.FromString(check.SerializeToString())
    expected = json_format.MessageToDict(pb_check, preserving_proto_field_name=True)
    assert protolite.to_dict(lite.HealthCheck.FromString(check.SerializeToString())) == expected
    assert struct.pack("<d", math.inf) in check.SerializeToString()
