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
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

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
    """The JSON bytes stored for ``record`` (compact, UTF-8, members in field order). Raises
    ``ValueError`` for a float that is not finite (JSON has none) or an integer past 64 bits."""
    try:
        return orjson.dumps(_codec(type(record)).stored(record))
    except orjson.JSONEncodeError as err:  # (a TypeError: a value of no JSON type, or too large)
        raise ValueError(f"{type(record).__name__}: {err} (not stored)") from None


def decode(record_type: type[T], data: bytes, *, revision: int = 0, create_revision: int = 0,
           lease: int = 0) -> T:
    """The record in ``data``, with its etcd metadata filled in. Raises ``RecordError``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:  # (invalid UTF-8 included)
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
        value: T = _codec(record_type).fast(obj, meta)
    except _BadMember as err:
        raise RecordError(f"{err.where()}: {err.message}") from None
    return value


# -- the derived codec -------------------------------------------------------------------------------

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
    shared: bool = False  # a string kept once however many records hold it (``model.SHARED``)


@dataclass(frozen=True)
class _DataclassCodec:
    """``decode_fields`` checks a record member by member through the fields' decoders and names the
    first member at fault; ``fast`` (``_fast_decoder``) is the same decoding generated as one function
    per class, for records that decode, and hands any record it cannot take to ``decode_fields``."""

    cls: type[Any]
    fields: tuple[_Field, ...]
    fast: Callable[[Any, dict[str, int]], Any] = dataclasses.field(init=False, repr=False, compare=False)
    # The value's members as a dict for ``orjson`` (``_members_encoder``): ``members`` for a nested value,
    # ``stored`` for a record (``"v"`` first).
    members: Callable[[Any], dict[str, Any]] = dataclasses.field(init=False, repr=False, compare=False)
    stored: Callable[[Any], dict[str, Any]] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", _fast_decoder(self))
        members, stored = _members_encoder(self)
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "stored", stored)

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
                   required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                   shared=f.metadata.get("shared", False))
            for f in dataclasses.fields(cls) if f.name not in _META_FIELDS
        )
        codec = _codecs[cls] = _DataclassCodec(cls, fields)
    return codec


# -- the generated encoders ----------------------------------------------------------------------------
#
# The leader encodes every record it writes: 200,000 at least to place 100,000 replicas. ``orjson`` writes
# the bytes the standard library's encoder wrote (compact, UTF-8, members in order) from a dict of the
# members, which ``_members_encoder`` builds in one generated function per class instead of a call per
# member (``_DataclassCodec.encode``, kept as the reference): scalars and enums as they are (``orjson``
# writes enums by value and tuples as arrays), nested values through their own function, and every float
# checked on the way, since ``orjson`` would write NaN and infinity as ``null`` where ``json`` refused
# them. A replica's record is encoded in half the time and decoded in 60 % of it (``bench/record_codec.py``,
# docs/scaling.md, part 35).

_INF = math.inf


def _not_finite(cls: type[Any], name: str, value: Any) -> None:
    raise ValueError(f"{cls.__name__}.{name}: {value!r} is not stored (JSON has no NaN or infinity)")


def _finite_inside(value: Any) -> bool:
    """Whether every float in an encoded value (lists, dicts, scalars) is finite."""
    if type(value) is float:
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite_inside(item) for item in value)
    if isinstance(value, dict):
        return all(_finite_inside(item) for item in value.values())
    return True


def _holds_floats(tp: Any) -> bool:
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return _holds_floats(supertype)
    if tp is float:
        return True
    if dataclasses.is_dataclass(tp):
        return True  # its members may be floats: the generic encoder's dicts are walked too
    return any(_holds_floats(arg) for arg in typing.get_args(tp) if arg is not Ellipsis)


def _plain(tp: Any) -> bool:
    """A type ``orjson`` writes as the generic encoder would with no float in it: str, int, bool, enums,
    ``NewType``s of those, and optionals and tuples of them."""
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return _plain(supertype)
    if tp in (str, int, bool) or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return True
    origin = typing.get_origin(tp)
    if origin in (tuple, typing.Union, types.UnionType):
        return all(arg is Ellipsis or arg is type(None) or _plain(arg) for arg in typing.get_args(tp))
    return False


def _optional_of(tp: Any) -> Any:
    """``X`` for a type ``X | None``, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _records_of(tp: Any) -> type[Any] | None:
    """``X`` for a type ``tuple[X, ...]`` whose items are dataclasses, else None."""
    args = typing.get_args(tp)
    if (typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis
            and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type)):
        return args[0]
    return None


def _members_encoder(codec: _DataclassCodec) -> tuple[Callable[[Any], dict[str, Any]],
                                                        Callable[[Any], dict[str, Any]]]:
    cls = codec.cls
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {"cls": cls, "_INF": _INF, "_not_finite": _not_finite, "_codec": _codec,
                           "_finite_inside": _finite_inside}
    body: list[str] = []
    members: list[str] = []
    for i, f in enumerate(codec.fields):
        tp = hints[f.name]
        inner = _optional_of(tp)
        base = inner if inner is not None else tp
        base = getattr(base, "__supertype__", base)
        body.append(f"m{i} = o.{f.name}")
        guard = f"if m{i} is not None and " if inner is not None else "if "
        if base is float:
            body += [f"{guard}not -_INF < m{i} < _INF:", f"    _not_finite(cls, {f.name!r}, m{i})"]
        elif _plain(base):
            pass
        elif dataclasses.is_dataclass(base) and isinstance(base, type):
            env[f"nested{i}"] = base
            encoded = f"m{i} = _codec(nested{i}).members(m{i})"
            body += [f"if m{i} is not None:", f"    {encoded}"] if inner is not None else [encoded]
        elif (item := _records_of(base)) is not None:
            env[f"nested{i}"] = item
            body += [f"if m{i}:", f"    each = _codec(nested{i}).members",
                     f"    m{i} = [each(x) for x in m{i}]"]
        else:  # anything else: the generic encoder, and its floats checked
            env[f"encode{i}"] = f.encode
            if f.encode is not None:
                body.append(f"m{i} = encode{i}(m{i})")
            if _holds_floats(base):
                body += [f"if not _finite_inside(m{i}):", f"    _not_finite(cls, {f.name!r}, m{i})"]
        members.append(f"{f.name!r}: m{i}")
    source = "\n".join([
        "def members(o):", *("    " + line for line in body), f"    return {{{', '.join(members)}}}",
        "def stored(o):", *("    " + line for line in body),
        f"    return {{'v': {FORMAT_VERSION}, {', '.join(members)}}}"])
    exec(compile(source, f"<records: {cls.__name__} encoder>", "exec"), env)  # our source, from type hints
    members_of: Callable[[Any], dict[str, Any]] = env["members"]
    stored: Callable[[Any], dict[str, Any]] = env["stored"]
    return members_of, stored


# -- the generated decoders ----------------------------------------------------------------------------
#
# A follower decodes every record the cluster writes (a standby all of them: the leader's own writes are
# echoes it does not decode, ``scheduler.store.echoes``), and the generic path above costs a call or more
# per member and per nested decision: most of a standby's cpu while placing went there (docs/scaling.md,
# part 32). ``_fast_decoder`` writes the same checks out as one function per class: members read by name,
# scalars checked inline, nested records through their own generated function, and the record built with
# its fields' values (its ``__dict__`` filled at once where the class allows). It decides nothing of its
# own: a member it cannot take (a wrong type, a required one missing, anything unusual) sends the whole
# record to ``decode_fields``, which decodes it or names the member at fault exactly as before.

_ABSENT = object()
_NO_META: dict[str, int] = {}


def _fast_decoder(codec: _DataclassCodec) -> Callable[[Any, dict[str, int]], Any]:
    cls = codec.cls
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {"cls": cls, "slow": codec.decode_fields, "_Bad": _BadMember, "_ABSENT": _ABSENT,
                           "_intern": sys.intern, "_new": object.__new__, "_set": object.__setattr__,
                           "_codec": _codec, "_NO_META": _NO_META}
    specs = {spec.name: spec for spec in dataclasses.fields(cls)}
    index_of = {f.name: i for i, f in enumerate(codec.fields)}
    body: list[str] = []
    for i, f in enumerate(codec.fields):
        spec = specs[f.name]
        body += [f"v = obj.get({f.name!r}, _ABSENT)", "if v is _ABSENT:"]
        if f.required:
            body.append("    raise _Bad('')")
        elif spec.default_factory is not dataclasses.MISSING:
            env[f"factory{i}"] = spec.default_factory
            body.append(f"    a{i} = factory{i}()")
        else:
            env[f"default{i}"] = spec.default
            body.append(f"    a{i} = default{i}")
        body.append("else:")
        body += ["    " + line for line in _checks(hints[f.name], f, i, env)]
        body.append(f"    a{i} = v")
    values: list[str] = []
    for spec in specs.values():
        if spec.name in _META_FIELDS:
            env[f"meta_{spec.name}"] = spec.default
            values.append(f"{spec.name!r}: meta.get({spec.name!r}, meta_{spec.name})")
        else:
            values.append(f"{spec.name!r}: a{index_of[spec.name]}")
    # What the dataclass's own ``__init__`` would store, each field set as it sets them, without its call
    # with keywords. Not its ``__dict__`` filled at once: an instance whose dict is asked for keeps one
    # of its own, where one built field by field keeps its values inline (a standby at 5,000 hosts held
    # 246 MiB with the dict against 200-225 without: docs/scaling.md, part 32).
    plain = (cls.__dataclass_params__.init and not hasattr(cls, "__post_init__")
             and all(spec.init for spec in specs.values()))
    if plain:
        build = ["o = _new(cls)", *(f"_set(o, {v.replace(': ', ', ', 1)})" for v in values), "return o"]
    else:
        build = [f"return cls(**{{{', '.join(values)}}})"]
    source = "\n".join(["def fast(obj, meta):",
                        "    if type(obj) is not dict:", "        return slow(obj, meta)",
                        "    try:", *("        " + line for line in body),
                        "    except (_Bad, KeyError, TypeError):", "        return slow(obj, meta)",
                        *("    " + line for line in build)])
    exec(compile(source, f"<records: {cls.__name__} decoder>", "exec"), env)  # our source, from type hints
    fast: Callable[[Any, dict[str, int]], Any] = env["fast"]
    return fast


def _checks(tp: Any, f: _Field, i: int, env: dict[str, Any]) -> list[str]:
    """Lines that check and convert the member's JSON value ``v`` in place, raising ``_Bad`` at anything
    the generic decoder should look at; the field's own decoder for types not written out here."""
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return _checks(supertype, f, i, env)
    if tp in (str, bool, int):
        lines = [f"if type(v) is not {tp.__name__}:", "    raise _Bad('')"]
        return lines + (["v = _intern(v)"] if f.shared and tp is str else [])
    if tp is float:
        return ["if type(v) is not float:", "    if type(v) is not int:", "        raise _Bad('')",
                "    v = float(v)"]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        env[f"members{i}"] = {member.value: member for member in tp}
        return [f"v = members{i}[v]"]  # KeyError, TypeError: to the generic decoder
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        env[f"nested{i}"] = tp
        return [f"v = _codec(nested{i}).fast(v, _NO_META)"]
    if (item := _records_of(tp)) is not None:
        env[f"nested{i}"] = item
        return ["if type(v) is not list:", "    raise _Bad('')",
                f"each = _codec(nested{i}).fast", "v = tuple([each(x, _NO_META) for x in v])"]
    if (optional := _optional_of(tp)) is not None:
        inner = _checks(optional, f, i, env)
        return ["if v is not None:", *("    " + line for line in inner)]
    env[f"decode{i}"] = f.decode
    return [f"v = decode{i}(v)"]


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
    return (lambda value: _codec(cls).encode(value)), (lambda value: _codec(cls).fast(value, _NO_META))


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
        try:
            return tuple([decode(item) for item in value])
        except _BadMember:  # again item by item, for the index of the one at fault
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
