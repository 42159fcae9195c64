"""The service file's ``autoscale`` section (scheduler/spec_autoscale.py, through scheduler/spec.py): the
contract's keys into ``model.Autoscale`` in milli-units, Kubernetes' defaults filled in canonically,
``replicas`` as the initial count, every rule's mistake at its path and line, Kubernetes' key names
answered with ours, the way back (``render_yaml``) and the API's structured form."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from google.protobuf import json_format

from proto.scheduler.v1 import scheduler_pb2
from scheduler import spec as service_file
from scheduler.model import (
    Autoscale,
    Behavior,
    MetricKind,
    MetricTarget,
    ScalingPolicy,
    ScalingRules,
    Service,
    ServiceName,
    ServiceSpec,
    default_scale_down,
    default_scale_up,
)
from scheduler.spec import SpecError
from scheduler.store import records

TEMPLATE = "template:\n  image: b\n  resources: {cpus: 0.5, memory: 64M}\n"

# The contract, as the task and docs/service-file.md write it.
CONTRACT = """\
name: web
template:
  image: b
  resources: {cpus: 0.5, memory: 64M}
autoscale:
  min: 2
  max: 20
  metrics:
    - cpu: {target_utilization_percent: 60}
    - memory: {target_utilization_percent: 80}
    - prometheus: {query: 'sum(rate(http_requests_total{service="web"}[30s]))', target_value: 100}
    - prometheus: {query: 'sum(rate(http_requests_total{service="web"}[30s]))', target_average_value: 10}
    - prometheus: {query: 'rate(jobs_done_total[30s])', per_replica_label: replica, target_average_value: 5}
  tolerance: {scale_up: 0.1, scale_down: 0.1}
  behavior:
    scale_down: {stabilization_window_seconds: 60, select_policy: max,
                 policies: [{type: percent, value: 50, period_seconds: 15}]}
    scale_up: {stabilization_window_seconds: 0, select_policy: max,
               policies: [{type: replicas, value: 4, period_seconds: 15},
                          {type: percent, value: 100, period_seconds: 15}]}
"""
REQUESTS = 'sum(rate(http_requests_total{service="web"}[30s]))'


def parse(text: str) -> ServiceSpec:
    return service_file.parse_service(textwrap.dedent(text), source="web.yaml")


def policy(text: str) -> Autoscale:
    """The policy of a service with ``text`` as its autoscale section (indented under ``autoscale:``)."""
    spec = parse("name: w\n" + TEMPLATE + "autoscale:\n" + textwrap.indent(textwrap.dedent(text), "  "))
    assert spec.autoscale is not None
    return spec.autoscale


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(SpecError) as info:
        service_file.parse_service_file(textwrap.dedent(text), source="web.yaml")
    return [(p.line, p.path, p.message) for p in info.value.problems]


def cpu(percent: int) -> MetricTarget:
    return MetricTarget(MetricKind.CPU, target_utilization_percent=percent)


# -- what the keys become --------------------------------------------------------------------------------

def test_the_contract_parses_to_the_policy_it_describes_in_milli_units() -> None:
    spec = parse(CONTRACT)
    assert spec.replicas == 2  # not given: max(min, 1)
    assert spec.autoscale == Autoscale(
        min_replicas=2, max_replicas=20,
        metrics=(  # sorted: cpu, memory, then prometheus by query
            cpu(60),
            MetricTarget(MetricKind.MEMORY, target_utilization_percent=80),
            MetricTarget(MetricKind.PROMETHEUS, query="rate(jobs_done_total[30s])",
                         per_replica_label="replica", target_average_value_milli=5000),
            MetricTarget(MetricKind.PROMETHEUS, query=REQUESTS, target_average_value_milli=10_000),
            MetricTarget(MetricKind.PROMETHEUS, query=REQUESTS, target_value_milli=100_000),
        ),
        tolerance_up=0.1, tolerance_down=0.1,
        behavior=Behavior(
            scale_up=default_scale_up(),
            scale_down=ScalingRules(stabilization_window_seconds=60, select_policy="max",
                                    policies=(ScalingPolicy("percent", 50, 15),))))


def test_unset_keys_take_kubernetes_defaults() -> None:
    spec = parse(doc("max: 5\nmetrics: [cpu: {target_utilization_percent: 70}]\n"))
    assert spec.autoscale == Autoscale(min_replicas=1, max_replicas=5, metrics=(cpu(70),), tolerance_up=0.1,
                                       tolerance_down=0.1, behavior=Behavior(default_scale_up(),
                                                                             default_scale_down()))
    assert spec.replicas == 1
    assert default_scale_up() == ScalingRules(0, "max", (ScalingPolicy("replicas", 4, 15),
                                                         ScalingPolicy("percent", 100, 15)))
    assert default_scale_down() == ScalingRules(300, "max", (ScalingPolicy("percent", 100, 15),))


def test_a_direction_given_in_part_takes_that_directions_defaults_for_the_rest() -> None:
    got = policy("""\
        max: 5
        metrics: [cpu: {target_utilization_percent: 70}]
        tolerance: {scale_down: 0.25}
        behavior:
          scale_down: {stabilization_window_seconds: 30}
          scale_up: {select_policy: disabled}
        """)
    assert (got.tolerance_up, got.tolerance_down) == (0.1, 0.25)
    assert got.behavior.scale_down == ScalingRules(30, "max", (ScalingPolicy("percent", 100, 15),))
    assert got.behavior.scale_up == ScalingRules(0, "disabled", default_scale_up().policies)


def test_targets_are_kept_in_thousandths() -> None:
    def target(value: str) -> int:
        got = policy(f"max: 3\nmetrics: [prometheus: {{query: q, target_value: {value}}}]\n")
        return got.metrics[0].target_value_milli
    assert [target(v) for v in ("100", "0.5", "0.001", "1e3", "2.50", "1_000", "999999999999.999", "0.1",
                                "500m", "'2.5'", "1.5e-1")] == [
        100_000, 500, 1, 1_000_000, 2500, 1_000_000, 999_999_999_999_999, 100, 500, 2500, 150]


def test_tolerance_and_zero_window_are_values_not_unset() -> None:
    got = policy("""\
        max: 3
        metrics: [cpu: {target_utilization_percent: 50}]
        tolerance: {scale_up: 0, scale_down: 0.0}
        behavior: {scale_down: {stabilization_window_seconds: 0}}
        """)
    assert (got.tolerance_up, got.tolerance_down) == (0.0, 0.0)
    assert got.behavior.scale_down.stabilization_window_seconds == 0


@pytest.mark.parametrize(("replicas", "expected"), [("", 3), ("replicas: 3\n", 3), ("replicas: 7\n", 7),
                                                     ("replicas: 10\n", 10)])
def test_replicas_is_the_initial_count_and_defaults_to_min(replicas: str, expected: int) -> None:
    spec = parse("name: w\n" + replicas + TEMPLATE
                 + "autoscale: {min: 3, max: 10, metrics: [cpu: {target_utilization_percent: 50}]}\n")
    assert spec.replicas == expected


def test_with_min_zero_a_service_starts_with_one_replica() -> None:
    spec = parse("name: w\n" + TEMPLATE + "autoscale: {min: 0, max: 4, metrics: [prometheus: "
                                          "{query: 'sum(queue_depth)', target_average_value: 10}]}\n")
    assert spec.replicas == 1 and spec.autoscale is not None and spec.autoscale.min_replicas == 0
    zero = parse("name: w\nreplicas: 0\n" + TEMPLATE + "autoscale: {min: 0, max: 4, metrics: [prometheus: "
                                                       "{query: 'sum(queue_depth)', target_value: 10}]}\n")
    assert zero.replicas == 0


def test_one_policy_written_two_ways_is_one_spec() -> None:
    terse = parse("""\
        name: w
        template: {image: b, resources: {cpus: 500m, memory: 64M}}
        autoscale:
          max: 8
          metrics:
          - prometheus: {query: q, target_average_value: 0.5}
          - cpu: {target_utilization_percent: 60}
        """)
    spelled_out = parse("""\
        name: w
        replicas: 1
        template: {image: b, resources: {cpus: 0.5, memory: 67108864}}
        autoscale:
          min: 1
          max: 8
          metrics:
          - cpu: {target_utilization_percent: 60}
          - prometheus: {query: q, target_average_value: 0.50}
          tolerance: {scale_up: 0.1, scale_down: 0.1}
          behavior:
            scale_up:
              stabilization_window_seconds: 0
              select_policy: max
              policies: [{type: percent, value: 100, period_seconds: 15},
                         {type: replicas, value: 4, period_seconds: 15}]
            scale_down: {stabilization_window_seconds: 300, select_policy: max,
                         policies: [{type: percent, value: 100, period_seconds: 15}]}
        """)
    assert terse == spelled_out
    assert terse != parse(CONTRACT.replace("name: web", "name: w"))


def test_a_null_autoscale_is_no_policy() -> None:
    assert parse("name: w\n" + TEMPLATE + "autoscale:\n").autoscale is None


# -- mistakes ----------------------------------------------------------------------------------------------

def doc(autoscale: str, *, template: str = TEMPLATE, replicas: str = "") -> str:
    """A service whose autoscale section starts on line 5 (line 4 with ``template`` of one line)."""
    section = textwrap.indent(textwrap.dedent(autoscale), "  ")
    return "name: w\n" + replicas + template + "autoscale:\n" + section


CPU = "metrics: [cpu: {target_utilization_percent: 50}]\n"


def metric(kind: str, body: str) -> str:
    """A service whose only metric is ``{kind: {body}}``, on line 7."""
    return doc(f"max: 3\nmetrics: [{kind}: {{{body}}}]\n")


def behavior(body: str) -> str:
    """A service with a cpu metric and ``behavior: body`` on line 8."""
    return doc("max: 3\n" + CPU + "behavior: " + body + "\n")


def policies(*items: str) -> str:
    """``behavior.scale_up.policies`` of ``items`` (mappings' insides), all on line 8."""
    return behavior("{scale_up: {policies: [" + ", ".join("{" + i + "}" for i in items) + "]}}")


PROM_TARGETS = ("give exactly one target: target_value (the query's number itself) or target_average_value "
                "(per replica)")
BAD_NUMBER = "expected a number like 100, 0.5 or 500m"
TWO_KINDS = ("max: 3\nmetrics:\n- cpu: {target_utilization_percent: 5}\n"
             "  memory: {target_utilization_percent: 5}\n")
TWO_CPUS = ("max: 3\nmetrics:\n- cpu: {target_utilization_percent: 5}\n"
            "- cpu: {target_utilization_percent: 9}\n")
LABEL_WITH_VALUE = ("max: 3\nmetrics:\n- prometheus:\n    query: q\n    per_replica_label: r\n"
                    "    target_value: 1\n")
WHOLE = "expected a whole number, got"
P15 = "type: percent, value: 5, period_seconds: 15"


@pytest.mark.parametrize(("text", "expected"), [
    # min and max
    (doc("min: -1\nmax: 3\n" + CPU), (6, "autoscale.min", "must be at least 0, got -1")),
    (doc("max: 0\n" + CPU), (6, "autoscale.max", "must be at least 1, got 0")),
    (doc("min: 5\nmax: 3\n" + CPU), (6, "autoscale.min", "min (5) is above max (3)")),
    (doc(CPU), (6, "autoscale.max", "required")),
    (doc("max: three\n" + CPU), (6, "autoscale.max", "expected a whole number, got 'three'")),
    (doc("min: 0\nmax: 3\n" + CPU), (6, "autoscale.min", "min 0 needs a service-level prometheus metric")),
    (doc("min: 0\nmax: 3\nmetrics: [prometheus: {query: q, per_replica_label: r, target_average_value: 1}]"),
     (6, "autoscale.min", "cpu, memory and per-replica metrics of zero replicas are no signal")),
    # metrics
    (doc("max: 3\n"), (6, "autoscale.metrics", "required")),
    (doc("max: 3\nmetrics: []\n"), (7, "autoscale.metrics", "give at least one metric")),
    (doc("max: 3\nmetrics:\n"), (7, "autoscale.metrics", "required, but empty")),
    (doc("max: 3\nmetrics: {cpu: {target_utilization_percent: 5}}\n"),
     (7, "autoscale.metrics", "expected a list, got a mapping")),
    (doc(TWO_KINDS),
     (8, "autoscale.metrics[0]", "give exactly one of cpu, memory or prometheus (found cpu and memory)")),
    (doc("max: 3\nmetrics:\n- {}\n"), (8, "autoscale.metrics[0]", "(found none)")),
    (doc(TWO_CPUS), (9, "autoscale.metrics[1]", "cpu is already a metric (autoscale.metrics[0])")),
    (doc("max: 3\nmetrics:\n- prometheus: {query: q, target_value: 1}\n"
         "- prometheus: {query: q, target_value: 1.0}\n"),
     (9, "autoscale.metrics[1]", "prometheus is already a metric (autoscale.metrics[0])")),
    # cpu and memory
    (metric("cpu", "target_utilization_percent: 0"),
     (7, "autoscale.metrics[0].cpu.target_utilization_percent", "must be at least 1, got 0")),
    (metric("cpu", "target_utilization_percent: 60%"),
     (7, "autoscale.metrics[0].cpu.target_utilization_percent", "expected a whole number, got '60%'")),
    (metric("memory", "target_utilization_percent: 60.5"),
     (7, "autoscale.metrics[0].memory.target_utilization_percent", WHOLE + " the number")),
    (metric("cpu", ""), (7, "autoscale.metrics[0].cpu.target_utilization_percent", "required")),
    (doc("max: 3\nmetrics:\n- cpu: 60\n"),
     (8, "autoscale.metrics[0].cpu", "expected a mapping of keys to values, got the number 60")),
    (doc("max: 3\n" + CPU, template="template: {image: b, resources: {memory: 64M}}\n"),
     (5, "autoscale.metrics[0].cpu", "cpu utilization is a percentage of the cpu request: set "
                                     "template.resources.cpus")),
    (doc("max: 3\nmetrics: [memory: {target_utilization_percent: 50}]\n",
         template="template: {image: b, resources: {cpus: 1}}\n"),
     (5, "autoscale.metrics[0].memory", "memory utilization is a percentage of the memory request: set "
                                        "template.resources.memory")),
    # prometheus
    (metric("prometheus", "target_value: 1"), (7, "autoscale.metrics[0].prometheus.query", "required")),
    (metric("prometheus", "query: ' ', target_value: 1"),
     (7, "autoscale.metrics[0].prometheus.query", "the query is empty")),
    (metric("prometheus", "query: q"),
     (7, "autoscale.metrics[0].prometheus", PROM_TARGETS + " (found none)")),
    (metric("prometheus", "query: q, target_value: 1, target_average_value: 1"),
     (7, "autoscale.metrics[0].prometheus", "(found both)")),
    (doc(LABEL_WITH_VALUE), (10, "autoscale.metrics[0].prometheus.per_replica_label",
                             "a per-replica series is averaged over the replicas: use target_average_value")),
    (metric("prometheus", "query: q, per_replica_label: 'replica-id', target_average_value: 1"),
     (7, "autoscale.metrics[0].prometheus.per_replica_label", "'replica-id' is not a Prometheus label name")),
    (metric("prometheus", "query: q, target_value: 0"),
     (7, "autoscale.metrics[0].prometheus.target_value", "must be more than 0, got 0")),
    (metric("prometheus", "query: q, target_average_value: -2.5"),
     (7, "autoscale.metrics[0].prometheus.target_average_value", "must be more than 0, got -2.5")),
    (metric("prometheus", "query: q, target_value: lots"),
     (7, "autoscale.metrics[0].prometheus.target_value", BAD_NUMBER + ", got 'lots'")),
    (metric("prometheus", "query: q, target_value: true"),
     (7, "autoscale.metrics[0].prometheus.target_value", "got the boolean true")),
    (metric("prometheus", "query: q, target_value: 0.5m"),
     (7, "autoscale.metrics[0].prometheus.target_value", "0.5m is finer than 0.001")),
    (metric("prometheus", "query: q, target_value: 0.0005"),
     (7, "autoscale.metrics[0].prometheus.target_value", "0.0005 is finer than 0.001")),
    (metric("prometheus", "query: q, target_value: 1e12"),
     (7, "autoscale.metrics[0].prometheus.target_value", "1e12 is too large (at most 999999999999.999)")),
    (metric("prometheus", "query: q, target_value: .nan"),
     (7, "autoscale.metrics[0].prometheus.target_value", "expected a finite number")),
    # tolerance
    (doc("max: 3\n" + CPU + "tolerance: {scale_up: 1}\n"),
     (8, "autoscale.tolerance.scale_up", "must be at least 0 and below 1")),
    (doc("max: 3\n" + CPU + "tolerance: {scale_down: -0.1}\n"),
     (8, "autoscale.tolerance.scale_down", "must be at least 0 and below 1")),
    (doc("max: 3\n" + CPU + "tolerance: 0.1\n"),
     (8, "autoscale.tolerance", "expected a mapping of keys to values, got the number 0.1")),
    # behavior
    (behavior("{scale_up: {select_policy: Max}}"),
     (8, "autoscale.behavior.scale_up.select_policy",
      "unknown select policy 'Max': use max, min or disabled (Kubernetes' Max is max)")),
    (behavior("{scale_up: {select_policy: most}}"),
     (8, "autoscale.behavior.scale_up.select_policy", "unknown select policy 'most'")),
    (behavior("{scale_down: {stabilization_window_seconds: 3601}}"),
     (8, "autoscale.behavior.scale_down.stabilization_window_seconds", "must be 0-3600, got 3601")),
    (behavior("{scale_down: {stabilization_window_seconds: -1}}"),
     (8, "autoscale.behavior.scale_down.stabilization_window_seconds", "must be 0-3600, got -1")),
    (behavior("{scale_down: {policies: []}}"),
     (8, "autoscale.behavior.scale_down.policies", "give at least one policy, or leave policies out")),
    (policies("type: Pods, value: 4, period_seconds: 15"),
     (8, "autoscale.behavior.scale_up.policies[0].type",
      "unknown policy type 'Pods': use replicas or percent (Kubernetes' Pods is replicas)")),
    (policies("type: percent, value: 0, period_seconds: 15"),
     (8, "autoscale.behavior.scale_up.policies[0].value", "must be at least 1, got 0")),
    (policies("type: percent, value: 5, period_seconds: 0"),
     (8, "autoscale.behavior.scale_up.policies[0].period_seconds", "must be 1-1800, got 0")),
    (policies("type: percent, value: 5, period_seconds: 1801"),
     (8, "autoscale.behavior.scale_up.policies[0].period_seconds", "must be 1-1800, got 1801")),
    (policies("type: percent, value: 5"),
     (8, "autoscale.behavior.scale_up.policies[0].period_seconds", "required")),
    (policies(P15, P15),
     (8, "autoscale.behavior.scale_up.policies[1]",
      "the same policy as autoscale.behavior.scale_up.policies[0]")),
    # replicas with a policy
    (doc("min: 2\nmax: 5\n" + CPU, replicas="replicas: 9\n"),
     (2, "replicas", "9 is outside autoscale's min..max (2..5)")),
    (doc("min: 2\nmax: 5\n" + CPU, replicas="replicas: 1\n"),
     (2, "replicas", "1 is outside autoscale's min..max (2..5)")),
    (doc("- max: 5\n"), (6, "autoscale", "expected a mapping of keys to values, got a list")),
])
def test_each_mistake_is_reported_at_its_key_and_line(text: str, expected: tuple[int, str, str]) -> None:
    found = problems(text)
    line, path, message = expected
    assert [(ln, p) for ln, p, _ in found] == [(line, path)], found
    assert message in found[0][2], found[0][2]


K8S_RESOURCE = ("- type: Resource\n"
                "  resource: {name: memory, target: {type: Utilization, averageUtilization: 70}}\n")
K8S_EXTERNAL = "- type: External\n  external: {metric: {name: q}, target: {type: Value, value: 3}}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("name: w\n" + TEMPLATE + "minReplicas: 2\n", (5, "minReplicas", 'did you mean "autoscale.min"?')),
    ("name: w\n" + TEMPLATE + "targetCPUUtilizationPercentage: 50\n",
     (5, "targetCPUUtilizationPercentage",
      'did you mean "autoscale.metrics[].cpu.target_utilization_percent"?')),
    ("name: w\n" + TEMPLATE + "autoscaling: {}\n", (5, "autoscaling", 'did you mean "autoscale"?')),
    (doc("minReplicas: 1\nmax: 3\n" + CPU), (6, "autoscale.minReplicas", 'did you mean "min"?')),
    (doc("maxReplicas: 3\n" + CPU), (6, "autoscale.maxReplicas", 'did you mean "max"?')),
    (doc("max: 3\n" + CPU + "scaleDown: {}\n"),
     (8, "autoscale.scaleDown", 'did you mean "behavior.scale_down"?')),
    (behavior("{scaleDown: {}}"), (8, "autoscale.behavior.scaleDown", 'did you mean "scale_down"?')),
    (behavior("{scale_down: {stabilizationWindowSeconds: 60}}"),
     (8, "autoscale.behavior.scale_down.stabilizationWindowSeconds",
      'did you mean "stabilization_window_seconds"?')),
    (behavior("{scale_down: {selectPolicy: max}}"),
     (8, "autoscale.behavior.scale_down.selectPolicy", 'did you mean "select_policy"?')),
    (policies("type: percent, value: 5, periodSeconds: 15"),
     (8, "autoscale.behavior.scale_up.policies[0].periodSeconds", 'did you mean "period_seconds"?')),
    (metric("cpu", "averageUtilization: 60"),
     (7, "autoscale.metrics[0].cpu.averageUtilization", 'did you mean "target_utilization_percent"?')),
    (doc("max: 3\nmetrics:\n- resource: {name: cpu}\n"),
     (8, "autoscale.metrics[0].resource", 'did you mean "cpu"?')),
    (metric("prometheus", "query: q, averageValue: 3"),
     (7, "autoscale.metrics[0].prometheus.averageValue", 'did you mean "target_average_value"?')),
    (doc("max: 3\nmetrics:\n" + K8S_RESOURCE),
     (8, "autoscale.metrics[0]",
      "Kubernetes' metric form: write \"memory: {target_utilization_percent: 70}\"")),
    (doc("max: 3\nmetrics:\n" + K8S_EXTERNAL),
     (8, "autoscale.metrics[0]", "External metrics are prometheus queries here")),
])
def test_what_people_bring_from_kubernetes_gets_our_key(text: str, expected: tuple[int, str, str]) -> None:
    found = problems(text)
    line, path, message = expected
    assert [(ln, p) for ln, p, _ in found][:1] == [(line, path)], found
    assert message in found[0][2], found[0][2]


def test_every_problem_of_the_section_is_reported_at_once_in_file_order() -> None:
    text = doc("""\
        min: 7
        max: 3
        metrics:
        - cpu: {target_utilization_percent: 0}
        - prometheus: {query: q}
        tolerance: {scale_up: 2}
        behavior: {scale_down: {select_policy: none}}
        """, replicas="replicas: -1\n")
    with pytest.raises(SpecError) as info:
        service_file.parse_service_file(text, source="web.yaml")
    assert [line.split(": ")[0:2] for line in str(info.value).splitlines()] == [
        ["web.yaml:2", "replicas"],
        ["web.yaml:7", "autoscale.min"],
        ["web.yaml:10", "autoscale.metrics[0].cpu.target_utilization_percent"],
        ["web.yaml:11", "autoscale.metrics[1].prometheus"],
        ["web.yaml:12", "autoscale.tolerance.scale_up"],
        ["web.yaml:13", "autoscale.behavior.scale_down.select_policy"],
    ]


# -- back to a file, the API's form, the store ------------------------------------------------------------

def test_the_rendered_file_writes_the_policy_without_its_defaults() -> None:
    rendered = service_file.render_yaml(parse(CONTRACT))
    assert rendered.split("autoscale:\n", 1)[1].splitlines() == [
        "  min: 2",
        "  max: 20",
        "  metrics:",
        "  - cpu: {target_utilization_percent: 60}",
        "  - memory: {target_utilization_percent: 80}",
        "  - prometheus: {query: 'rate(jobs_done_total[30s])', per_replica_label: replica, "
        "target_average_value: 5}",
        "  - prometheus: {query: '" + REQUESTS + "', target_average_value: 10}",
        "  - prometheus: {query: '" + REQUESTS + "', target_value: 100}",
        "  behavior:",
        "    scale_down:",
        "      stabilization_window_seconds: 60",
        "      policies:",
        "      - {type: percent, value: 50, period_seconds: 15}",
    ]
    assert "replicas: 2\n" in rendered


def test_the_api_form_carries_every_value() -> None:
    spec = parse(CONTRACT)
    message = json_format.ParseDict(service_file.api_dict(spec), scheduler_pb2.ServiceSpec())
    assert message.autoscale.min_replicas == 2 and message.autoscale.max_replicas == 20
    assert [(m.kind, m.target_utilization_percent, m.per_replica_label, m.target_value_milli,
             m.target_average_value_milli) for m in message.autoscale.metrics] == [
        ("cpu", 60, "", 0, 0), ("memory", 80, "", 0, 0), ("prometheus", 0, "replica", 0, 5000),
        ("prometheus", 0, "", 0, 10_000), ("prometheus", 0, "", 100_000, 0)]
    assert message.autoscale.HasField("tolerance_up") and message.autoscale.tolerance_down == 0.1
    down = message.autoscale.behavior.scale_down
    assert (down.stabilization_window_seconds, down.select_policy) == (60, "max")
    assert [(p.type, p.value, p.period_seconds) for p in down.policies] == [("percent", 50, 15)]


def structured(**autoscale: object) -> dict[str, object]:
    message = scheduler_pb2.ServiceSpec(name="w")
    message.template.image = "b"
    message.template.resources.cpu_millis = 500
    json_format.ParseDict(autoscale, message.autoscale)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_a_structured_spec_leaves_out_what_the_file_would_leave_out() -> None:
    cpu_50 = {"kind": "cpu", "target_utilization_percent": 50}
    spec = service_file.spec_from_api(structured(max_replicas=5, metrics=[cpu_50]))
    # replicas 0 (unset in proto3) with min above 0: the file's default; unset optionals: the defaults.
    assert spec.replicas == 1
    assert spec.autoscale == Autoscale(1, 5, (cpu(50),))
    explicit = service_file.spec_from_api(structured(
        min_replicas=0, max_replicas=5, tolerance_up=0, tolerance_down=0.2,
        metrics=[{"kind": "prometheus", "query": "q", "target_value_milli": "1500"}],
        behavior={"scale_down": {"stabilization_window_seconds": 0, "select_policy": "min"}}))
    assert explicit.replicas == 0
    assert explicit.autoscale == Autoscale(
        0, 5, (MetricTarget(MetricKind.PROMETHEUS, query="q", target_value_milli=1500),), 0.0, 0.2,
        Behavior(default_scale_up(), ScalingRules(0, "min", default_scale_down().policies)))


def test_a_structured_policy_is_validated_like_the_file_without_lines() -> None:
    with pytest.raises(SpecError) as info:
        service_file.spec_from_api(structured(min_replicas=4, max_replicas=2, metrics=[
            {"kind": "memory", "target_utilization_percent": 50}, {"kind": "gpu"}]))
    assert [(p.line, p.path) for p in info.value.problems] == [
        (0, "autoscale.min"), (0, "autoscale.metrics[0].memory"), (0, "autoscale.metrics[1].gpu")]
    assert str(info.value).splitlines()[0] == "spec: autoscale.min: min (4) is above max (2)"


def test_the_store_keeps_the_policy() -> None:
    spec = parse(CONTRACT)
    service = Service(spec=spec)
    assert records.decode(Service, records.encode(service)) == service
    plain = Service(spec=parse("name: w\n" + TEMPLATE))
    assert records.decode(Service, records.encode(plain)).spec.autoscale is None
    assert spec.name == ServiceName("web")


def test_the_documented_example_is_the_contract() -> None:
    """docs/service-file.md shows the contract's keys; its example must parse to the same policy."""
    docs = (Path(__file__).resolve().parents[3] / "docs" / "service-file.md").read_text()
    section = docs[docs.index("## `autoscale`"):]
    start = section.index("```yaml\n") + len("```yaml\n")
    example = section[start:section.index("```", start)]
    documented = parse("name: web\n" + TEMPLATE + example)
    assert documented.autoscale == parse(CONTRACT).autoscale
