"""Generate the lite (pure-Python) schema module of each .proto file: ``proto/.../NAME_lite.py``.

Input is a ``FileDescriptorSet`` written by ``protoc --descriptor_set_out --include_imports`` (see
scripts/gen-proto.sh), so the schema comes from the same descriptors as the ``*_pb2`` modules. Each output
module holds the enums (an ``agent.protolite.EnumType`` plus module-level constants, as ``*_pb2`` has),
one class per message with typed attributes and a typed keyword-only constructor for mypy, the schema
tables the codec in ``agent/protolite.py`` runs on, and one client stub per service over any
``protolite.Transport``.

Usage: python scripts/gen_proto_lite.py DESCRIPTOR_SET OUTDIR FILE.proto...
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

FD = descriptor_pb2.FieldDescriptorProto
_KIND_NAMES = {
    FD.TYPE_DOUBLE: "DOUBLE", FD.TYPE_FLOAT: "FLOAT", FD.TYPE_INT64: "INT64", FD.TYPE_UINT64: "UINT64",
    FD.TYPE_INT32: "INT32", FD.TYPE_FIXED64: "FIXED64", FD.TYPE_FIXED32: "FIXED32", FD.TYPE_BOOL: "BOOL",
    FD.TYPE_STRING: "STRING", FD.TYPE_MESSAGE: "MESSAGE", FD.TYPE_BYTES: "BYTES", FD.TYPE_UINT32: "UINT32",
    FD.TYPE_ENUM: "ENUM", FD.TYPE_SFIXED32: "SFIXED32", FD.TYPE_SFIXED64: "SFIXED64",
    FD.TYPE_SINT32: "SINT32", FD.TYPE_SINT64: "SINT64",
}
_PY_TYPES = {"DOUBLE": "float", "FLOAT": "float", "BOOL": "bool", "STRING": "str", "BYTES": "bytes"}
# Well-known types the runtime implements by hand.
_WELL_KNOWN = {".google.protobuf.Timestamp": "_pl.Timestamp"}


def _lite_module(proto_name: str) -> str:
    """``proto/agent/v1/agent.proto`` → ``proto.agent.v1.agent_lite``."""
    return proto_name.removesuffix(".proto").replace("/", ".") + "_lite"


class _File:
    """Names of one .proto file's messages and enums, and how to spell each type in Python. Types of
    other generated files (``others``: full name → their ``_File``) are reached through an import."""

    def __init__(self, proto: descriptor_pb2.FileDescriptorProto,
                 others: dict[str, _File] | None = None) -> None:
        self.proto = proto
        self.others = others or {}
        self.imports: dict[str, str] = {}  # module → alias
        self.package = proto.package
        self.messages: list[tuple[str, descriptor_pb2.DescriptorProto]] = []  # (python name, message)
        # (python name, full name, enum)
        self.enums: list[tuple[str, str, descriptor_pb2.EnumDescriptorProto]] = []
        self.names: dict[str, str] = {}  # ".pkg.Outer.Inner" → "Outer_Inner"
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for enum in proto.enum_type:
            self._add_enum(enum, prefix="")
        for message in proto.message_type:
            self._add_message(message, prefix="")

    def _full(self, prefix: str, name: str) -> str:
        dotted = f"{prefix}.{name}" if prefix else name
        return f".{self.package}.{dotted}" if self.package else f".{dotted}"

    def _add_enum(self, enum: descriptor_pb2.EnumDescriptorProto, *, prefix: str) -> None:
        full = self._full(prefix, enum.name)
        self.names[full] = (prefix.replace(".", "_") + "_" if prefix else "") + enum.name
        self.enums.append((self.names[full], full.lstrip("."), enum))

    def _add_message(self, message: descriptor_pb2.DescriptorProto, *, prefix: str) -> None:
        full = self._full(prefix, message.name)
        if message.options.map_entry:
            self.map_entries[full] = message
            return
        python = (prefix.replace(".", "_") + "_" if prefix else "") + message.name
        self.names[full] = python
        self.messages.append((python, message))
        inner = f"{prefix}.{message.name}" if prefix else message.name
        for enum in message.enum_type:
            self._add_enum(enum, prefix=inner)
        for nested in message.nested_type:
            self._add_message(nested, prefix=inner)

    def type_name(self, proto_name: str) -> str:
        if proto_name in _WELL_KNOWN:
            return _WELL_KNOWN[proto_name]
        if proto_name in self.names:
            return self.names[proto_name]
        owner = self.others.get(proto_name)
        if owner is None:
            raise SystemExit(f"gen_proto_lite: type {proto_name} is defined in a file that is not generated "
                             f"with this one; only well-known types {sorted(_WELL_KNOWN)} are built in")
        module = _lite_module(owner.proto.name)
        alias = self.imports.setdefault(module, "_" + module.replace(".", "_"))
        return f"{alias}.{owner.names[proto_name]}"

    def entry_of(self, proto_name: str) -> descriptor_pb2.DescriptorProto | None:
        """The map entry message ``proto_name``, from this file or another generated one."""
        if proto_name in self.map_entries:
            return self.map_entries[proto_name]
        owner = self.others.get(proto_name)
        return owner.map_entries.get(proto_name) if owner is not None else None


def _field_args(file: _File, field: descriptor_pb2.FieldDescriptorProto,
                message: descriptor_pb2.DescriptorProto) -> tuple[str, str, str]:
    """(schema expression, attribute annotation, constructor parameter annotation)."""
    kind = _KIND_NAMES[field.type]
    args = [str(field.number), repr(field.name), f"_pl.{kind}"]
    entry = file.entry_of(field.type_name) if field.type == FD.TYPE_MESSAGE else None
    if entry is not None:
        key, value = entry.field[0], entry.field[1]
        args[2] = "_pl.MESSAGE"
        args += [f"map_key=_pl.{_KIND_NAMES[key.type]}", f"map_value=_pl.{_KIND_NAMES[value.type]}"]
        value_type = _py_type(file, value)
        if value.type == FD.TYPE_MESSAGE:
            args.append(f"map_value_message={file.type_name(value.type_name)}")
        elif value.type == FD.TYPE_ENUM:
            args.append(f"map_value_enum={file.type_name(value.type_name)}")
        key_type = _py_type(file, key)
        return (f"_pl.Field({', '.join(args)})", f"dict[{key_type}, {value_type}]",
                f"Mapping[{key_type}, {value_type}] | None")
    py = _py_type(file, field)
    if field.type == FD.TYPE_MESSAGE:
        args.append(f"message={file.type_name(field.type_name)}")
    elif field.type == FD.TYPE_ENUM:
        args.append(f"enum={file.type_name(field.type_name)}")
    if field.label == FD.LABEL_REPEATED:
        args.append("repeated=True")
        return f"_pl.Field({', '.join(args)})", f"list[{py}]", f"Iterable[{py}] | None"
    if field.proto3_optional:
        args.append("optional=True")
    elif field.HasField("oneof_index"):
        args.append(f"oneof={message.oneof_decl[field.oneof_index].name!r}")
    return f"_pl.Field({', '.join(args)})", py, f"{py} | None"


def _py_type(file: _File, field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type == FD.TYPE_MESSAGE:
        return file.type_name(field.type_name)
    return _PY_TYPES.get(_KIND_NAMES[field.type], "int")


def render(proto: descriptor_pb2.FileDescriptorProto, others: dict[str, _File] | None = None) -> str:
    file = _File(proto, others)
    out = [
        f"# Generated by scripts/gen_proto_lite.py from {proto.name}. DO NOT EDIT.",
        f'"""Lite messages, enums and client stubs of {proto.name} (see agent/protolite.py)."""',
        "",
        "from __future__ import annotations",
        "",
        "from agent import protolite as _pl",
        "",
        "TYPE_CHECKING = False  # not typing's: see agent/protolite.py",
        "if TYPE_CHECKING:",
        "    from collections.abc import Iterable, Mapping",
        "",
    ]
    for python, full, enum in file.enums:
        values = ", ".join(f"{v.name!r}: {v.number}" for v in enum.value)
        out.append(f"{python} = _pl.EnumType({full!r}, {{{values}}})")
        for v in enum.value:
            out.append(f"{v.name} = {v.number}")
        out.append("")
    for python, message in file.messages:
        out.append("")
        out.append(f"class {python}(_pl.Message):")
        params = []
        for field in message.field:
            _, annotation, parameter = _field_args(file, field, message)
            out.append(f"    {field.name}: {annotation}")
            params.append(f"{field.name}: {parameter} = None")
        out.append("")
        out.append("    if TYPE_CHECKING:")
        if params:
            out.append("        def __init__(")
            out.append("            self, *,")
            for param in params:
                out.append(f"            {param},")
            out.append("        ) -> None: ...")
        else:
            out.append("        def __init__(self) -> None: ...")
        out.append("")
    out.append("")
    full_names = {python: full.lstrip(".") for full, python in file.names.items()}
    for python, message in file.messages:
        out.append(f"_pl.define({python}, {full_names[python]!r}, (")
        for field in message.field:
            schema, _, _ = _field_args(file, field, message)
            out.append(f"    {schema},")
        out.append("))")
    for service in proto.service:
        out += ["", ""]
        out.append(f"class {service.name}Stub:")
        out.append(f'    """Client of {proto.package}.{service.name} over any protolite transport."""')
        out.append("")
        for method in service.method:
            req, resp = file.type_name(method.input_type), file.type_name(method.output_type)
            path = f"/{proto.package}.{service.name}/{method.name}"
            out.append(f"    {method.name}_method = _pl.Method({path!r}, {req}, {resp}, "
                       f"client_streaming={method.client_streaming}, "
                       f"server_streaming={method.server_streaming})")
        out.append("")
        out.append("    def __init__(self, transport: _pl.Transport) -> None:")
        out.append("        self.transport = transport")
        for method in service.method:
            req, resp = file.type_name(method.input_type), file.type_name(method.output_type)
            out.append("")
            if method.client_streaming:
                out.append(f"    def {method.name}(self, requests: Iterable[{req}], /) "
                           f"-> _pl.Stream[{resp}]:")
                out.append(f"        return self.transport.stream_stream(self.{method.name}_method, "
                           "requests)")
            elif method.server_streaming:
                out.append(f"    def {method.name}(self, request: {req}, /) -> _pl.Stream[{resp}]:")
                out.append(f"        return self.transport.server_stream(self.{method.name}_method, request)")
            else:
                out.append(f"    def {method.name}(self, request: {req}, /) -> {resp}:")
                out.append(f"        return self.transport.unary(self.{method.name}_method, request)")
    out.append("")
    if file.imports:
        # Messages of other generated files this one refers to (e.g. the agent's ContainerSpec).
        at = out.index("TYPE_CHECKING = False  # not typing's: see agent/protolite.py")
        out[at:at] = [f"import {module} as {alias}" for module, alias in sorted(file.imports.items())] + [""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(Path(argv[0]).read_bytes())
    wanted = set(argv[2:])
    generated = [proto for proto in descriptor_set.file if proto.name in wanted]
    # Every generated file's types, so one file can refer to another's (their lite modules import).
    others: dict[str, _File] = {}
    for proto in generated:
        known = _File(proto)
        others.update(dict.fromkeys(known.names, known))
        others.update(dict.fromkeys(known.map_entries, known))
    for proto in generated:
        target = Path(argv[1]) / proto.name.replace(".proto", "_lite.py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(proto, others))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
