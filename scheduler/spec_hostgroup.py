"""A host group document of a service file (``kind: hostgroup``), to and from ``model.HostGroupSpec``.

The keys are docs/elastic-hosts.md's contract: ``name``, ``min``, ``max``, ``shape`` (``cpus``,
``memory``, ``labels``), ``scale_out``, ``scale_in`` and ``provider`` (a ``webhook`` and/or a
``command``). ``scheduler.spec`` hands every document whose ``kind`` is ``hostgroup`` to
``parse_hostgroup``, with the same ``Reader``, so a file mixing services and host groups reports every
mistake of every document at once, each with its path and line. Values use the service file's units
(``cpus: 2``, ``memory: 4G``, ``cooldown: 60s``, ``utilization_below: 50%``).

What is checked here is what can be known from the document alone: sizes, durations, percentages,
``min <= max``, ``max >= 1``, a webhook URL that is http(s) with a host, TLS options only with an https
URL, a client certificate only with its key (and the key only with its certificate), absolute paths for
the files the scheduler reads, a non-empty ``argv``. Whether those files exist is not: the instance that
answers ``apply`` need not be the leader that delivers, nor on the same machine. A group without any
provider is allowed: the scheduler decides and records (``describe hostgroup``, the metrics) but asks
nobody — a dry run, or a group whose hosts are added by hand.

``render_yaml`` writes specs back as documents that parse to the same specs (``shoal get hostgroup NAME
-o yaml``): ``name``, ``min`` and ``max`` always, other keys only where they differ from the defaults,
the ``group`` label (always in a parsed shape) left out.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import yaml

from scheduler import constraints as constraint_text
from scheduler import spec_yaml as sy
from scheduler import units
from scheduler.model import (
    LABEL_GROUP,
    CommandProvider,
    GroupName,
    HostGroupSpec,
    HostShape,
    WebhookProvider,
)
from scheduler.spec_yaml import Invalid

KIND = "hostgroup"
TOP_KEYS = ("kind", "name", "min", "max", "shape", "scale_out", "scale_in", "provider")
SHAPE_KEYS = ("cpus", "memory", "labels")
SCALE_OUT_KEYS = ("pending_for", "max_per_request", "cooldown", "provision_timeout")
SCALE_IN_KEYS = ("enabled", "utilization_below", "for", "delay_after_scale_out", "max_concurrent_drains")
PROVIDER_KEYS = ("webhook", "command")
WEBHOOK_KEYS = ("url", "token_file", "ca_file", "cert_file", "key_file", "timeout")
COMMAND_KEYS = ("argv", "timeout")

# What people bring from cloud autoscaling groups and cluster autoscalers, mapped to our key.
_TOP_ALIASES = {"min_hosts": "min", "max_hosts": "max", "minSize": "min", "maxSize": "max",
                "min_size": "min", "max_size": "max", "replicas": "max", "webhook": "provider.webhook",
                "command": "provider.command", "cooldown": "scale_out.cooldown", "scaleOut": "scale_out",
                "scale_up": "scale_out", "scaleIn": "scale_in", "scale_down": "scale_in",
                "labels": "shape.labels", "cpus": "shape.cpus", "memory": "shape.memory",
                "instance_type": "shape", "template": "shape"}
_SHAPE_ALIASES = {"cpu": "cpus", "cores": "cpus", "mem": "memory", "ram": "memory"}
_SCALE_OUT_ALIASES = {"delay": "pending_for", "pending": "pending_for", "max_hosts": "max_per_request",
                      "batch": "max_per_request", "cooldown_period": "cooldown",
                      "timeout": "provision_timeout"}
_SCALE_IN_ALIASES = {"enable": "enabled", "utilization": "utilization_below",
                     "threshold": "utilization_below", "after": "for", "unneeded_time": "for",
                     "delay": "delay_after_scale_out", "max_drains": "max_concurrent_drains"}
_WEBHOOK_ALIASES = {"endpoint": "url", "token": "token_file", "ca": "ca_file", "cert": "cert_file",
                    "key": "key_file", "certificate": "cert_file"}
_COMMAND_ALIASES = {"command": "argv", "args": "argv", "cmd": "argv"}

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DEFAULTS = HostGroupSpec(name=GroupName("-"), max_hosts=1)
_WEBHOOK_DEFAULTS = WebhookProvider(url="")
_COMMAND_DEFAULTS = CommandProvider(argv=())


# -- parsing --------------------------------------------------------------------------------------------

def parse_hostgroup(r: sy.Reader, node: yaml.Node) -> HostGroupSpec | None:
    """The host group ``node`` declares, or None after reporting its problems to ``r``."""
    before = len(r.problems)
    top = r.mapping(node, "", TOP_KEYS, required=("name", "max"), aliases=_TOP_ALIASES)
    if top is None:
        return None
    name = r.read(top, "name", "", _group_name, "", required=True)
    low = r.read(top, "min", "", _count(0), _DEFAULTS.min_hosts)
    high = r.read(top, "max", "", _count(1), 0, required=True)
    if "min" in top and "max" in top and high and low > high:
        r.report(top["min"], "min", f"min ({low}) is more than max ({high})")
    shape = _shape(r, top["shape"], GroupName(name)) if _given(top, "shape") else None
    out = _scale_out(r, top["scale_out"]) if _given(top, "scale_out") else {}
    into = _scale_in(r, top["scale_in"]) if _given(top, "scale_in") else {}
    webhook, command = _provider(r, top["provider"]) if _given(top, "provider") else (None, None)
    if len(r.problems) > before or not name:
        return None
    return HostGroupSpec(name=GroupName(name), min_hosts=low, max_hosts=high, shape=shape,
                         webhook=webhook, command=command, **out, **into)


def _given(values: Mapping[str, yaml.Node], key: str) -> bool:
    return key in values and not sy.is_null(values[key])


def _group_name(node: yaml.Node) -> str:
    name = sy.text(node)
    if len(name) > 63 or not _NAME_RE.match(name):
        raise Invalid(f"{name!r} is not a valid host group name: use at most 63 lowercase letters, digits "
                      "and '-', starting and ending with a letter or digit (it is the hosts' group label)")
    return name


def _count(least: int) -> Callable[[yaml.Node], int]:
    def convert(node: yaml.Node) -> int:
        value = sy.integer(node)
        if value < least:
            raise Invalid(f"must be at least {least}, got {value}")
        return value
    return convert


def _unit(parse: Callable[..., Any], **kwargs: Any) -> Callable[[yaml.Node], Any]:
    def convert(node: yaml.Node) -> Any:
        try:
            return parse(sy.scalar_text(node), **kwargs)
        except units.InvalidValue as err:
            raise Invalid(str(err)) from None
    return convert


def _duration(what: str, *, positive: bool = False) -> Callable[[yaml.Node], float]:
    parse = _unit(units.parse_duration, what=what)

    def convert(node: yaml.Node) -> float:
        seconds: float = parse(node)
        if positive and seconds <= 0:
            raise Invalid(f"{what} must be more than 0")
        return seconds
    return convert


def _memory(node: yaml.Node) -> int:
    size: int = _unit(units.parse_size, what="shape memory")(node)
    if size <= 0:
        raise Invalid("shape memory must be more than 0")
    return size


def _percent(node: yaml.Node) -> int:
    """``50%`` → 50, 1..100. The sign is required: a bare 0.5 or 50 would be read both ways."""
    raw = sy.scalar_text(node).strip()
    if not (raw.endswith("%") and raw[:-1].isdigit()):
        raise Invalid(f"expected a percentage like \"50%\", got {sy.kind_of(node)}")
    percent = int(raw[:-1])
    if not 1 <= percent <= 100:
        raise Invalid(f"{raw!r} is outside 1%..100%")
    return percent


def _labels(node: yaml.Node) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise Invalid(f"expected a mapping of label names to values, got {sy.kind_of(node)}")
    out: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = sy.text(key_node)
        if not constraint_text.is_label_key(key):
            raise Invalid(f"{key!r} is not a host label name", node=key_node)
        if key in out:
            raise Invalid(f"{key!r} is given twice", node=key_node)
        value = sy.text(value_node)
        try:  # a shape's label must be one a placement constraint can select
            constraint_text.parse_constraint(f"{key}={value}")
        except constraint_text.InvalidConstraint:
            raise Invalid(f"{value!r} is not a host label value (letters, digits and ._/:@+-)",
                          node=value_node) from None
        out[key] = value
    return out


def _shape(r: sy.Reader, node: yaml.Node, name: GroupName) -> HostShape | None:
    path = "shape"
    values = r.mapping(node, path, SHAPE_KEYS, required=("cpus", "memory"), aliases=_SHAPE_ALIASES)
    if values is None:
        return None
    cpus = r.read(values, "cpus", path, _unit(units.parse_cpus, what="shape cpus"), 0, required=True)
    memory = r.read(values, "memory", path, _memory, 0, required=True)
    labels = r.read(values, "labels", path, _labels, {})
    group = labels.get(LABEL_GROUP)
    if group is not None and name and group != name:
        r.report(values["labels"], f"{path}.labels.{LABEL_GROUP}",
                 f"the group label is the group's name ({name!r}), not {group!r}")
    labels[LABEL_GROUP] = name  # every host of the group carries it (docs/elastic-hosts.md)
    return HostShape(cpu_millis=cpus, memory_bytes=memory, labels=tuple(sorted(labels.items())))


def _scale_out(r: sy.Reader, node: yaml.Node) -> dict[str, Any]:
    path = "scale_out"
    values = r.mapping(node, path, SCALE_OUT_KEYS, aliases=_SCALE_OUT_ALIASES)
    if values is None:
        return {}
    return {
        "pending_for_seconds": r.read(values, "pending_for", path, _duration("pending_for"),
                                      _DEFAULTS.pending_for_seconds),
        "max_per_request": r.read(values, "max_per_request", path, _count(1), _DEFAULTS.max_per_request),
        "scale_out_cooldown_seconds": r.read(values, "cooldown", path, _duration("cooldown"),
                                             _DEFAULTS.scale_out_cooldown_seconds),
        "provision_timeout_seconds": r.read(values, "provision_timeout", path,
                                            _duration("provision_timeout", positive=True),
                                            _DEFAULTS.provision_timeout_seconds),
    }


def _scale_in(r: sy.Reader, node: yaml.Node) -> dict[str, Any]:
    path = "scale_in"
    values = r.mapping(node, path, SCALE_IN_KEYS, aliases=_SCALE_IN_ALIASES)
    if values is None:
        return {}
    return {
        "scale_in": r.read(values, "enabled", path, sy.boolean, _DEFAULTS.scale_in),
        "scale_in_utilization_percent": r.read(values, "utilization_below", path, _percent,
                                               _DEFAULTS.scale_in_utilization_percent),
        "scale_in_after_seconds": r.read(values, "for", path, _duration("for"),
                                         _DEFAULTS.scale_in_after_seconds),
        "scale_in_delay_after_scale_out_seconds": r.read(
            values, "delay_after_scale_out", path, _duration("delay_after_scale_out"),
            _DEFAULTS.scale_in_delay_after_scale_out_seconds),
        "max_concurrent_drains": r.read(values, "max_concurrent_drains", path, _count(1),
                                        _DEFAULTS.max_concurrent_drains),
    }


def _provider(r: sy.Reader, node: yaml.Node) -> tuple[WebhookProvider | None, CommandProvider | None]:
    values = r.mapping(node, "provider", PROVIDER_KEYS)
    if values is None:
        return None, None
    webhook = _webhook(r, values["webhook"]) if _given(values, "webhook") else None
    command = _command(r, values["command"]) if _given(values, "command") else None
    return webhook, command


def _url(node: yaml.Node) -> str:
    url = sy.text(node).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{url!r} is not an http:// or https:// URL with a host")
    return url


def _absolute_path(node: yaml.Node) -> str:
    path = sy.text(node)
    if not posixpath.isabs(path) or "\x00" in path:
        raise Invalid(f"{path!r} is not an absolute path: the scheduler reads it, from wherever it runs")
    return path


def _webhook(r: sy.Reader, node: yaml.Node) -> WebhookProvider | None:
    path = "provider.webhook"
    values = r.mapping(node, path, WEBHOOK_KEYS, required=("url",), aliases=_WEBHOOK_ALIASES)
    if values is None:
        return None
    url = r.read(values, "url", path, _url, "", required=True)
    files = {key: r.read(values, key, path, _absolute_path, "")
             for key in ("token_file", "ca_file", "cert_file", "key_file")}
    timeout = r.read(values, "timeout", path, _duration("webhook timeout", positive=True),
                     _WEBHOOK_DEFAULTS.timeout_seconds)
    for have, need in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if files[have] and not files[need]:
            r.report(values[have], f"{path}.{have}", f"a client certificate needs both cert_file and "
                                                     f"key_file: {need} is missing")
    if url.startswith("http://"):
        for key in ("ca_file", "cert_file", "key_file"):
            if files[key]:
                r.report(values[key], f"{path}.{key}", f"{key} is for TLS: the url must be https://")
    if not url:
        return None
    return WebhookProvider(url=url, timeout_seconds=timeout, **files)


def _argv(node: yaml.Node) -> tuple[str, ...]:
    """A list of words, or one string split like a shell would (as a service's ``command``)."""
    if isinstance(node, yaml.SequenceNode):
        argv = [sy.text(item) for item in node.value]
    else:
        text = sy.text(node)
        try:
            argv = shlex.split(text)
        except ValueError as err:
            raise Invalid(f"cannot split {text!r} into words: {err}") from None
    if not argv or not argv[0]:
        raise Invalid("the command is empty")
    if any("\x00" in word for word in argv):
        raise Invalid("a word of the command contains a NUL character")
    return tuple(argv)


def _command(r: sy.Reader, node: yaml.Node) -> CommandProvider | None:
    path = "provider.command"
    values = r.mapping(node, path, COMMAND_KEYS, required=("argv",), aliases=_COMMAND_ALIASES)
    if values is None:
        return None
    argv = r.read(values, "argv", path, _argv, (), required=True)
    timeout = r.read(values, "timeout", path, _duration("command timeout", positive=True),
                     _COMMAND_DEFAULTS.timeout_seconds)
    return CommandProvider(argv=argv, timeout_seconds=timeout) if argv else None


# -- rendering ------------------------------------------------------------------------------------------

def file_dict(spec: HostGroupSpec) -> dict[str, Any]:
    """The document's mapping: keys in the documented order, defaults left out (``min`` and ``max``
    always, so the bounds are read at a glance)."""
    out: dict[str, Any] = {"kind": KIND, "name": spec.name, "min": spec.min_hosts, "max": spec.max_hosts}
    if spec.shape is not None:
        shape: dict[str, Any] = {"cpus": _thousandths(spec.shape.cpu_millis),
                                 "memory": _size(spec.shape.memory_bytes)}
        labels = {k: v for k, v in spec.shape.labels if k != LABEL_GROUP}
        if labels:
            shape["labels"] = labels
        out["shape"] = shape
    out.update(_section(spec, "scale_out", (
        ("pending_for", "pending_for_seconds", units.duration_text),
        ("max_per_request", "max_per_request", int),
        ("cooldown", "scale_out_cooldown_seconds", units.duration_text),
        ("provision_timeout", "provision_timeout_seconds", units.duration_text))))
    out.update(_section(spec, "scale_in", (
        ("enabled", "scale_in", bool),
        ("utilization_below", "scale_in_utilization_percent", lambda p: f"{p}%"),
        ("for", "scale_in_after_seconds", units.duration_text),
        ("delay_after_scale_out", "scale_in_delay_after_scale_out_seconds", units.duration_text),
        ("max_concurrent_drains", "max_concurrent_drains", int))))
    provider: dict[str, Any] = {}
    if spec.webhook is not None:
        webhook: dict[str, Any] = {"url": spec.webhook.url}
        for key in ("token_file", "ca_file", "cert_file", "key_file"):
            if getattr(spec.webhook, key):
                webhook[key] = getattr(spec.webhook, key)
        if spec.webhook.timeout_seconds != _WEBHOOK_DEFAULTS.timeout_seconds:
            webhook["timeout"] = units.duration_text(spec.webhook.timeout_seconds)
        provider["webhook"] = webhook
    if spec.command is not None:
        command: dict[str, Any] = {"argv": list(spec.command.argv)}
        if spec.command.timeout_seconds != _COMMAND_DEFAULTS.timeout_seconds:
            command["timeout"] = units.duration_text(spec.command.timeout_seconds)
        provider["command"] = command
    if provider:
        out["provider"] = provider
    return out


def _section(spec: HostGroupSpec, name: str,
             keys: Sequence[tuple[str, str, Callable[[Any], Any]]]) -> dict[str, Any]:
    values = {key: render(getattr(spec, field)) for key, field, render in keys
              if getattr(spec, field) != getattr(_DEFAULTS, field)}
    return {name: values} if values else {}


def render_yaml(specs: HostGroupSpec | Sequence[HostGroupSpec]) -> str:
    """Host group documents that parse back to the same specs."""
    many = [specs] if isinstance(specs, HostGroupSpec) else list(specs)
    dumped: str = yaml.safe_dump_all([file_dict(s) for s in many], sort_keys=False, default_flow_style=False,
                                     width=100, allow_unicode=True, explicit_start=len(many) > 1)
    return dumped


def _thousandths(millis: int) -> int | float:
    return millis // 1000 if millis % 1000 == 0 else millis / 1000


def _size(size: int) -> str | int:
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return size


__all__ = ["KIND", "file_dict", "parse_hostgroup", "render_yaml"]
