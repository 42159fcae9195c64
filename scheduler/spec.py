"""The service file: YAML that declares a service, to and from ``scheduler.model.ServiceSpec``.

The format (documented in docs/service-file.md) reads like a Kubernetes Deployment or a Compose service
to people who know those: ``name``, ``replicas``, a ``template`` that is the agent's container spec in
the same friendly shapes as ``shoal run``'s flags (``memory: 64M``, ``cpus: 0.5``, ``restart: always``,
``ports: [{container: 8080}]``), ``placement``, ``update``, ``labels``, ``metrics_port``, and an
``autoscale`` policy (``scheduler.spec_autoscale``). Every mistake is reported with the key's path and
line (``scheduler.spec_yaml``), all of them at once.

What comes out is canonical: the template becomes the agent's ``ContainerSpec`` as protobuf JSON with
sorted keys, with defaults filled in and order-free lists (env, ports) sorted, so one service written two
ways is one spec, and applying the same file twice changes nothing. ``render_yaml`` writes a spec back as
a service file that parses to the same spec (``shoal get service NAME -o yaml``).

The same functions serve the API's structured form: ``api_dict`` is a spec as the protobuf JSON mapping
of ``shoal.scheduler.v1.ServiceSpec`` (for the server to ``json_format.ParseDict``), and
``spec_from_api`` validates such a mapping exactly as a file would be. The CLI renders the API's
``ServiceSpec`` with its own copy of ``file_dict_from_api`` (it may not import the scheduler); a test keeps
the two identical.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format

from proto.agent.v1 import agent_pb2
from scheduler import constraints as constraint_text
from scheduler import spec_yaml as sy
from scheduler import template_rules as rules
from scheduler import units
from scheduler.model import (
    Autoscale,
    Constraint,
    Placement,
    PortRequest,
    ServiceName,
    ServiceSpec,
    Strategy,
    TemplateFacts,
    TopologySpread,
    UpdatePolicy,
)
from scheduler.spec_autoscale import parse_autoscale
from scheduler.spec_render import api_dict, file_dict_from_api, render_yaml
from scheduler.spec_yaml import Invalid, Problem, SpecError

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PORT_TEXT_RE = re.compile(r"^\s*(?:(\d+):)?(\d+)(?:/([a-z]+))?\s*$")
RESERVED_LABEL_PREFIX = "shoal."  # the scheduler's own labels on every container (model.LABEL_*)

# Health check defaults: those of `shoal run`'s --health-* flags, written out so both spell one spec.
HEALTH_INTERVAL = 30.0
HEALTH_TIMEOUT = 30.0
HEALTH_RETRIES = 3
DEFAULT_REPLICAS = 1
# Top-level keys starting with this are ignored, as in Compose files: a place for YAML anchors to share.
EXTENSION_PREFIX = "x-"

TOP_KEYS = ("name", "replicas", "template", "placement", "update", "labels", "metrics_port", "autoscale")
TEMPLATE_KEYS = ("image", "command", "entrypoint", "env", "working_dir", "user", "hostname", "resources",
                 "ports", "health", "restart", "read_only", "network", "labels")
RESOURCE_KEYS = ("cpus", "memory", "pids", "cpus_request", "memory_request", "storage")
PORT_KEYS = ("container", "host", "protocol")
HEALTH_KEYS = ("http", "tcp", "exec", "interval", "timeout", "retries", "start_period",
               "restart_on_unhealthy")
PLACEMENT_KEYS = ("strategy", "constraints", "topology_spread")
SPREAD_KEYS = ("label", "max_skew")
UPDATE_KEYS = ("max_surge", "max_unavailable")

# What people bring from Kubernetes, Compose or `shoal run`, mapped to our key (for "did you mean").
_TOP_ALIASES = {"image": "template.image", "command": "template.command", "spec": "template",
                "containers": "template", "replica": "replicas", "scale": "replicas", "deploy": "placement",
                "metricsPort": "metrics_port", "strategy": "placement.strategy",
                "constraints": "placement.constraints", "rollout": "update", "update_config": "update",
                "autoscaling": "autoscale", "autoscaler": "autoscale", "hpa": "autoscale",
                "horizontalPodAutoscaler": "autoscale", "minReplicas": "autoscale.min",
                "maxReplicas": "autoscale.max", "min_replicas": "autoscale.min",
                "max_replicas": "autoscale.max",
                "metrics": "autoscale.metrics", "behavior": "autoscale.behavior",
                "targetCPUUtilizationPercentage": "autoscale.metrics[].cpu.target_utilization_percent"}
_TEMPLATE_ALIASES = {"workingDir": "working_dir", "workdir": "working_dir", "working-dir": "working_dir",
                     "environment": "env", "args": "command", "cmd": "command", "restartPolicy": "restart",
                     "restart_policy": "restart", "readOnly": "read_only", "read-only": "read_only",
                     "read_only_root_filesystem": "read_only", "healthcheck": "health",
                     "livenessProbe": "health", "readinessProbe": "health", "net": "network",
                     "network_mode": "network", "publish": "ports", "limits": "resources"}
_RESOURCE_ALIASES = {"cpu": "cpus", "mem": "memory", "memory_limit": "memory", "cpu_request": "cpus_request",
                     "memory_reservation": "memory_request", "pids_limit": "pids", "pids_max": "pids",
                     "storage_size": "storage", "ephemeral_storage": "storage",
                     "ephemeral-storage": "storage", "disk": "storage"}
_PORT_ALIASES = {"containerPort": "container", "container_port": "container", "target": "container",
                 "hostPort": "host", "host_port": "host", "published": "host"}
_HEALTH_ALIASES = {"test": "exec", "cmd": "exec", "command": "exec", "httpGet": "http",
                   "tcpSocket": "tcp", "periodSeconds": "interval", "startPeriod": "start_period",
                   "start-period": "start_period", "failureThreshold": "retries"}
_PLACEMENT_ALIASES = {"constraint": "constraints", "topologySpread": "topology_spread",
                      "spread": "topology_spread"}
_SPREAD_ALIASES = {"maxSkew": "max_skew", "topologyKey": "label", "key": "label"}
_UPDATE_ALIASES = {"maxSurge": "max_surge", "maxUnavailable": "max_unavailable", "surge": "max_surge",
                   "unavailable": "max_unavailable", "parallelism": "max_surge"}

_NETWORKS = {"bridge": agent_pb2.NETWORK_MODE_BRIDGE, "none": agent_pb2.NETWORK_MODE_NONE,
             "host": agent_pb2.NETWORK_MODE_HOST}
_RESTART_MODES = {"no": agent_pb2.RESTART_MODE_NO, "on-failure": agent_pb2.RESTART_MODE_ON_FAILURE,
                  "always": agent_pb2.RESTART_MODE_ALWAYS}
_RESTART_WORDS = {mode: word for word, mode in _RESTART_MODES.items()}
# A service whose template names no restart policy has its exited replicas replaced (TemplateFacts.restart);
# the agent, given no policy, leaves the container exited for the scheduler to act.
SERVICE_RESTART_DEFAULT = "always"


# -- parsing --------------------------------------------------------------------------------------------

def parse_service_file(text: str, *, source: str = "<input>") -> list[ServiceSpec]:
    """Every service in ``text`` (one per YAML document), or ``SpecError`` listing every problem, each
    as ``source:line: path: message``."""
    documents = sy.compose_documents(text, source=source)
    reader = sy.Reader(source=source)
    if not documents:
        reader.report(None, "", "no service in the file (expected a mapping with name, replicas, template)")
    specs: list[ServiceSpec] = []
    first_line: dict[str, int] = {}
    for node in documents:
        spec = _document(reader, node)
        if spec is None:
            continue
        if spec.name in first_line:
            reader.report(node, "name", f"service {spec.name!r} is declared twice "
                                        f"(first in the document on line {first_line[spec.name]})")
            continue
        first_line[spec.name] = sy.line_of(node)
        specs.append(spec)
    reader.check()
    return specs


def parse_service(text: str, *, source: str = "<input>") -> ServiceSpec:
    """The one service ``text`` declares."""
    specs = parse_service_file(text, source=source)
    if len(specs) != 1:
        raise SpecError([Problem(0, "", f"expected one service, found {len(specs)}")], source=source)
    return specs[0]


def _document(r: sy.Reader, node: yaml.Node) -> ServiceSpec | None:
    before = len(r.problems)
    top = r.mapping(node, "", TOP_KEYS, required=("name", "template"), aliases=_TOP_ALIASES,
                    ignored_prefix=EXTENSION_PREFIX)
    if top is None:
        return None
    name = r.read(top, "name", "", _service_name, "", required=True)
    replicas: int | None = r.read(top, "replicas", "", _replica_count, None)
    labels = r.read(top, "labels", "", _string_map, {})
    metrics_port = r.read(top, "metrics_port", "", _port_number, 0)
    template = None
    if _given(top, "template"):
        template = _template(r, top["template"])
    elif "template" in top:
        r.report(top["template"], "template", "required, but empty")
    placement = _placement(r, top["placement"]) if _given(top, "placement") else Placement()
    update = _update(r, top["update"]) if _given(top, "update") else UpdatePolicy()
    if template is not None and metrics_port:
        _check_metrics_port(r, top["metrics_port"], metrics_port, template)
    facts = facts_of(template) if template is not None else None
    autoscale = parse_autoscale(r, top["autoscale"], facts=facts) if _given(top, "autoscale") else None
    if autoscale is not None:
        replicas = _autoscaled_replicas(r, top.get("replicas"), replicas, autoscale)
    if len(r.problems) > before or template is None or facts is None:
        return None
    return ServiceSpec(
        name=ServiceName(name), replicas=DEFAULT_REPLICAS if replicas is None else replicas,
        template_json=canonical_json(template), facts=facts, placement=placement, update=update,
        labels=tuple(sorted(labels.items())), metrics_port=metrics_port, autoscale=autoscale,
    )


def _autoscaled_replicas(r: sy.Reader, node: yaml.Node | None, replicas: int | None,
                         autoscale: Autoscale) -> int | None:
    """With ``autoscale``, ``replicas`` is the initial count: within min..max, max(min, 1) when not given.
    (An existing service keeps its current count instead: ``scheduler.server``'s apply.)"""
    low, high = autoscale.min_replicas, autoscale.max_replicas
    if replicas is None:
        return max(low, 1)
    if not low <= replicas <= high:
        r.report(node, "replicas", f"{replicas} is outside autoscale's min..max ({low}..{high}): leave "
                                   "replicas out to start at max(min, 1)")
    return replicas


def _given(values: Mapping[str, yaml.Node], key: str) -> bool:
    return key in values and not sy.is_null(values[key])


def _service_name(node: yaml.Node) -> str:
    name = sy.text(node)
    if len(name) > 63 or not _NAME_RE.match(name):
        raise Invalid(f"{name!r} is not a valid service name: use at most 63 lowercase letters, digits and "
                      "'-', starting and ending with a letter or digit (a DNS label)")
    return name


def _replica_count(node: yaml.Node) -> int:
    count = sy.integer(node)
    if count < 0:
        raise Invalid(f"must be 0 or more, got {count}")
    return count


def _port_number(node: yaml.Node) -> int:
    port = sy.integer(node)
    if not 1 <= port <= 65535:
        raise Invalid(f"port {port} is outside 1-65535")
    return port


def _string_map(node: yaml.Node) -> dict[str, str]:
    """``{KEY: value}`` with values as written (``1.10`` stays "1.10")."""
    if not isinstance(node, yaml.MappingNode):
        raise Invalid(f"expected a mapping of names to values, got {sy.kind_of(node)}")
    out: dict[str, str] = {}
    for key_node, value in node.value:
        key = sy.text(key_node)
        if not key:
            raise Invalid("an empty name", node=key_node)
        if key in out:
            raise Invalid(f"{key!r} is given twice", node=key_node)
        out[key] = "" if sy.is_null(value) else sy.text(value)
    return out


def _words(node: yaml.Node) -> list[str]:
    """An argv: a list of words, or one string split like a shell would (Compose's ``command: a b``)."""
    if isinstance(node, yaml.SequenceNode):
        return [sy.text(item) for item in node.value]
    text = sy.text(node)
    try:
        return shlex.split(text)
    except ValueError as err:
        raise Invalid(f"cannot split {text!r} into words: {err}") from None


def _unit(parse: Any, **kwargs: Any) -> Any:
    """A converter running one of ``scheduler.units``' parsers on the text as written."""
    def convert(node: yaml.Node) -> Any:
        try:
            return parse(sy.scalar_text(node), **kwargs)
        except units.InvalidValue as err:
            raise Invalid(str(err)) from None
    return convert


# -- the template ---------------------------------------------------------------------------------------

def _template(r: sy.Reader, node: yaml.Node) -> agent_pb2.ContainerSpec | None:
    before = len(r.problems)
    t = r.mapping(node, "template", TEMPLATE_KEYS, required=("image",), aliases=_TEMPLATE_ALIASES)
    if t is None:
        return None
    spec = agent_pb2.ContainerSpec()
    spec.image = r.read(t, "image", "template", _image, "", required=True)
    spec.command.extend(r.read(t, "command", "template", _checked(_words, rules.strings_problem), []))
    spec.entrypoint.extend(r.read(t, "entrypoint", "template", _checked(_words, rules.strings_problem), []))
    spec.env.extend(r.read(t, "env", "template", _checked(_env, rules.strings_problem), []))
    spec.working_dir = r.read(t, "working_dir", "template", _checked(sy.text, rules.working_dir_problem), "")
    spec.user = r.read(t, "user", "template", _checked(sy.text, rules.user_problem), "")
    spec.hostname = r.read(t, "hostname", "template", _checked(sy.text, rules.hostname_problem), "")
    spec.read_only = r.read(t, "read_only", "template", sy.boolean, False)
    network = r.read(t, "network", "template", _network, agent_pb2.NETWORK_MODE_UNSPECIFIED)
    spec.network = network
    labels = r.read(t, "labels", "template", _template_labels, {})
    spec.labels.update(labels)
    restart = r.read(t, "restart", "template", _restart, None)
    if restart is not None:  # "no" included: written, it differs from no policy (a service's default)
        spec.restart.CopyFrom(restart)
    if _given(t, "resources"):
        resources = _resources(r, t["resources"])
        if resources is not None:
            spec.resources.CopyFrom(resources)
    if _given(t, "ports"):
        ports = _ports(r, t["ports"])
        spec.ports.extend(ports)
        if ports and network in (agent_pb2.NETWORK_MODE_NONE, agent_pb2.NETWORK_MODE_HOST):
            r.report(t["ports"], "template.ports", "publishing ports needs the bridge network "
                                                   "(network: bridge, the default on hosts with a subnet)")
    if _given(t, "health"):
        health = _health(r, t["health"])
        if health is not None:
            spec.health.CopyFrom(health)
    return spec if len(r.problems) == before else None


def _checked(convert: Callable[[yaml.Node], T], problem: Callable[[T], str | None]
             ) -> Callable[[yaml.Node], T]:
    """``convert``, then refused with the agent's reason if no agent would create a container with it
    (``scheduler.template_rules``): better at apply than on every host at every placement."""
    def check(node: yaml.Node) -> T:
        value = convert(node)
        reason = problem(value)
        if reason is not None:
            raise Invalid(reason)
        return value

    return check


def _image(node: yaml.Node) -> str:
    image = sy.text(node).strip()
    if not image or any(c.isspace() for c in image):
        raise Invalid(f"{image!r} is not an image reference (e.g. registry.example:5000/team/web:1.4)")
    return image


def _env(node: yaml.Node) -> list[str]:
    """A mapping, or a list of ``KEY=VALUE``; sorted by name (the order of distinct names means nothing)."""
    if isinstance(node, yaml.MappingNode):
        pairs = _string_map(node)
        for key in pairs:
            if "=" in key:
                raise Invalid(f"invalid environment variable name {key!r}: it may not contain '='")
        return [f"{k}={v}" for k, v in sorted(pairs.items())]
    if not isinstance(node, yaml.SequenceNode):
        raise Invalid(f"expected a mapping (NAME: value) or a list of NAME=VALUE, got {sy.kind_of(node)}")
    seen: dict[str, str] = {}
    for item in node.value:
        entry = sy.text(item)
        try:
            units.parse_env([entry])
        except units.InvalidValue as err:
            raise Invalid(str(err), node=item) from None
        key = entry.partition("=")[0]
        if key in seen:
            raise Invalid(f"{key} is set twice", node=item)
        seen[key] = entry
    return [seen[k] for k in sorted(seen)]


def _network(node: yaml.Node) -> agent_pb2.NetworkMode.ValueType:
    word = sy.text(node)
    if word not in _NETWORKS:
        raise Invalid(f"unknown network {word!r}: use bridge, none or host")
    return _NETWORKS[word]


def _template_labels(node: yaml.Node) -> dict[str, str]:
    labels = _string_map(node)
    for key in labels:
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise Invalid(f"label {key!r}: names starting with {RESERVED_LABEL_PREFIX!r} are the "
                          "scheduler's own")
    return labels


def _restart(node: yaml.Node) -> agent_pb2.RestartPolicy:
    raw = sy.text(node)
    try:
        mode, retries = units.parse_restart_text("always" if raw == "unless-stopped" else raw)
    except units.InvalidValue as err:
        raise Invalid(str(err)) from None
    return agent_pb2.RestartPolicy(mode=_RESTART_MODES[mode], max_retries=retries)


def _resources(r: sy.Reader, node: yaml.Node) -> agent_pb2.Resources | None:
    path = "template.resources"
    values = r.mapping(node, path, RESOURCE_KEYS, aliases=_RESOURCE_ALIASES)
    if values is None:
        return None
    cpus = r.read(values, "cpus", path, _unit(units.parse_cpus), 0)
    memory = r.read(values, "memory", path, _unit(units.parse_memory), 0)
    pids = r.read(values, "pids", path, _unit(units.parse_pids), 0)
    cpus_request = r.read(values, "cpus_request", path, _unit(units.parse_cpus, what="cpu request"), 0)
    memory_request = r.read(values, "memory_request", path,
                            _unit(units.parse_size, what="memory request"), 0)
    storage = r.read(values, "storage", path, _unit(units.parse_storage_size), 0)
    if cpus and cpus_request > cpus:
        r.report(values["cpus_request"], f"{path}.cpus_request",
                 f"the request ({_as_written(values['cpus_request'])}) exceeds the limit "
                 f"(cpus: {_as_written(values['cpus'])})")
    if memory and memory_request > memory:
        r.report(values["memory_request"], f"{path}.memory_request",
                 f"the request ({_as_written(values['memory_request'])}) exceeds the limit "
                 f"(memory: {_as_written(values['memory'])})")
    return agent_pb2.Resources(cpu_millis=cpus, memory_bytes=memory, pids_max=pids,
                               cpu_request_millis=cpus_request, memory_request_bytes=memory_request,
                               storage_bytes=storage)


def _as_written(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


def _ports(r: sy.Reader, node: yaml.Node) -> list[agent_pb2.PortMapping]:
    path = "template.ports"
    entries = r.convert(node, path, sy.items, [])
    ports: list[agent_pb2.PortMapping] = []
    taken: dict[tuple[int, str], int] = {}
    for index, item in enumerate(entries):
        port = _port(r, item, f"{path}[{index}]")
        if port is None:
            continue
        ports.append(port)
        key = (port.host_port, port.protocol)
        if port.host_port and key in taken:
            r.report(item, f"{path}[{index}]", f"host port {port.host_port}/{port.protocol} is already "
                                               f"published by {path}[{taken[key]}]")
        taken.setdefault(key, index)
    return sorted(ports, key=lambda p: (p.container_port, p.protocol, p.host_port))


def _port(r: sy.Reader, node: yaml.Node, where: str) -> agent_pb2.PortMapping | None:
    if isinstance(node, yaml.ScalarNode):
        return r.convert(node, where, _port_text, None)
    values = r.mapping(node, where, PORT_KEYS, required=("container",), aliases=_PORT_ALIASES)
    if values is None or "container" not in values:
        return None
    container = r.read(values, "container", where, _port_number, 0, required=True)
    host = r.read(values, "host", where, _host_port, 0)
    protocol = r.read(values, "protocol", where, _protocol, "tcp")
    if not container:
        return None
    return agent_pb2.PortMapping(container_port=container, host_port=host, protocol=protocol)


def _port_text(node: yaml.Node) -> agent_pb2.PortMapping:
    """``8080``, ``8080/udp``, ``9000:8080`` (host:container, as Compose and ``-p`` write it)."""
    raw = sy.text(node)
    m = _PORT_TEXT_RE.match(raw)
    if m is None:
        raise Invalid(f"bad port {raw!r}: expected CONTAINER, HOST:CONTAINER or a mapping "
                      "{container: 8080, host: 9000, protocol: tcp}")
    host, container, protocol = int(m[1] or 0), int(m[2]), m[3] or "tcp"
    for port in (container, host) if m[1] else (container,):
        if not 1 <= port <= 65535:
            raise Invalid(f"bad port {raw!r}: port {port} is outside 1-65535")
    if protocol not in ("tcp", "udp"):
        raise Invalid(f"bad port {raw!r}: protocol must be tcp or udp, not {protocol!r}")
    return agent_pb2.PortMapping(container_port=container, host_port=host, protocol=protocol)


def _host_port(node: yaml.Node) -> int:
    port = sy.integer(node)
    if not 0 <= port <= 65535:
        raise Invalid(f"port {port} is outside 1-65535 (0 or no host: the host picks a free port)")
    return port


def _protocol(node: yaml.Node) -> str:
    word = sy.text(node)
    if word not in ("tcp", "udp"):
        raise Invalid(f"protocol must be tcp or udp, not {word!r}")
    return word


def _health(r: sy.Reader, node: yaml.Node) -> agent_pb2.HealthCheck | None:
    path = "template.health"
    values = r.mapping(node, path, HEALTH_KEYS, aliases=_HEALTH_ALIASES)
    if values is None:
        return None
    check = agent_pb2.HealthCheck(
        interval_seconds=r.read(values, "interval", path, _positive_duration("health interval"),
                                HEALTH_INTERVAL),
        timeout_seconds=r.read(values, "timeout", path, _positive_duration("health timeout"), HEALTH_TIMEOUT),
        retries=r.read(values, "retries", path, _retries, HEALTH_RETRIES),
        start_period_seconds=r.read(values, "start_period", path,
                                    _unit(units.parse_duration, what="health start period"), 0.0),
        restart_on_unhealthy=r.read(values, "restart_on_unhealthy", path, sy.boolean, False),
    )
    probes = [key for key in ("http", "tcp", "exec") if _given(values, key)]
    if len(probes) != 1:
        what = "none" if not probes else " and ".join(probes)
        r.report(node, path, f"give exactly one probe: http, tcp or exec (found {what})")
        return None
    probe = probes[0]
    where = f"{path}.{probe}"
    if probe == "http":
        http = r.mapping(values["http"], where, ("port", "path"), required=("port",))
        if http is None:
            return None
        port = r.read(http, "port", where, _port_number, 0, required=True)
        request_path = r.read(http, "path", where, _http_path, "/")
        check.http.CopyFrom(agent_pb2.HttpProbe(port=port, path=request_path))
    elif probe == "tcp":
        if isinstance(values["tcp"], yaml.ScalarNode):  # tcp: 8080
            check.tcp.port = r.convert(values["tcp"], where, _port_number, 0)
        else:
            tcp = r.mapping(values["tcp"], where, ("port",), required=("port",))
            if tcp is None:
                return None
            check.tcp.port = r.read(tcp, "port", where, _port_number, 0, required=True)
    else:
        check.exec.command.extend(r.convert(values["exec"], where, _probe_command, []))
    return check


def _positive_duration(what: str) -> Any:
    parse = _unit(units.parse_duration, what=what)

    def convert(node: yaml.Node) -> float:
        seconds: float = parse(node)
        if seconds <= 0:
            raise Invalid(f"{what} must be more than 0")
        return seconds
    return convert


def _retries(node: yaml.Node) -> int:
    count = sy.integer(node)
    if count < 1:
        raise Invalid(f"must be at least 1, got {count}")
    return count


def _http_path(node: yaml.Node) -> str:
    path = sy.text(node)
    return path if path.startswith("/") else "/" + path


def _probe_command(node: yaml.Node) -> list[str]:
    """A list is the argv; a string runs with ``/bin/sh -c``, as ``--health-cmd`` (and Compose) do."""
    if isinstance(node, yaml.SequenceNode):
        argv = [sy.text(item) for item in node.value]
    else:
        argv = ["/bin/sh", "-c", sy.text(node)]
    if not argv or not argv[0]:
        raise Invalid("the command is empty")
    return argv


def _check_metrics_port(r: sy.Reader, node: yaml.Node, port: int, template: agent_pb2.ContainerSpec) -> None:
    if template.network == agent_pb2.NETWORK_MODE_HOST:
        return  # the container listens on the host's own ports
    if not any(p.container_port == port and p.protocol == "tcp" for p in template.ports):
        r.report(node, "metrics_port", f"container port {port} is not published: add {{container: {port}}} "
                                       "to template.ports so Prometheus can reach it")


# -- placement and update --------------------------------------------------------------------------------

def _placement(r: sy.Reader, node: yaml.Node) -> Placement:
    path = "placement"
    values = r.mapping(node, path, PLACEMENT_KEYS, aliases=_PLACEMENT_ALIASES)
    if values is None:
        return Placement()
    strategy = r.read(values, "strategy", path, _strategy, Strategy.SPREAD)
    found: list[Constraint] = []
    if _given(values, "constraints"):
        raw = values["constraints"]
        entries = [raw] if isinstance(raw, yaml.ScalarNode) else r.convert(raw, f"{path}.constraints",
                                                                           sy.items, [])
        for index, item in enumerate(entries):
            where = f"{path}.constraints" if item is raw else f"{path}.constraints[{index}]"
            constraint = r.convert(item, where, _constraint, None)
            if constraint is not None:
                found.append(constraint)
    spread = _topology_spread(r, values["topology_spread"]) if _given(values, "topology_spread") else None
    return Placement(strategy=strategy, constraints=tuple(found), topology_spread=spread)


def _strategy(node: yaml.Node) -> Strategy:
    word = sy.text(node)
    try:
        return Strategy(word)
    except ValueError:
        raise Invalid(f"unknown strategy {word!r}: use spread or binpack") from None


def _constraint(node: yaml.Node) -> Constraint:
    try:
        return constraint_text.parse_constraint(sy.text(node))
    except constraint_text.InvalidConstraint as err:
        raise Invalid(str(err)) from None


def _topology_spread(r: sy.Reader, node: yaml.Node) -> TopologySpread | None:
    path = "placement.topology_spread"
    values = r.mapping(node, path, SPREAD_KEYS, required=("label",), aliases=_SPREAD_ALIASES)
    if values is None:
        return None
    label = r.read(values, "label", path, _label_key, "", required=True)
    max_skew = r.read(values, "max_skew", path, _max_skew, 1)
    return TopologySpread(label=label, max_skew=max_skew) if label else None


def _label_key(node: yaml.Node) -> str:
    key = sy.text(node)
    if not constraint_text.is_label_key(key):
        raise Invalid(f"{key!r} is not a host label name")
    return key


def _max_skew(node: yaml.Node) -> int:
    skew = sy.integer(node)
    if skew < 1:
        raise Invalid(f"must be at least 1, got {skew}")
    return skew


def _update(r: sy.Reader, node: yaml.Node) -> UpdatePolicy:
    path = "update"
    values = r.mapping(node, path, UPDATE_KEYS, aliases=_UPDATE_ALIASES)
    if values is None:
        return UpdatePolicy()
    surge, surge_percent = r.read(values, "max_surge", path, _count_or_percent, (1, None))
    unavailable, unavailable_percent = r.read(values, "max_unavailable", path, _count_or_percent, (0, None))
    if surge == 0 and unavailable == 0 and surge_percent is None and unavailable_percent is None:
        r.report(node, path, "max_surge and max_unavailable cannot both be 0: a rollout could never replace "
                             "a replica")
    return UpdatePolicy(max_surge=surge, max_unavailable=unavailable, max_surge_percent=surge_percent,
                        max_unavailable_percent=unavailable_percent)


def _count_or_percent(node: yaml.Node) -> tuple[int, int | None]:
    """``2`` → (2, None); ``"25%"`` → (0, 25)."""
    if isinstance(node, yaml.ScalarNode) and node.tag != sy.INT_TAG:
        raw = sy.text(node).strip()
        if raw.endswith("%") and raw[:-1].isdigit():
            percent = int(raw[:-1])
            if percent > 100:
                raise Invalid(f"{raw!r} is more than 100%")
            return 0, percent
        raise Invalid(f"expected a whole number or a percentage like \"25%\", got {sy.kind_of(node)}")
    count = sy.integer(node)
    if count < 0:
        raise Invalid(f"must be 0 or more, got {count}")
    return count, None


# -- the canonical template and its facts ----------------------------------------------------------------

def canonical_json(template: agent_pb2.ContainerSpec) -> str:
    """The one string a template is known by: protobuf JSON, field names as in the .proto, sorted keys."""
    return json_format.MessageToJson(template, preserving_proto_field_name=True, sort_keys=True, indent=None)


def template_of(template_json: str) -> agent_pb2.ContainerSpec:
    return json_format.Parse(template_json, agent_pb2.ContainerSpec())


def facts_of(template: agent_pb2.ContainerSpec) -> TemplateFacts:
    """What placement and reconciling need: requests (the limit when no request is given), ports,
    whether it has a health check (then readiness waits for it), whether an exited replica is replaced
    (its restart policy; ``always`` when it names none)."""
    res = template.resources
    restart = _RESTART_WORDS.get(template.restart.mode, "no") if template.HasField("restart") \
        else SERVICE_RESTART_DEFAULT
    return TemplateFacts(
        image=template.image,
        cpu_millis=res.cpu_request_millis or res.cpu_millis,
        memory_bytes=res.memory_request_bytes or res.memory_bytes,
        ports=tuple(PortRequest(container_port=p.container_port, host_port=p.host_port,
                                protocol=p.protocol or "tcp") for p in template.ports),
        has_health_check=template.HasField("health"),
        restart=restart,
    )


# -- the API's structured form ---------------------------------------------------------------------------

def spec_from_api(data: Mapping[str, Any], *, source: str = "spec") -> ServiceSpec:
    """A structured spec (the protobuf JSON mapping of ``ServiceSpec``) validated exactly as the service
    file it corresponds to; problems name the file's keys (``template.resources.memory``)."""
    text = yaml.safe_dump(file_dict_from_api(data), sort_keys=False)
    try:
        return parse_service(text, source=source)
    except SpecError as err:  # the lines are those of a file the caller never saw
        raise SpecError([Problem(0, p.path, p.message) for p in err.problems], source=source) from None


__all__ = [
    "DEFAULT_REPLICAS", "Problem", "SpecError", "api_dict", "canonical_json", "facts_of", "parse_service",
    "parse_service_file", "render_yaml", "spec_from_api", "template_of",
]
