"""Protocol Buffers messages in pure Python, for clients that must start fast (the ``shoal`` CLI).

Importing grpc and the protobuf runtime costs a short-lived process more than everything else it does
(≈ 50 ms of cpu for ``agent_pb2`` alone, ≈ 140 ms with grpc). This module is the wire codec behind the
schema modules that ``scripts/gen_proto_lite.py`` generates from the ``.proto`` descriptors
(``proto/agent/v1/agent_lite.py``): messages with attribute access and proto3 defaults, the same field
names and enum constants as the generated ``*_pb2`` classes, ``SerializeToString``/``FromString``,
``HasField``/``WhichOneof``, and ``to_dict`` with ``json_format.MessageToDict``'s output
(``preserving_proto_field_name=True``). Unit tests check every message type against the real runtime.

Semantics kept from protobuf: unset singular fields read as their default; an unset sub-message reads as a
default instance that is *not* attached to its parent (assign sub-messages, do not write through a read);
repeated and map fields read as a list/dict stored on first access; unknown fields and fields with an
unexpected wire type are skipped; packed and unpacked repeated scalars are both accepted; the last member
set of a oneof wins. Not supported: proto2 groups (skipped), extensions, ``Any``.
"""

from __future__ import annotations

import struct

# Not ``typing.TYPE_CHECKING``: importing typing costs a CLI process several milliseconds, and nothing
# here needs it at run time (annotations are strings). mypy treats any name TYPE_CHECKING this way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Any, ClassVar, Generic, Protocol, TypeVar

    M = TypeVar("M", bound="Message")
    Req = TypeVar("Req", bound="Message")
    Resp = TypeVar("Resp", bound="Message")
    T_co = TypeVar("T_co", covariant=True)

# Field kinds, named after descriptor types.
DOUBLE, FLOAT, INT64, UINT64, INT32, FIXED64, FIXED32, BOOL, STRING, MESSAGE, BYTES, UINT32, ENUM, \
    SFIXED32, SFIXED64, SINT32, SINT64 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18)

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_WIRE_TYPE = {DOUBLE: _I64, FLOAT: _I32, INT64: _VARINT, UINT64: _VARINT, INT32: _VARINT, FIXED64: _I64,
              FIXED32: _I32, BOOL: _VARINT, STRING: _LEN, MESSAGE: _LEN, BYTES: _LEN, UINT32: _VARINT,
              ENUM: _VARINT, SFIXED32: _I32, SFIXED64: _I64, SINT32: _VARINT, SINT64: _VARINT}
_DEFAULTS: dict[int, Any] = {DOUBLE: 0.0, FLOAT: 0.0, STRING: "", BYTES: b"", BOOL: False}
_RANGES = {INT32: (-(1 << 31), (1 << 31) - 1), SINT32: (-(1 << 31), (1 << 31) - 1),
           SFIXED32: (-(1 << 31), (1 << 31) - 1), ENUM: (-(1 << 31), (1 << 31) - 1),
           UINT32: (0, (1 << 32) - 1), FIXED32: (0, (1 << 32) - 1),
           INT64: (-(1 << 63), (1 << 63) - 1), SINT64: (-(1 << 63), (1 << 63) - 1),
           SFIXED64: (-(1 << 63), (1 << 63) - 1), UINT64: (0, (1 << 64) - 1), FIXED64: (0, (1 << 64) - 1)}
_FIXED = {FIXED32: struct.Struct("<I"), SFIXED32: struct.Struct("<i"), FLOAT: struct.Struct("<f"),
          FIXED64: struct.Struct("<Q"), SFIXED64: struct.Struct("<q"), DOUBLE: struct.Struct("<d")}
_INT64_KINDS = frozenset({INT64, UINT64, FIXED64, SFIXED64, SINT64})
_SIGNED_VARINT = frozenset({INT32, INT64, ENUM})
_MASK64 = (1 << 64) - 1


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the message."""


class EnumType:
    """A protobuf enum as ``*_pb2`` exposes it: ``Name``, ``Value``, ``items``, ``keys``, ``values``."""

    def __init__(self, full_name: str, values: Mapping[str, int]) -> None:
        self.full_name = full_name
        self._by_name = dict(values)
        self._by_number: dict[int, str] = {}
        for name, number in values.items():
            self._by_number.setdefault(number, name)  # aliases: the first name is canonical

    def Name(self, number: int) -> str:
        try:
            return self._by_number[number]
        except KeyError:
            raise ValueError(f"enum {self.full_name} has no value {number}") from None

    def Value(self, name: str) -> int:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"enum {self.full_name} has no value named {name!r}") from None

    def items(self) -> list[tuple[str, int]]:
        return list(self._by_name.items())

    def keys(self) -> list[str]:
        return list(self._by_name)

    def values(self) -> list[int]:
        return list(self._by_name.values())


class Field:
    """One field of a message schema (generated; see ``define``)."""

    __slots__ = ("enum", "key_kind", "kind", "map", "message", "name", "number", "oneof", "packed",
                 "presence", "repeated", "tag", "value_enum", "value_kind", "value_message", "wire")

    def __init__(self, number: int, name: str, kind: int, *, repeated: bool = False,
                 message: type[Message] | None = None, enum: EnumType | None = None,
                 oneof: str | None = None, optional: bool = False,
                 map_key: int | None = None, map_value: int | None = None,
                 map_value_message: type[Message] | None = None,
                 map_value_enum: EnumType | None = None) -> None:
        self.number, self.name, self.kind = number, name, kind
        self.map = map_key is not None
        self.repeated = repeated or self.map
        self.message, self.enum, self.oneof = message, enum, oneof
        self.key_kind = map_key if map_key is not None else 0
        self.value_kind = map_value if map_value is not None else 0
        self.value_message, self.value_enum = map_value_message, map_value_enum
        # Explicit presence: sub-messages, oneof members and proto3 ``optional`` scalars.
        self.presence = not self.repeated and (kind == MESSAGE or oneof is not None or optional)
        self.packed = repeated and not self.map and _WIRE_TYPE[kind] != _LEN
        self.wire = _LEN if (self.map or self.packed) else _WIRE_TYPE[kind]
        self.tag = _varint((number << 3) | self.wire)


class Message:
    """Base of generated lite messages. Field values live in the instance ``__dict__``; defaults of
    singular scalars are class attributes, so reading an unset field costs nothing."""

    _full_name: ClassVar[str] = ""
    _fields: ClassVar[tuple[Field, ...]] = ()  # declaration order
    _by_number_order: ClassVar[tuple[Field, ...]] = ()
    _by_name: ClassVar[dict[str, Field]] = {}
    _by_number: ClassVar[dict[int, Field]] = {}
    _oneofs: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            if value is not None:  # protobuf's constructors treat None as "leave unset"
                setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        field = self._by_name.get(name)
        if field is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        if field.map:
            value = dict(value)
        elif field.repeated:
            if isinstance(value, str | bytes):
                raise TypeError(f"{type(self).__name__}.{name} is repeated: give a list, not {value!r}")
            value = list(value)
        elif field.kind == MESSAGE and not isinstance(value, field.message or ()):
            raise TypeError(f"{type(self).__name__}.{name} takes a {field.message}, not {type(value)}")
        d = self.__dict__
        if field.oneof is not None:
            for other in self._oneofs[field.oneof]:
                d.pop(other, None)
        d[name] = value

    def __getattr__(self, name: str) -> Any:
        # Only reached for fields with no class default: repeated, maps and sub-messages.
        field = type(self)._by_name.get(name)
        if field is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        if field.repeated:
            value: Any = {} if field.map else []
            self.__dict__[name] = value
            return value
        assert field.message is not None
        return field.message()

    def HasField(self, name: str) -> bool:
        field = self._by_name.get(name)
        if field is not None and field.presence:
            return name in self.__dict__
        if name in self._oneofs:
            return self.WhichOneof(name) is not None
        raise ValueError(f"{type(self).__name__}.{name} has no presence (not a message, oneof or optional)")

    def WhichOneof(self, group: str) -> str | None:
        members = self._oneofs.get(group)
        if members is None:
            raise ValueError(f"{type(self).__name__} has no oneof {group!r}")
        d = self.__dict__
        return next((m for m in members if m in d), None)

    def ClearField(self, name: str) -> None:
        if name not in self._by_name and name not in self._oneofs:
            raise ValueError(f"{type(self).__name__} has no field {name!r}")
        for member in self._oneofs.get(name, (name,)):
            self.__dict__.pop(member, None)

    def SerializeToString(self) -> bytes:
        out = bytearray()
        _encode(self, out)
        return bytes(out)

    @classmethod
    def FromString(cls: type[M], data: bytes) -> M:
        obj = cls.__new__(cls)
        _decode_into(obj, memoryview(data), 0, len(data))
        return obj

    def _set_fields(self) -> Iterator[tuple[Field, Any]]:
        """(field, value) of every field protobuf's ``ListFields`` would list, in number order."""
        d = self.__dict__
        for field in self._by_number_order:
            if field.name not in d:
                continue
            value = d[field.name]
            if field.presence or (value if field.repeated else not _is_default(field.kind, value)):
                yield field, value

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Message)
        return dict((f.name, v) for f, v in self._set_fields()) == \
            dict((f.name, v) for f, v in other._set_fields())

    __hash__ = None  # type: ignore[assignment]  # mutable, like protobuf messages

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={v!r}" for f, v in self._set_fields())
        return f"{type(self).__name__}({inner})"


def define(cls: type[Message], full_name: str, fields: Iterable[Field]) -> None:
    """Attach a schema to a generated class: lookup tables, oneof groups and scalar defaults."""
    cls._full_name = full_name
    cls._fields = tuple(fields)
    cls._by_number_order = tuple(sorted(cls._fields, key=lambda f: f.number))
    cls._by_name = {f.name: f for f in cls._fields}
    cls._by_number = {f.number: f for f in cls._fields}
    oneofs: dict[str, list[str]] = {}
    for f in cls._fields:
        if f.oneof is not None:
            oneofs.setdefault(f.oneof, []).append(f.name)
        if not f.repeated and f.kind != MESSAGE:
            type.__setattr__(cls, f.name, _DEFAULTS.get(f.kind, 0))
    cls._oneofs = {k: tuple(v) for k, v in oneofs.items()}


def _is_default(kind: int, value: Any) -> bool:
    if kind in (DOUBLE, FLOAT):
        # -0.0 has bits set: proto3 serializes it (and lists it), like the C++ runtime.
        return bool(value == 0.0 and str(value)[0] != "-")
    return bool(value == _DEFAULTS.get(kind, 0))


# -- encoding ----------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes((value,))
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _scalar(kind: int, value: Any, where: str, *, delimited: bool = False) -> bytes:
    """One value's bytes; ``delimited`` prefixes strings and bytes with their length (as on the wire)."""
    if kind in (STRING, BYTES):
        if kind == STRING:
            if not isinstance(value, str):
                raise TypeError(f"{where}: expected str, got {type(value).__name__}")
            data = value.encode()
        else:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(f"{where}: expected bytes, got {type(value).__name__}")
            data = bytes(value)
        return _varint(len(data)) + data if delimited else data
    if kind == BOOL:
        return b"\x01" if value else b"\x00"
    if kind in (DOUBLE, FLOAT):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{where}: expected a number, got {type(value).__name__}")
        return _FIXED[kind].pack(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{where}: expected int, got {type(value).__name__}")
    low, high = _RANGES[kind]
    if not low <= value <= high:
        raise ValueError(f"{where}: {value} is out of range")
    if kind in _FIXED:
        return _FIXED[kind].pack(value)
    if kind in (SINT32, SINT64):
        return _varint((value << 1) ^ (value >> 63))
    return _varint(value)


def _encode(msg: Message, out: bytearray) -> None:
    d = msg.__dict__
    name = type(msg).__name__
    for field in msg._by_number_order:
        if field.name not in d:
            continue
        value = d[field.name]
        where = f"{name}.{field.name}"
        if field.map:
            for key, item in value.items():
                entry = bytearray(_varint(0x08 | _WIRE_TYPE[field.key_kind]))
                entry += _scalar(field.key_kind, key, where, delimited=True)
                entry += _varint(0x10 | _WIRE_TYPE[field.value_kind])
                if field.value_kind == MESSAGE:
                    sub = bytearray()
                    _encode(item, sub)
                    entry += _varint(len(sub)) + sub
                else:
                    entry += _scalar(field.value_kind, item, where, delimited=True)
                out += field.tag + _varint(len(entry)) + entry
        elif field.packed:
            if value:
                payload = b"".join(_scalar(field.kind, v, where) for v in value)
                out += field.tag + _varint(len(payload)) + payload
        elif field.repeated:
            for item in value:
                _encode_one(field, item, out, where)
        elif field.presence or not _is_default(field.kind, value):
            _encode_one(field, value, out, where)


def _encode_one(field: Field, value: Any, out: bytearray, where: str) -> None:
    out += field.tag
    if field.kind == MESSAGE:
        sub = bytearray()
        _encode(value, sub)
        out += _varint(len(sub))
        out += sub
    else:
        out += _scalar(field.kind, value, where, delimited=True)


# -- decoding ----------------------------------------------------------------------------------------

def _read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _skip(data: memoryview, pos: int, end: int, wire: int, number: int) -> int:
    if wire == _VARINT:
        return _read_varint(data, pos, end)[1]
    if wire == _I64:
        pos += 8
    elif wire == _I32:
        pos += 4
    elif wire == _LEN:
        length, pos = _read_varint(data, pos, end)
        pos += length
    elif wire == _SGROUP:
        while True:
            key, pos = _read_varint(data, pos, end)
            if key & 7 == _EGROUP:
                if key >> 3 != number:
                    raise DecodeError("mismatched end of group")
                return pos
            pos = _skip(data, pos, end, key & 7, key >> 3)
    else:
        raise DecodeError(f"invalid wire type {wire}")
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _varint_value(kind: int, raw: int) -> Any:
    if kind == BOOL:
        return raw != 0
    if kind in (SINT32, SINT64):
        return (raw >> 1) ^ -(raw & 1)
    if kind in (INT32, ENUM):
        return _signed(raw, 32)
    if kind == INT64:
        return _signed(raw, 64)
    if kind == UINT32:
        return raw & 0xFFFFFFFF
    return raw  # UINT64


def _read_scalar(kind: int, data: memoryview, pos: int, end: int) -> tuple[Any, int]:
    wire = _WIRE_TYPE[kind]
    if wire == _VARINT:
        raw, pos = _read_varint(data, pos, end)
        return _varint_value(kind, raw), pos
    if wire == _LEN:
        length, pos = _read_varint(data, pos, end)
        stop = pos + length
        if stop > end:
            raise DecodeError("truncated string or bytes")
        chunk = bytes(data[pos:stop])
        if kind == STRING:
            try:
                return chunk.decode(), stop
            except UnicodeDecodeError as err:
                raise DecodeError(f"string field holds invalid UTF-8: {err}") from None
        return chunk, stop
    codec = _FIXED[kind]
    stop = pos + codec.size
    if stop > end:
        raise DecodeError("truncated fixed-width field")
    return codec.unpack_from(data, pos)[0], stop


def _decode_into(obj: Message, data: memoryview, pos: int, end: int) -> None:
    d = obj.__dict__
    by_number = obj._by_number
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        field = by_number.get(number)
        # A mismatched wire type makes the field unknown; repeated scalars come packed or not.
        if field is None or (wire != field.wire and not (field.packed and wire == _WIRE_TYPE[field.kind])):
            pos = _skip(data, pos, end, wire, number)
            continue
        name = field.name
        if field.map:
            length, pos = _read_varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("truncated map entry")
            key_value, item = _decode_map_entry(field, data, pos, stop)
            d.setdefault(name, {})[key_value] = item
            pos = stop
        elif field.kind == MESSAGE:
            length, pos = _read_varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("truncated sub-message")
            assert field.message is not None
            if field.repeated:
                item = field.message.__new__(field.message)
                _decode_into(item, data, pos, stop)
                d.setdefault(name, []).append(item)
            else:
                sub: Message | None = d.get(name)
                if sub is None:  # a repeated occurrence merges into the first, as protobuf does
                    sub = field.message.__new__(field.message)
                    if field.oneof is not None:
                        _clear_oneof(obj, field)
                    d[name] = sub
                _decode_into(sub, data, pos, stop)
            pos = stop
        elif field.repeated:
            items = d.setdefault(name, [])
            if wire == _LEN and _WIRE_TYPE[field.kind] != _LEN:  # packed
                length, pos = _read_varint(data, pos, end)
                stop = pos + length
                if stop > end:
                    raise DecodeError("truncated packed field")
                while pos < stop:
                    value, pos = _read_scalar(field.kind, data, pos, stop)
                    items.append(value)
            else:
                value, pos = _read_scalar(field.kind, data, pos, end)
                items.append(value)
        else:
            value, pos = _read_scalar(field.kind, data, pos, end)
            if field.oneof is not None:
                _clear_oneof(obj, field)
            d[name] = value
    if pos != end:
        raise DecodeError("field runs past the end of its message")


def _clear_oneof(obj: Message, field: Field) -> None:
    assert field.oneof is not None
    for other in obj._oneofs[field.oneof]:
        if other != field.name:
            obj.__dict__.pop(other, None)


def _decode_map_entry(field: Field, data: memoryview, pos: int, end: int) -> tuple[Any, Any]:
    key: Any = _DEFAULTS.get(field.key_kind, 0)
    value: Any = None
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        kind = field.key_kind if number == 1 else field.value_kind if number == 2 else 0
        if not kind or wire != _WIRE_TYPE[kind]:
            pos = _skip(data, pos, end, wire, number)
        elif number == 1:
            key, pos = _read_scalar(kind, data, pos, end)
        elif kind == MESSAGE:
            length, pos = _read_varint(data, pos, end)
            assert field.value_message is not None
            value = field.value_message.__new__(field.value_message)
            _decode_into(value, data, pos, pos + length)
            pos += length
        else:
            value, pos = _read_scalar(kind, data, pos, end)
    if value is None:
        value = field.value_message() if field.value_kind == MESSAGE and field.value_message else \
            _DEFAULTS.get(field.value_kind, 0)
    return key, value


# -- JSON (json_format.MessageToDict with preserving_proto_field_name=True) -------------------------------

def to_dict(msg: Message, *, always_print_fields_with_no_presence: bool = False) -> dict[str, Any]:
    """What ``json_format.MessageToDict(msg, preserving_proto_field_name=True, ...)`` returns."""
    if isinstance(msg, Timestamp):
        raise TypeError("a Timestamp converts to a string: use ToJsonString()")
    out: dict[str, Any] = {}
    for field, value in msg._set_fields():
        if field.map:
            out[field.name] = {_json_key(field.key_kind, k): _json_value(
                field.value_kind, field.value_enum, v, always_print_fields_with_no_presence)
                for k, v in value.items()}
        elif field.repeated:
            out[field.name] = [_json_value(field.kind, field.enum, v, always_print_fields_with_no_presence)
                               for v in value]
        else:
            out[field.name] = _json_value(field.kind, field.enum, value, always_print_fields_with_no_presence)
    if always_print_fields_with_no_presence:
        for field in msg._fields:
            if field.presence or field.name in out:
                continue
            if field.map:
                out[field.name] = {}
            elif field.repeated:
                out[field.name] = []
            else:
                out[field.name] = _json_value(field.kind, field.enum, _DEFAULTS.get(field.kind, 0), True)
    return out


def _json_key(kind: int, key: Any) -> str:
    if kind == BOOL:
        return "true" if key else "false"
    return str(key)


def _json_value(kind: int, enum: EnumType | None, value: Any, always: bool) -> Any:
    if kind == MESSAGE:
        if isinstance(value, Timestamp):
            return value.ToJsonString()
        return to_dict(value, always_print_fields_with_no_presence=always)
    if kind == ENUM:
        assert enum is not None
        return enum._by_number.get(value, value)
    if kind == BYTES:
        import base64

        return base64.b64encode(value).decode()
    if kind in _INT64_KINDS:
        return str(value)
    if kind in (DOUBLE, FLOAT):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        if kind == FLOAT:
            return _shortest_float(value)
    return value


def _shortest_float(value: float) -> float:
    """The shortest decimal that round-trips through a 32-bit float (protobuf's ToShortestFloat)."""
    single = struct.Struct("<f")
    for precision in range(6, 10):
        candidate = float(f"{value:.{precision}g}")
        if single.unpack(single.pack(candidate))[0] == value:
            return candidate
    return value


# -- well-known types ----------------------------------------------------------------------------------

class Timestamp(Message):
    """``google.protobuf.Timestamp`` with the helpers the protobuf runtime gives it."""

    seconds: int
    nanos: int

    def ToNanoseconds(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanos

    def FromNanoseconds(self, nanos: int) -> None:
        self.seconds, self.nanos = divmod(nanos, 1_000_000_000)

    def ToJsonString(self) -> str:
        """RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, like the protobuf runtime."""
        import time

        seconds, nanos = self.seconds, self.nanos
        t = time.gmtime(seconds)
        text = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        if nanos == 0:
            return text + "Z"
        if nanos % 1_000_000 == 0:
            return f"{text}.{nanos // 1_000_000:03d}Z"
        if nanos % 1000 == 0:
            return f"{text}.{nanos // 1000:06d}Z"
        return f"{text}.{nanos:09d}Z"


define(Timestamp, "google.protobuf.Timestamp", (Field(1, "seconds", INT64), Field(2, "nanos", INT32)))


# -- services ------------------------------------------------------------------------------------------

class _Method:
    """One RPC: its path (``/package.Service/Method``), message types and streaming shape."""

    __slots__ = ("client_streaming", "path", "request", "response", "server_streaming")

    def __init__(self, path: str, request: type[Message], response: type[Message], *,
                 client_streaming: bool, server_streaming: bool) -> None:
        self.path, self.request, self.response = path, request, response
        self.client_streaming, self.server_streaming = client_streaming, server_streaming

    def __repr__(self) -> str:
        return f"Method({self.path})"


if TYPE_CHECKING:
    class Method(_Method, Generic[Req, Resp]):
        request: type[Req]
        response: type[Resp]

        def __init__(self, path: str, request: type[Req], response: type[Resp], *,
                     client_streaming: bool, server_streaming: bool) -> None: ...
else:
    Method = _Method


if TYPE_CHECKING:
    class Stream(Protocol[T_co]):
        """Responses of a streaming call, in order; ``cancel`` ends it early (the server sees
        CANCELLED)."""

        def __iter__(self) -> Iterator[T_co]: ...

        def __next__(self) -> T_co: ...

        def cancel(self) -> None: ...

    class Transport(Protocol):
        """How generated stubs reach a server (Connect over HTTP/1.1, or gRPC)."""

        def unary(self, method: Method[Req, Resp], request: Req) -> Resp: ...

        def unary_nowait(self, method: Method[Req, Resp], request: Req) -> None:
            """Send the call and do not wait for its answer (the call stays alive until ``close``)."""

        def server_stream(self, method: Method[Req, Resp], request: Req) -> Stream[Resp]: ...

        def stream_stream(self, method: Method[Req, Resp], requests: Iterable[Req]) -> Stream[Resp]: ...

        def close(self) -> None: ...


__all__ = [
    "BOOL", "BYTES", "DOUBLE", "ENUM", "FIXED32", "FIXED64", "FLOAT", "INT32", "INT64", "MESSAGE",
    "SFIXED32", "SFIXED64", "SINT32", "SINT64", "STRING", "UINT32", "UINT64", "DecodeError",
    "EnumType", "Field", "Message", "Method", "Timestamp", "define", "to_dict",
]
