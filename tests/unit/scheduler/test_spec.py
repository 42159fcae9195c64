"""The service file (scheduler/spec.py): every key into ``ServiceSpec``, the canonical template, every
kind of mistake with its path and line, and the way back (``render_yaml``, the API's form)."""

from __future__ import annotations

import json
import textwrap

import pytest
from google.protobuf import json_format

from proto.scheduler.v1 import scheduler_pb2
from scheduler import spec as service_file
from scheduler.model import (
    Constraint,
    ConstraintOp,
    Placement,
    PortRequest,
    ServiceSpec,
    Strategy,
    TemplateFacts,
    TopologySpread,
    UpdatePolicy,
)
from scheduler.spec import SpecError

ISSUE_EXAMPLE = """\
name: web
replicas: 6
template:                       # the agent's container spec, in YAML
  image: registry.example:5000/team/web:1.4
  command: ["httpd", "-f", "-p", "8080"]
  env: {MODE: prod}
  resources: {cpus: 0.5, memory: 64M}
  ports: [{container: 8080}]    # the host port is chosen on the host unless `host:` is given
  health: {http: {port: 8080, path: /healthz}, interval: 2s}
  restart: always
placement:
  strategy: spread              # or binpack
  constraints: ["zone!=c"]      # also "zone=a", "zone in (a,b)"
  topology_spread: {label: zone, max_skew: 1}
update: {max_surge: 1, max_unavailable: 0}
"""

EVERY_KEY = """\
name: api-2
replicas: 3
labels: {team: growth, tier: "1"}
metrics_port: 9100
template:
  image: busybox:1.36
  entrypoint: /bin/sh -c
  command: [exec httpd -f -p 8080, "10"]
  env: [B=2, A=1=x]
  working_dir: /srv
  user: 1000
  hostname: api
  resources: {cpus: 250m, memory: 1G, pids: 64, cpus_request: 0.1, memory_request: 512M, storage: 2G}
  ports:
    - {container: 8080, host: 18080}
    - 9100
    - "5353/udp"
    - "2222:22"
  health:
    exec: [/bin/check, --quick]
    interval: 500ms
    timeout: 2s
    retries: 5
    start_period: 1m
    restart_on_unhealthy: true
  restart: on-failure:4
  read_only: true
  network: bridge
  labels: {app: api}
placement:
  strategy: binpack
  constraints: ["zone in (a, b)", gpu, "!spot", "disk notin (hdd)", "rack=r1"]
  topology_spread: {label: zone, max_skew: 2}
update: {max_surge: "25%", max_unavailable: 1}
"""


def parse(text: str, *, source: str = "web.yaml") -> ServiceSpec:
    return service_file.parse_service(textwrap.dedent(text), source=source)


def template(spec: ServiceSpec) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(spec.template_json)
    return loaded


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(SpecError) as info:
        service_file.parse_service_file(textwrap.dedent(text), source="web.yaml")
    return [(p.line, p.path, p.message) for p in info.value.problems]


# -- what each key becomes ------------------------------------------------------------------------------

def test_the_issue_example_parses_to_the_spec_it_describes() -> None:
    spec = parse(ISSUE_EXAMPLE)
    assert spec.name == "web" and spec.replicas == 6
    assert template(spec) == {
        "image": "registry.example:5000/team/web:1.4",
        "command": ["httpd", "-f", "-p", "8080"],
        "env": ["MODE=prod"],
        "resources": {"cpu_millis": "500", "memory_bytes": str(64 << 20)},
        "ports": [{"container_port": 8080, "protocol": "tcp"}],
        "health": {"http": {"port": 8080, "path": "/healthz"}, "interval_seconds": 2.0,
                   "timeout_seconds": 30.0, "retries": 3},
        "restart": {"mode": "RESTART_MODE_ALWAYS"},
    }
    assert spec.facts == TemplateFacts(image="registry.example:5000/team/web:1.4", cpu_millis=500,
                                       memory_bytes=64 << 20, ports=(PortRequest(8080, 0, "tcp"),),
                                       has_health_check=True)
    assert spec.placement == Placement(
        strategy=Strategy.SPREAD, constraints=(Constraint("zone", ConstraintOp.NE, ("c",), "zone!=c"),),
        topology_spread=TopologySpread("zone", 1))
    assert spec.update == UpdatePolicy(max_surge=1, max_unavailable=0)
    assert spec.labels == () and spec.metrics_port == 0


def test_every_key_of_the_format() -> None:
    spec = parse(EVERY_KEY)
    assert (spec.name, spec.replicas, spec.metrics_port) == ("api-2", 3, 9100)
    assert spec.labels == (("team", "growth"), ("tier", "1"))
    assert template(spec) == {
        "image": "busybox:1.36",
        "entrypoint": ["/bin/sh", "-c"],
        "command": ["exec httpd -f -p 8080", "10"],
        "env": ["A=1=x", "B=2"],
        "working_dir": "/srv", "user": "1000", "hostname": "api",
        "resources": {"cpu_millis": "250", "memory_bytes": str(1 << 30), "pids_max": "64",
                      "cpu_request_millis": "100", "memory_request_bytes": str(512 << 20),
                      "storage_bytes": str(2 << 30)},
        "ports": [{"container_port": 22, "host_port": 2222, "protocol": "tcp"},
                  {"container_port": 5353, "protocol": "udp"},
                  {"container_port": 8080, "host_port": 18080, "protocol": "tcp"},
                  {"container_port": 9100, "protocol": "tcp"}],
        "health": {"exec": {"command": ["/bin/check", "--quick"]}, "interval_seconds": 0.5,
                   "timeout_seconds": 2.0, "retries": 5, "start_period_seconds": 60.0,
                   "restart_on_unhealthy": True},
        "restart": {"mode": "RESTART_MODE_ON_FAILURE", "max_retries": 4},
        "read_only": True, "network": "NETWORK_MODE_BRIDGE", "labels": {"app": "api"},
    }
    assert spec.facts == TemplateFacts(
        image="busybox:1.36", cpu_millis=100, memory_bytes=512 << 20, has_health_check=True,
        restart="on-failure",
        ports=(PortRequest(22, 2222), PortRequest(5353, 0, "udp"), PortRequest(8080, 18080),
               PortRequest(9100)))
    assert spec.placement == Placement(
        strategy=Strategy.BINPACK,
        constraints=(Constraint("zone", ConstraintOp.IN, ("a", "b"), "zone in (a,b)"),
                     Constraint("gpu", ConstraintOp.EXISTS, (), "gpu"),
                     Constraint("spot", ConstraintOp.NOT_EXISTS, (), "!spot"),
                     Constraint("disk", ConstraintOp.NOT_IN, ("hdd",), "disk notin (hdd)"),
                     Constraint("rack", ConstraintOp.EQ, ("r1",), "rack=r1")),
        topology_spread=TopologySpread("zone", 2))
    assert spec.update == UpdatePolicy(max_surge=0, max_unavailable=1, max_surge_percent=25)


def test_defaults_of_a_minimal_file() -> None:
    spec = parse("name: w\ntemplate: {image: busybox}\n")
    assert spec.replicas == 1
    assert template(spec) == {"image": "busybox"}
    assert spec.facts == TemplateFacts(image="busybox")
    assert spec.placement == Placement() and spec.update == UpdatePolicy()


@pytest.mark.parametrize(("text", "expected"), [
    ("health: {tcp: 8080}", {"tcp": {"port": 8080}, "interval_seconds": 30.0, "timeout_seconds": 30.0,
                             "retries": 3}),
    ("health: {tcp: {port: 8080}}", {"tcp": {"port": 8080}, "interval_seconds": 30.0,
                                     "timeout_seconds": 30.0, "retries": 3}),
    ("health: {exec: curl -f localhost}", {"exec": {"command": ["/bin/sh", "-c", "curl -f localhost"]},
                                           "interval_seconds": 30.0, "timeout_seconds": 30.0, "retries": 3}),
    ("health: {http: {port: 80, path: ready}}", {"http": {"port": 80, "path": "/ready"},
                                                 "interval_seconds": 30.0, "timeout_seconds": 30.0,
                                                 "retries": 3}),
    ("health: {http: {port: 80}}", {"http": {"port": 80, "path": "/"}, "interval_seconds": 30.0,
                                    "timeout_seconds": 30.0, "retries": 3}),
])
def test_health_check_shapes(text: str, expected: dict[str, object]) -> None:
    spec = parse(f"name: w\ntemplate:\n  image: b\n  {text}\n")
    assert template(spec)["health"] == expected


@pytest.mark.parametrize(("word", "expected", "replaced"), [
    ("no", {}, "no"), ("'no'", {}, "no"), ("always", {"mode": "RESTART_MODE_ALWAYS"}, "always"),
    ("unless-stopped", {"mode": "RESTART_MODE_ALWAYS"}, "always"),
    ("on-failure", {"mode": "RESTART_MODE_ON_FAILURE"}, "on-failure"),
    ("on-failure:3", {"mode": "RESTART_MODE_ON_FAILURE", "max_retries": 3}, "on-failure"),
])
def test_restart_words_as_written_not_as_yaml_booleans(word: str, expected: object, replaced: str) -> None:
    spec = parse(f"name: w\ntemplate: {{image: b, restart: {word}}}\n")
    assert template(spec).get("restart") == expected
    assert spec.facts.restart == replaced


def test_without_a_restart_policy_replicas_are_replaced_and_the_agent_is_given_none() -> None:
    spec = parse("name: w\ntemplate: {image: b}\n")
    assert "restart" not in template(spec) and spec.facts.restart == "always"
    assert spec != parse("name: w\ntemplate: {image: b, restart: no}\n")


def test_env_values_and_labels_keep_the_text_as_written() -> None:
    spec = parse("""\
        name: w
        labels: {version: 1.10, enabled: yes}
        template:
          image: b
          env: {VERSION: 1.10, DEBUG: off, EMPTY: , PORT: 0800}
        """)
    assert template(spec)["env"] == ["DEBUG=off", "EMPTY=", "PORT=0800", "VERSION=1.10"]
    assert spec.labels == (("enabled", "yes"), ("version", "1.10"))


def test_anchors_merge_keys_and_extension_keys_work_as_in_compose_files() -> None:
    spec = parse("""\
        x-base: &base {image: busybox, resources: {memory: 64M}}
        x-other: {anything: [at, all]}
        name: a
        template:
          <<: *base
          command: [true]
        """)
    assert template(spec) == {"image": "busybox", "resources": {"memory_bytes": str(64 << 20)},
                              "command": ["true"]}


def test_several_documents_make_several_services_and_empty_ones_are_skipped() -> None:
    specs = service_file.parse_service_file("---\nname: a\ntemplate: {image: x}\n---\n---\n"
                                            "name: b\nreplicas: 0\ntemplate: {image: y}\n...\n")
    assert [(s.name, s.replicas, s.facts.image) for s in specs] == [("a", 1, "x"), ("b", 0, "y")]


# -- one spec, however it is written -------------------------------------------------------------------

def test_the_same_service_written_differently_is_the_same_spec() -> None:
    a = parse("""\
        name: web
        template:
          image: b
          env: {A: "1", B: "2"}
          ports: [8080, {container: 9090, host: 9000}]
          resources: {cpus: 0.5, memory: 67108864}
          health: {tcp: 80}
        placement: {constraints: ["zone in (a,b)"]}
        """)
    b = parse("""\
        template:
          health: {tcp: {port: 80}, interval: 30s, timeout: 30000ms, retries: 3, start_period: 0s}
          resources: {memory: 64M, cpus: 500m}
          ports: ["9000:9090/tcp", {container: 8080, protocol: tcp}]
          env: [B=2, A=1]
          image: b
        replicas: 1
        name: web
        placement: {strategy: spread, constraints: [" zone in ( a,b ) "]}
        update: {max_surge: 1, max_unavailable: 0}
        """)
    assert a == b
    assert a.template_json == b.template_json


def test_a_different_spec_is_a_different_template() -> None:
    a = parse("name: w\ntemplate: {image: b, command: [a, b]}\n")
    b = parse("name: w\ntemplate: {image: b, command: [b, a]}\n")
    assert a.template_json != b.template_json


def test_the_template_json_is_what_the_agent_reads() -> None:
    from proto.agent.v1 import agent_pb2

    spec = parse(EVERY_KEY)
    message = json_format.Parse(spec.template_json, agent_pb2.ContainerSpec())
    assert message.resources.memory_request_bytes == 512 << 20
    assert service_file.canonical_json(message) == spec.template_json
    assert service_file.template_of(spec.template_json) == message


# -- mistakes: each with its path and line --------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    # unknown keys, with the closest known key (or the known keys)
    ("name: w\nreplcias: 2\ntemplate: {image: b}\n",
     (2, "replcias", 'unknown key (did you mean "replicas"?)')),
    ("name: w\ntemplate:\n  image: b\n  resources:\n    memroy: 64M\n",
     (5, "template.resources.memroy", 'unknown key (did you mean "memory"?)')),
    ("name: w\ntemplate:\n  image: b\n  workingDir: /x\n",
     (4, "template.workingDir", 'unknown key (did you mean "working_dir"?)')),
    ("name: w\nimage: b\ntemplate: {image: b}\n",
     (2, "image", 'unknown key (did you mean "template.image"?)')),
    ("name: w\nzzz: 1\ntemplate: {image: b}\n",
     (2, "zzz", "unknown key (expected one of: autoscale, labels, metrics_port, name, placement, replicas, "
                "template, update)")),
    ("name: w\ntemplate: {image: b, ports: [{container: 1, hostPort: 2}]}\n",
     (2, "template.ports[0].hostPort", 'unknown key (did you mean "host"?)')),
    # keys given twice
    ("name: w\nreplicas: 1\nreplicas: 2\ntemplate: {image: b}\n",
     (3, "replicas", "given twice (first on line 2)")),
    # wrong types
    ("name: w\nreplicas: three\ntemplate: {image: b}\n",
     (2, "replicas", "expected a whole number, got 'three'")),
    ("name: w\nreplicas: '3'\ntemplate: {image: b}\n", (2, "replicas", "expected a whole number, got '3'")),
    ("name: w\nreplicas: 2.5\ntemplate: {image: b}\n",
     (2, "replicas", "expected a whole number, got the number 2.5")),
    ("name: w\ntemplate: [image, b]\n", (2, "template", "expected a mapping of keys to values, got a list")),
    ("name: w\ntemplate: {image: b, read_only: 1}\n",
     (2, "template.read_only", "expected true or false, got the number 1")),
    ("name: w\ntemplate: {image: b, env: 3}\n",
     (2, "template.env", "expected a mapping (NAME: value) or a list of NAME=VALUE, got the number 3")),
    ("name: w\ntemplate: {image: b, ports: 8080}\n",
     (2, "template.ports", "expected a list, got the number 8080")),
    ("name: w\ntemplate: {image: [b]}\n", (2, "template.image", "expected a string, got a list")),
    ("name: w\ntemplate: {image: b, labels: [a]}\n",
     (2, "template.labels", "expected a mapping of names to values, got a list")),
    ("name: w\ntemplate: {image: b, resources: {memory: true}}\n",
     (2, "template.resources.memory", 'expected a number or a string like "64M", got the boolean true')),
    ("- name: w\n", (1, "", "expected a mapping of keys to values, got a list")),
    # missing required keys
    ("replicas: 1\ntemplate: {image: b}\n", (1, "name", "required")),
    ("name: w\n", (1, "template", "required")),
    ("name: w\ntemplate:\n  command: [x]\n", (3, "template.image", "required")),
    ("name: w\ntemplate:\n", (2, "template", "required, but empty")),
    ("name: w\ntemplate: {image: }\n", (2, "template.image", "required, but empty")),
    ("name: w\ntemplate: {image: b, ports: [{host: 80}]}\n", (2, "template.ports[0].container", "required")),
    ("name: w\ntemplate: {image: b}\nplacement: {topology_spread: {max_skew: 2}}\n",
     (3, "placement.topology_spread.label", "required")),
    # bad values
    ("name: Web\ntemplate: {image: b}\n", (1, "name", "'Web' is not a valid service name")),
    ("name: web-\ntemplate: {image: b}\n", (1, "name", "'web-' is not a valid service name")),
    (f"name: {'a' * 64}\ntemplate: {{image: b}}\n", (1, "name", "is not a valid service name")),
    ("name: w\nreplicas: -1\ntemplate: {image: b}\n", (2, "replicas", "must be 0 or more, got -1")),
    ("name: w\nreplicas: 4294967296\ntemplate: {image: b}\n", (2, "replicas", "too large")),
    ("name: w\ntemplate: {image: 'a b'}\n", (2, "template.image", "'a b' is not an image reference")),
    ("name: w\ntemplate:\n  image: b\n  resources: {memory: 64X}\n",
     (4, "template.resources.memory", "invalid memory limit '64X': expected a number with an optional unit "
                                      "k, m, g or t (e.g. 64M)")),
    ("name: w\ntemplate:\n  image: b\n  resources: {memory: 5M}\n",
     (4, "template.resources.memory", "memory limit '5M' is too small: the minimum is 6M")),
    ("name: w\ntemplate:\n  image: b\n  resources: {cpus: 5m}\n",
     (4, "template.resources.cpus", "cpu limit '5m' is too small: the minimum is 0.01 cores")),
    ("name: w\ntemplate:\n  image: b\n  resources: {cpus: lots}\n",
     (4, "template.resources.cpus", "invalid cpu limit 'lots': expected cores like 0.5 or 2")),
    ("name: w\ntemplate:\n  image: b\n  resources: {pids: 0}\n",
     (4, "template.resources.pids", "pids limit must be at least 1, got 0")),
    ("name: w\ntemplate:\n  image: b\n  resources:\n    memory: 64M\n    memory_request: 1G\n",
     (6, "template.resources.memory_request", "the request (1G) exceeds the limit (memory: 64M)")),
    ("name: w\ntemplate:\n  image: b\n  resources:\n    storage: 12\n",
     (5, "template.resources.storage", "storage size '12' is too small: the minimum is 1M")),
    ("name: w\ntemplate:\n  image: b\n  resources:\n    cpus: 0.5\n    cpus_request: 1\n",
     (6, "template.resources.cpus_request", "the request (1) exceeds the limit (cpus: 0.5)")),
    ("name: w\ntemplate: {image: b, ports: [0]}\n", (2, "template.ports[0]", "port 0 is outside 1-65535")),
    ("name: w\ntemplate: {image: b, ports: [{container: 70000}]}\n",
     (2, "template.ports[0].container", "port 70000 is outside 1-65535")),
    ("name: w\ntemplate: {image: b, ports: [{container: 1, host: 65536}]}\n",
     (2, "template.ports[0].host", "port 65536 is outside 1-65535")),
    ("name: w\ntemplate: {image: b, ports: [{container: 1, protocol: sctp}]}\n",
     (2, "template.ports[0].protocol", "protocol must be tcp or udp, not 'sctp'")),
    ("name: w\ntemplate: {image: b, ports: ['1:2:3']}\n", (2, "template.ports[0]", "bad port '1:2:3'")),
    ("name: w\ntemplate:\n  image: b\n  ports:\n  - 80:80\n  - {container: 81, host: 80}\n",
     (6, "template.ports[1]", "host port 80/tcp is already published by template.ports[0]")),
    ("name: w\ntemplate: {image: b, network: none, ports: [80]}\n",
     (2, "template.ports", "publishing ports needs the bridge network")),
    ("name: w\ntemplate: {image: b, network: overlay}\n",
     (2, "template.network", "unknown network 'overlay': use bridge, none or host")),
    ("name: w\ntemplate: {image: b, restart: sometimes}\n",
     (2, "template.restart", "invalid restart policy 'sometimes': use no, always, on-failure or "
                             "on-failure:MAX")),
    ("name: w\ntemplate: {image: b, env: [A=1, A=2]}\n", (2, "template.env", "A is set twice")),
    ("name: w\ntemplate: {image: b, env: [NOVALUE]}\n",
     (2, "template.env", "invalid environment variable 'NOVALUE': expected KEY=VALUE")),
    ("name: w\ntemplate: {image: b, command: 'a \"b'}\n", (2, "template.command", "cannot split")),
    ("name: w\ntemplate: {image: b, labels: {shoal.service: x}}\n",
     (2, "template.labels", "label 'shoal.service': names starting with 'shoal.' are the scheduler's own")),
    ("name: w\ntemplate:\n  image: b\n  health: {interval: 2s}\n",
     (4, "template.health", "give exactly one probe: http, tcp or exec (found none)")),
    ("name: w\ntemplate:\n  image: b\n  health: {tcp: 1, exec: [x]}\n",
     (4, "template.health", "give exactly one probe: http, tcp or exec (found tcp and exec)")),
    ("name: w\ntemplate:\n  image: b\n  health: {tcp: 1, interval: 0s}\n",
     (4, "template.health.interval", "health interval must be more than 0")),
    ("name: w\ntemplate:\n  image: b\n  health: {tcp: 1, timeout: soon}\n",
     (4, "template.health.timeout", "invalid health timeout 'soon': expected e.g. 500ms, 30s, 2m or 1h")),
    ("name: w\ntemplate:\n  image: b\n  health: {tcp: 1, retries: 0}\n",
     (4, "template.health.retries", "must be at least 1, got 0")),
    ("name: w\ntemplate:\n  image: b\n  health: {exec: []}\n",
     (4, "template.health.exec", "the command is empty")),
    ("name: w\ntemplate:\n  image: b\n  health: {http: {path: /x}}\n",
     (4, "template.health.http.port", "required")),
    ("name: w\ntemplate: {image: b}\nplacement: {strategy: pack}\n",
     (3, "placement.strategy", "unknown strategy 'pack': use spread or binpack")),
    ("name: w\ntemplate: {image: b}\nplacement:\n  constraints:\n  - zone=a\n  - zone in a\n",
     (6, "placement.constraints[1]", "invalid constraint 'zone in a'")),
    ("name: w\ntemplate: {image: b}\nplacement: {topology_spread: {label: zone, max_skew: 0}}\n",
     (3, "placement.topology_spread.max_skew", "must be at least 1, got 0")),
    ("name: w\ntemplate: {image: b}\nplacement: {topology_spread: {label: 'a b'}}\n",
     (3, "placement.topology_spread.label", "'a b' is not a host label name")),
    ("name: w\ntemplate: {image: b}\nupdate: {max_surge: 0, max_unavailable: 0}\n",
     (3, "update", "max_surge and max_unavailable cannot both be 0")),
    ("name: w\ntemplate: {image: b}\nupdate: {max_surge: 150%}\n",
     (3, "update.max_surge", "'150%' is more than 100%")),
    ("name: w\ntemplate: {image: b}\nupdate: {max_unavailable: -1}\n",
     (3, "update.max_unavailable", "must be 0 or more, got -1")),
    ("name: w\ntemplate: {image: b}\nupdate: {max_surge: lots}\n",
     (3, "update.max_surge", 'expected a whole number or a percentage like "25%"')),
    ("name: w\ntemplate: {image: b, ports: [80]}\nmetrics_port: 9100\n",
     (3, "metrics_port", "container port 9100 is not published")),
    ("name: w\ntemplate: {image: b}\nmetrics_port: 0\n", (3, "metrics_port", "port 0 is outside 1-65535")),
    # the file itself
    ("name: w\ntemplate: {image: b\n", (3, "", "not valid YAML")),
    ("", (0, "", "no service in the file")),
    ("name: w\ntemplate: {image: b}\n---\nname: w\ntemplate: {image: c}\n",
     (4, "name", "service 'w' is declared twice (first in the document on line 1)")),
])
def test_each_mistake_is_reported_at_its_key_and_line(text: str, expected: tuple[int, str, str]) -> None:
    found = problems(text)
    line, path, message = expected
    assert [(ln, p) for ln, p, _ in found] == [(line, path)], found
    assert message in found[0][2]


def test_all_problems_are_reported_at_once_in_file_order_with_the_source() -> None:
    text = "name: w\nreplcias: 2\ntemplate:\n  image: b\n  resources: {memory: 64X}\nupdate: {max_surge: x}\n"
    with pytest.raises(SpecError) as info:
        service_file.parse_service_file(text, source="web.yaml")
    lines = str(info.value).splitlines()
    assert [line.split(":")[:3] for line in lines] == [
        ["web.yaml", "2", " replcias"], ["web.yaml", "5", " template.resources.memory"],
        ["web.yaml", "6", " update.max_surge"]]
    assert lines[1].startswith("web.yaml:5: template.resources.memory: invalid memory limit '64X'")


def test_mistakes_in_several_documents_are_all_reported() -> None:
    found = problems("name: a\ntemplate: {image: x, cpus: 1}\n---\n"
                     "name: b\nreplicas: -2\ntemplate: {image: y}\n")
    assert [(ln, p) for ln, p, _ in found] == [(2, "template.cpus"), (5, "replicas")]


def test_a_null_optional_key_means_unset() -> None:
    assert parse("name: w\nreplicas:\nplacement:\ntemplate: {image: b, env: , ports: }\n") == \
        parse("name: w\ntemplate: {image: b}\n")


# -- back to a file, and the API's form ------------------------------------------------------------------

ROUND_TRIPS = [
    ISSUE_EXAMPLE,
    EVERY_KEY,
    "name: w\ntemplate: {image: b}\n",
    "name: w\nreplicas: 0\ntemplate: {image: b, restart: on-failure, network: none}\n",
    "name: w\ntemplate: {image: b, restart: no}\n",
    "name: w\ntemplate:\n  image: b\n  health: {exec: 'curl -f localhost || exit 1', timeout: 1.25s}\n",
    "name: w\ntemplate:\n  image: b\n  health: {tcp: 1, interval: 90s, start_period: 2h}\n",
    "name: w\ntemplate:\n  image: b\n  resources: {memory: 6291457, cpus: 0.333, memory_request: 1500k}\n",
    "name: w\ntemplate: {image: b, network: host}\nmetrics_port: 9100\n",
    "name: w\ntemplate: {image: b, env: {X: 'a: b', Y: '#1'}, command: ['', '--flag=\"q\"']}\n",
    "name: w\ntemplate: {image: b}\nupdate: {max_surge: 0%, max_unavailable: 10%}\n",
    # autoscale: the contract's keys, defaults left out or not, min 0, milli-unit targets
    "name: w\nreplicas: 7\ntemplate: {image: b, resources: {cpus: 0.5, memory: 64M}}\nautoscale:\n"
    "  min: 2\n  max: 20\n  metrics:\n  - cpu: {target_utilization_percent: 60}\n"
    "  - memory: {target_utilization_percent: 80}\n"
    "  - prometheus: {query: 'sum(rate(x[30s]))', target_value: 100}\n"
    "  - prometheus: {query: 'sum(rate(x[30s]))', target_average_value: 0.001}\n"
    "  - prometheus: {query: 'rate(y[30s])', per_replica_label: replica, target_average_value: 2.5}\n"
    "  tolerance: {scale_up: 0.05, scale_down: 0.2}\n  behavior:\n"
    "    scale_up: {stabilization_window_seconds: 10, select_policy: min,\n"
    "               policies: [{type: replicas, value: 1, period_seconds: 60}]}\n"
    "    scale_down: {stabilization_window_seconds: 0, select_policy: disabled}\n",
    "name: w\ntemplate: {image: b, resources: {cpus_request: 0.25}}\n"
    "autoscale: {max: 3, metrics: [cpu: {target_utilization_percent: 150}]}\n",
    "name: w\nreplicas: 0\ntemplate: {image: b}\nautoscale:\n  min: 0\n  max: 4\n"
    "  metrics: [prometheus: {query: 'sum(queue_depth)', target_value: 999999999999.999}]\n"
    "  tolerance: {scale_up: 0}\n",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_rendered_yaml_parses_back_to_the_same_spec(text: str) -> None:
    spec = parse(text)
    rendered = service_file.render_yaml(spec)
    assert parse(rendered, source="rendered") == spec
    assert service_file.render_yaml(parse(rendered)) == rendered


def test_several_specs_render_as_several_documents() -> None:
    specs = [parse(ISSUE_EXAMPLE), parse("name: w\ntemplate: {image: b}\n")]
    rendered = service_file.render_yaml(specs)
    assert rendered.startswith("---\nname: web\n") and "\n---\nname: w\n" in rendered
    assert service_file.parse_service_file(rendered) == specs


def test_the_rendered_file_reads_like_the_one_written() -> None:
    assert service_file.render_yaml(parse(ISSUE_EXAMPLE)) == textwrap.dedent("""\
        name: web
        replicas: 6
        template:
          image: registry.example:5000/team/web:1.4
          command: [httpd, -f, -p, '8080']
          env: {MODE: prod}
          resources: {cpus: 0.5, memory: 64M}
          ports:
          - {container: 8080}
          health:
            http: {port: 8080, path: /healthz}
            interval: 2s
          restart: always
        placement:
          strategy: spread
          constraints: [zone!=c]
          topology_spread: {label: zone, max_skew: 1}
        update: {max_surge: 1, max_unavailable: 0}
        """)


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_the_api_form_goes_through_protobuf_and_back(text: str) -> None:
    spec = parse(text)
    message = json_format.ParseDict(service_file.api_dict(spec), scheduler_pb2.ServiceSpec())
    back = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert service_file.spec_from_api(back) == spec


def test_a_structured_spec_is_validated_like_a_file_without_lines() -> None:
    message = scheduler_pb2.ServiceSpec(name="web", replicas=-3)
    message.template.resources.memory_bytes = 1024
    with pytest.raises(SpecError) as info:
        service_file.spec_from_api(json_format.MessageToDict(message, preserving_proto_field_name=True))
    assert [(p.line, p.path) for p in info.value.problems] == [
        (0, "replicas"), (0, "template.image"), (0, "template.resources.memory")]
    assert str(info.value).splitlines()[0] == "spec: replicas: must be 0 or more, got -3"


def test_fields_the_file_cannot_express_are_refused_from_the_api() -> None:
    message = scheduler_pb2.ServiceSpec(name="web")
    message.template.image = "b"
    message.template.auto_remove = True
    with pytest.raises(SpecError, match=r"template\.auto_remove: unknown key"):
        service_file.spec_from_api(json_format.MessageToDict(message, preserving_proto_field_name=True))


@pytest.mark.parametrize(("policy", "replicas", "expected"), [
    (UpdatePolicy(), 10, (1, 0)),
    (UpdatePolicy(max_surge=0, max_unavailable=2), 10, (0, 2)),
    (UpdatePolicy(max_surge=0, max_surge_percent=25, max_unavailable_percent=25), 10, (3, 2)),
    (UpdatePolicy(max_surge=0, max_surge_percent=0, max_unavailable_percent=10), 5, (0, 1)),
    (UpdatePolicy(max_surge=0, max_surge_percent=10, max_unavailable=0), 0, (0, 1)),
])
def test_update_percentages_resolve_against_the_replicas_of_the_moment(
        policy: UpdatePolicy, replicas: int, expected: tuple[int, int]) -> None:
    assert policy.counts(replicas) == expected
