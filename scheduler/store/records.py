"""JSON encoding of the values the scheduler keeps in etcd (``scheduler.model`` values and the leader's
record), forward compatible.

A record is a JSON object: ``"v"`` (the format version) and one member per dataclass field, named like
the field, nested dataclasses as objects, enums by value, tuples as arrays, ``None`` as ``null``. The
``revision`` field (and the leader's ``epoch`` and ``lease``) are not stored: they are the etcd metadata
of the key the record was read from, filled in by ``decode``.

Compatibility rules, which is what lets two scheduler versions share one etcd during a rolling upgrade:

* unknown members are ignored and a missing member takes the field's default, so fields are only ever
  added, each with a default that is right when an older writer left it out (a field without a default
  is required, and its absence is an error); renaming a field is removing one and adding another;
* ``"v"`` changes only for a change older readers cannot take (a field's meaning or type); a reader
  refuses a record of a newer format rather than misread it, and reads every older one;
* an older scheduler rewriting a record drops the members it does not know: a newer one must treat a
  field's default as "not known" (the writer decides again on its next pass).

The codec is derived once per dataclass from its type hints (str, int, float, bool, enums, ``NewType``s,
``X | None``, tuples, nested dataclasses), so a field added to ``scheduler.model`` is stored without
touching this module; the round-trip tests cover every record type.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from scheduler import model

FORMAT_VERSION = 1

# Fields that hold etcd metadata instead of data (never stored, set by ``decode``).
_META_FIELDS = frozenset({"revision", "epoch", "lease"})


@dataclass(frozen=True)
class LeaderRecord:
    """Who leads: written by the election's winner under the leader key, attached to its lease.

    ``epoch`` is the key's create revision — unique per term and increasing from one leader to the next
    (etcd revisions only grow) — which is why it is the fencing epoch agents compare.
    """

    instance: str           # the scheduler instance's id (stable for a process's life)
    address: str = ""       # where its API listens, for `describe` and clients
    acquired_at: float = 0.0
    epoch: int = 0          # the leader key's create revision (etcd metadata)
    lease: int = 0          # the lease the key is attached to (etcd metadata)
    revision: int = 0       # the key's mod revision (etcd metadata)


@dataclass(frozen=True)
class InstanceRecord:
    """A running ``shoal-scheduler serve`` instance: written by the instance itself when it starts,
    attached to a lease of its own, so it disappears when the instance stops (revoked) or dies (expired).
    What ``shoal get schedulers`` lists; whether it leads comes from the ``LeaderRecord``, not from here."""

    instance: str                       # the instance's id (as in the leader record)
    addresses: tuple[str, ...] = ()     # its API listeners (HOST:PORT or unix:///PATH)
    http_address: str = ""              # its --http-listen (/metrics, http_sd); "" when off
    started_at: float = 0.0             # wall-clock seconds since the epoch
    version: str = ""                   # the shoal package version it runs
    revision: int = 0                   # the key's mod revision (etcd metadata)


Record = (model.Service | model.Replica | model.HostRecord | model.HostStatus | model.AutoscaleStatus
          | model.HostGroup | model.HostGroupStatus | LeaderRecord | InstanceRecord)
T = TypeVar("T", model.Service, model.Replica, model.HostRecord, model.HostStatus, model.AutoscaleStatus,
            model.HostGroup, model.HostGroupStatus, LeaderRecord, InstanceRecord)


class RecordError(ValueError):
    """Bytes that are not a record of the expected type (the message names the member at fault)."""


def encode(record: Record) -> bytes:
    """The JSON bytes stored for ``record`` (compact, UTF-8, members in field order)."""
    body = _codec(type(record)).encode(record)
    return _JSON.encode({"v": FORMAT_VERSION, **body}).encode()


def decode(record_type: type[T], data: bytes, *, revision: int = 0, create_revision: int = 0,
           lease: int = 0) -> T:
    """The record in ``data``, with its etcd metadata filled in. Raises ``RecordError``."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(f"member 'v' (format version) must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise RecordError(f"written in format {version} by a newer scheduler; this one reads formats "
                          f"up to {FORMAT_VERSION}")
    meta: dict[str, int] = {"revision": revision}
    if record_type is LeaderRecord:
        meta |= {"epoch": create_revision, "lease": lease}
    try:
        value: T = _codec(record_type).decode_fields(obj, meta)
    except _BadMember as err:
        raise RecordError(f"{err.where()}: {err.message}") from None
    return value


# -- the derived codec -------------------------------------------------------------------------------

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# None: the value is its own JSON (str, int, float, bool) — the common case, not worth a call per field.
Encoder = Callable[[Any], Any] | None
Decoder = Callable[[Any], Any]  # JSON value -> value; raises _BadMember


class _BadMember(Exception):
    """A member that does not decode. Its path is collected on the way up (``["ports", "[0]", "host_port"]``),
    so decoding a good record never builds a path string."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def where(self) -> str:
        out = ""
        for part in self.path:
            out += part if part.startswith("[") or not out else f".{part}"
        return out or "record"


@dataclass(frozen=True)
class _Field:
    name: str
    encode: Encoder
    decode: Decoder
    required: bool


@dataclass(frozen=True)
class _DataclassCodec:
    cls: type[Any]
    fields: tuple[_Field, ...]

    def encode(self, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.fields:
            item = getattr(value, f.name)
            out[f.name] = item if f.encode is None else f.encode(item)
        return out

    def decode(self, obj: Any) -> Any:
        return self.decode_fields(obj, {})

    def decode_fields(self, obj: Any, meta: dict[str, int]) -> Any:
        if not isinstance(obj, dict):
            raise _BadMember(f"expected an object, got {_json_type(obj)}")
        kwargs: dict[str, Any] = dict(meta)
        for f in self.fields:
            if f.name in obj:
                try:
                    kwargs[f.name] = f.decode(obj[f.name])
                except _BadMember as err:
                    err.path.insert(0, f.name)
                    raise
            elif f.required:
                missing = _BadMember("required member missing")
                missing.path.append(f.name)
                raise missing
        return self.cls(**kwargs)


_codecs: dict[type[Any], _DataclassCodec] = {}


def _codec(cls: type[Any]) -> _DataclassCodec:
    codec = _codecs.get(cls)
    if codec is None:
        hints = typing.get_type_hints(cls)
        fields = tuple(
            _Field(f.name, *_shared(_compile(hints[f.name]), f.metadata.get("shared", False)),
                   required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.name not in _META_FIELDS
        )
        codec = _codecs[cls] = _DataclassCodec(cls, fields)
    return codec


def _shared(codec: tuple[Encoder, Decoder], shared: bool) -> tuple[Encoder, Decoder]:
    """A string field marked ``model.SHARED`` decodes to one copy of each value (``sys.intern``)."""
    if not shared:
        return codec
    encode, decode = codec

    def decode_shared(value: Any) -> Any:
        decoded = decode(value)
        return sys.intern(decoded) if type(decoded) is str else decoded

    return encode, decode_shared


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _compile(tp: Any) -> tuple[Encoder, Decoder]:
    """An (encoder, decoder) pair for one annotated type."""
    supertype = getattr(tp, "__supertype__", None)  # NewType: stored as what it wraps
    if supertype is not None:
        return _compile(supertype)
    if tp is str:
        return None, _scalar(str, "a string")
    if tp is bool:
        return None, _scalar(bool, "a boolean")
    if tp is int:
        return None, _integer
    if tp is float:
        return None, _number
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _nested(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return _optional(*_compile(others[0]))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _homogeneous_tuple(*_compile(args[0]))
        return _fixed_tuple(tuple(_compile(a) for a in args))
    raise TypeError(f"records cannot store a field of type {tp!r}")


def _scalar(kind: type[Any], name: str) -> Decoder:
    def decode(value: Any) -> Any:
        if type(value) is not kind:
            raise _BadMember(f"expected {name}, got {_json_type(value)}")
        return value
    return decode


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise _BadMember(f"expected an integer, got {_json_type(value)}")
    return value


def _number(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is not int:
        raise _BadMember(f"expected a number, got {_json_type(value)}")
    return float(value)


def _enum(cls: type[enum.Enum]) -> tuple[Encoder, Decoder]:
    by_value = {member.value: member for member in cls}

    def decode(value: Any) -> Any:
        try:
            return by_value[value]
        except (KeyError, TypeError):
            known = ", ".join(repr(v) for v in by_value)
            raise _BadMember(f"unknown {cls.__name__} {value!r} (known: {known})") from None

    return (lambda member: member.value), decode


def _nested(cls: type[Any]) -> tuple[Encoder, Decoder]:
    # Resolved lazily: a dataclass may refer to one defined later in its module.
    return (lambda value: _codec(cls).encode(value)), (lambda value: _codec(cls).decode(value))


def _optional(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    def decode_optional(value: Any) -> Any:
        return None if value is None else decode(value)

    if encode is None:
        return None, decode_optional
    inner = encode
    return (lambda value: None if value is None else inner(value)), decode_optional


def _decode_items(decoders: Callable[[int], Decoder], value: list[Any]) -> tuple[Any, ...]:
    out = []
    for i, item in enumerate(value):
        try:
            out.append(decoders(i)(item))
        except _BadMember as err:
            err.path.insert(0, f"[{i}]")
            raise
    return tuple(out)


def _homogeneous_tuple(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    def decode_all(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _BadMember(f"expected an array, got {_json_type(value)}")
        return _decode_items(lambda _: decode, value)

    if encode is None:
        return list, decode_all
    inner = encode
    return (lambda value: [inner(item) for item in value]), decode_all


def _fixed_tuple(parts: tuple[tuple[Encoder, Decoder], ...]) -> tuple[Encoder, Decoder]:
    def encode(value: Any) -> list[Any]:
        return [item if enc is None else enc(item) for (enc, _), item in zip(parts, value, strict=True)]

    def decode(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) != len(parts):
            raise _BadMember(f"expected an array of {len(parts)}, got {_json_type(value)}")
        return _decode_items(lambda i: parts[i][1], value)

    return (list if all(enc is None for enc, _ in parts) else encode), decode


__all__ = ["FORMAT_VERSION", "InstanceRecord", "LeaderRecord", "Record", "RecordError", "decode", "encode"]
