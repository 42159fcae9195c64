"""The ``autoscale`` section of the service file: YAML → ``scheduler.model.Autoscale``, every rule with
its path and line.

The policy is Kubernetes' HorizontalPodAutoscaler (autoscaling/v2) in the file's own words: ``min`` and
``max``; ``metrics``, each item one of ``cpu``/``memory`` (a target utilization of the replica's request)
or ``prometheus`` (a PromQL query with a service-level ``target_value``, or a ``target_average_value``
per replica or over the replicas); ``tolerance`` per direction; and ``behavior`` per direction (a
stabilization window, rate-limit policies and how to pick among them), with Kubernetes' limits and
defaults. What comes out is canonical: every default filled in, and the order-free lists (metrics,
policies) sorted, so one policy written two ways is one spec. Targets are kept as integer milli-units
(0.5 → 500), as Kubernetes keeps quantities, so the decision arithmetic is exact.

People bring HPA manifests: their keys (``minReplicas``, ``targetCPUUtilizationPercentage``,
``scaleDown``, ``stabilizationWindowSeconds``, ``selectPolicy``, ``periodSeconds``, a metric item with
``type: Resource``...) get a "did you mean" with the key to write here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation

import yaml
from yaml.constructor import SafeConstructor

from scheduler import spec_yaml as sy
from scheduler.model import (
    Autoscale,
    Behavior,
    MetricKind,
    MetricTarget,
    ScalingPolicy,
    ScalingRules,
    TemplateFacts,
    default_scale_down,
    default_scale_up,
)
from scheduler.spec_yaml import Invalid

AUTOSCALE_KEYS = ("min", "max", "metrics", "tolerance", "behavior")
METRIC_KINDS = ("cpu", "memory", "prometheus")
UTILIZATION_KEYS = ("target_utilization_percent",)
PROMETHEUS_KEYS = ("query", "per_replica_label", "target_value", "target_average_value")
DIRECTION_KEYS = ("scale_up", "scale_down")
RULES_KEYS = ("stabilization_window_seconds", "select_policy", "policies")
POLICY_KEYS = ("type", "value", "period_seconds")

DEFAULT_MIN = 1  # as HPA's minReplicas
DEFAULT_TOLERANCE = 0.1
SELECT_POLICIES = ("max", "min", "disabled")
POLICY_TYPES = ("replicas", "percent")  # Kubernetes' Pods and Percent
# Kubernetes' validation limits (pkg/apis/autoscaling/validation).
MAX_STABILIZATION_WINDOW = 3600
MAX_PERIOD = 1800
# Targets below 1e12: a number of at most 15 significant digits (milli-units below 10^15) survives the
# float of a YAML file exactly, so a rendered spec parses back to the same milli-units.
MAX_TARGET_MILLI = 10**15 - 1
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus' label names
_KIND_ORDER = {MetricKind.CPU: 0, MetricKind.MEMORY: 1, MetricKind.PROMETHEUS: 2}
_POLICY_ORDER = {name: index for index, name in enumerate(POLICY_TYPES)}

# What people bring from Kubernetes' HPA, mapped to our key (for "did you mean").
_AUTOSCALE_ALIASES = {"minReplicas": "min", "maxReplicas": "max", "min_replicas": "min",
                      "max_replicas": "max", "minimum": "min", "maximum": "max", "metric": "metrics",
                      "targetCPUUtilizationPercentage": "metrics[].cpu.target_utilization_percent",
                      "target_cpu_utilization_percentage": "metrics[].cpu.target_utilization_percent",
                      "cpu": "metrics[].cpu", "memory": "metrics[].memory",
                      "prometheus": "metrics[].prometheus",
                      "behaviour": "behavior", "tolerances": "tolerance",
                      "scaleUp": "behavior.scale_up", "scaleDown": "behavior.scale_down",
                      "scale_up": "behavior.scale_up", "scale_down": "behavior.scale_down"}
_METRIC_ALIASES = {"resource": "cpu", "containerResource": "cpu", "pods": "prometheus",
                   "object": "prometheus", "external": "prometheus", "prom": "prometheus",
                   "promql": "prometheus", "query": "prometheus.query", "mem": "memory"}
_UTILIZATION_ALIASES = {"averageUtilization": "target_utilization_percent",
                        "targetAverageUtilization": "target_utilization_percent",
                        "target_utilization": "target_utilization_percent",
                        "utilization": "target_utilization_percent", "target": "target_utilization_percent",
                        "percent": "target_utilization_percent",
                        "target_percent": "target_utilization_percent"}
_PROMETHEUS_ALIASES = {"expr": "query", "promql": "query", "value": "target_value",
                       "targetValue": "target_value", "averageValue": "target_average_value",
                       "targetAverageValue": "target_average_value", "average_value": "target_average_value",
                       "target_average": "target_average_value", "target": "target_value",
                       "label": "per_replica_label", "replica_label": "per_replica_label",
                       "perReplicaLabel": "per_replica_label"}
_DIRECTION_ALIASES = {"scaleUp": "scale_up", "scaleDown": "scale_down", "up": "scale_up",
                      "down": "scale_down"}
_RULES_ALIASES = {"stabilizationWindowSeconds": "stabilization_window_seconds",
                  "stabilization_window": "stabilization_window_seconds",
                  "window": "stabilization_window_seconds", "selectPolicy": "select_policy",
                  "select": "select_policy", "policy": "policies"}
_POLICY_ALIASES = {"periodSeconds": "period_seconds", "period": "period_seconds"}
# Kubernetes' metric item shape: "- type: Resource\n  resource: {name: cpu, target: {...}}".
_KUBERNETES_METRIC_TYPES = {"Resource", "ContainerResource", "Pods", "Object", "External"}


def parse_autoscale(r: sy.Reader, node: yaml.Node, *, facts: TemplateFacts | None) -> Autoscale | None:
    """The policy under ``autoscale`` (None, reported, if anything is wrong). ``facts``: the template's,
    to check the requests cpu/memory utilization needs (None when the template itself is broken)."""
    path = "autoscale"
    before = len(r.problems)
    values = r.mapping(node, path, AUTOSCALE_KEYS, required=("max", "metrics"), aliases=_AUTOSCALE_ALIASES)
    if values is None:
        return None
    low = r.read(values, "min", path, _at_least(0), DEFAULT_MIN)
    high = r.read(values, "max", path, _at_least(1), None)
    if high is not None and low > high:
        r.report(values.get("min", node), f"{path}.min", f"min ({low}) is above max ({high})")
    metrics = _metrics(r, values["metrics"], facts=facts) if "metrics" in values else ()
    if low == 0 and metrics and not any(m.kind is MetricKind.PROMETHEUS and not m.per_replica_label
                                        for m in metrics):
        r.report(values.get("min", node), f"{path}.min",
                 "min 0 needs a service-level prometheus metric (one without per_replica_label): cpu, memory "
                 "and per-replica metrics of zero replicas are no signal, so nothing would scale it back up")
    up, down = DEFAULT_TOLERANCE, DEFAULT_TOLERANCE
    if _given(values, "tolerance"):
        tolerance = r.mapping(values["tolerance"], f"{path}.tolerance", DIRECTION_KEYS,
                              aliases=_DIRECTION_ALIASES)
        if tolerance is not None:
            up = r.read(tolerance, "scale_up", f"{path}.tolerance", _tolerance, DEFAULT_TOLERANCE)
            down = r.read(tolerance, "scale_down", f"{path}.tolerance", _tolerance, DEFAULT_TOLERANCE)
    behavior = _behavior(r, values["behavior"]) if _given(values, "behavior") else Behavior()
    if len(r.problems) > before or high is None:
        return None
    return Autoscale(min_replicas=low, max_replicas=high, metrics=metrics, tolerance_up=up,
                     tolerance_down=down, behavior=behavior)


def _given(values: Mapping[str, yaml.Node], key: str) -> bool:
    return key in values and not sy.is_null(values[key])


# -- metrics ---------------------------------------------------------------------------------------------

def _metrics(r: sy.Reader, node: yaml.Node, *, facts: TemplateFacts | None) -> tuple[MetricTarget, ...]:
    path = "autoscale.metrics"
    if sy.is_null(node):
        r.report(node, path, "required, but empty")
        return ()
    items = r.convert(node, path, sy.items, [])
    if isinstance(node, yaml.SequenceNode) and not items:
        r.report(node, path, "give at least one metric: cpu, memory or prometheus")
    found: dict[MetricTarget, int] = {}
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        metric = _metric(r, item, where, facts=facts)
        if metric is None:
            continue
        twice = next((i for m, i in found.items() if m == metric or (
            m.kind is metric.kind and metric.kind is not MetricKind.PROMETHEUS)), None)
        if twice is not None:
            r.report(item, where, f"{metric.kind.value} is already a metric ({path}[{twice}])")
            continue
        found[metric] = index
    return tuple(sorted(found, key=_metric_order))


def _metric_order(m: MetricTarget) -> tuple[int, str, str, int, int]:
    return (_KIND_ORDER[m.kind], m.query, m.per_replica_label, m.target_value_milli,
            m.target_average_value_milli)


def _metric(r: sy.Reader, node: yaml.Node, where: str, *, facts: TemplateFacts | None) -> MetricTarget | None:
    kubernetes = _kubernetes_metric(node)
    if kubernetes is not None:
        r.report(node, where, kubernetes)
        return None
    before = len(r.problems)
    values = r.mapping(node, where, METRIC_KINDS, aliases=_METRIC_ALIASES)
    if values is None:
        return None
    kinds = [k for k in METRIC_KINDS if k in values]
    if len(kinds) != 1:
        if kinds or len(r.problems) == before:  # an unknown key already said what to write
            what = "none" if not kinds else " and ".join(kinds)
            r.report(node, where, f"give exactly one of cpu, memory or prometheus (found {what})")
        return None
    kind = kinds[0]
    if kind == "prometheus":
        return _prometheus(r, values[kind], f"{where}.prometheus")
    return _utilization(r, values[kind], f"{where}.{kind}", MetricKind(kind), facts=facts)


def _kubernetes_metric(node: yaml.Node) -> str | None:
    """What to write instead of an HPA metric item (``type: Resource`` ...), or None if it is not one."""
    plain = _plain_mapping(node)
    kind = _scalar(plain.get("type"))
    if kind not in _KUBERNETES_METRIC_TYPES:
        return None
    if kind in ("Resource", "ContainerResource"):
        resource = _plain_mapping(plain.get("resource") or plain.get("containerResource"))
        name = _scalar(resource.get("name")) if resource else None
        target = _plain_mapping(resource.get("target")) if resource else {}
        percent = _scalar(target.get("averageUtilization")) if target else None
        if name in ("cpu", "memory"):
            write = f"{name}: {{target_utilization_percent: {percent or 'N'}}}"
            return (f"Kubernetes' metric form: write \"{write}\" "
                    f"(a percentage of the replica's {name} request)")
        return ("Kubernetes' metric form: write \"cpu: {target_utilization_percent: N}\" or "
                "\"memory: {target_utilization_percent: N}\"")
    return (f"Kubernetes' metric form: {kind} metrics are prometheus queries here: write \"prometheus: "
            "{query: ..., target_value: N}\" for one number, or target_average_value: N for a value per "
            "replica (with per_replica_label: LABEL when the query returns a series per replica)")


def _plain_mapping(node: yaml.Node | None) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _scalar(node: yaml.Node | None) -> str | None:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def _utilization(r: sy.Reader, node: yaml.Node, where: str, kind: MetricKind, *,
                 facts: TemplateFacts | None) -> MetricTarget | None:
    values = r.mapping(node, where, UTILIZATION_KEYS, required=UTILIZATION_KEYS, aliases=_UTILIZATION_ALIASES)
    if values is None:
        return None
    percent = r.read(values, "target_utilization_percent", where, _at_least(1), None, required=True)
    if facts is not None:
        if kind is MetricKind.CPU and not facts.cpu_millis:
            r.report(node, where, "cpu utilization is a percentage of the cpu request: set "
                                  "template.resources.cpus (or cpus_request)")
            return None
        if kind is MetricKind.MEMORY and not facts.memory_bytes:
            r.report(node, where, "memory utilization is a percentage of the memory request: set "
                                  "template.resources.memory (or memory_request)")
            return None
    if percent is None:
        return None
    return MetricTarget(kind=kind, target_utilization_percent=percent)


def _prometheus(r: sy.Reader, node: yaml.Node, where: str) -> MetricTarget | None:
    before = len(r.problems)
    values = r.mapping(node, where, PROMETHEUS_KEYS, required=("query",), aliases=_PROMETHEUS_ALIASES)
    if values is None:
        return None
    query = r.read(values, "query", where, _query, "", required=True)
    label = r.read(values, "per_replica_label", where, _label_name, "")
    value = r.read(values, "target_value", where, _milli, 0)
    average = r.read(values, "target_average_value", where, _milli, 0)
    targets = [k for k in ("target_value", "target_average_value") if _given(values, k)]
    if len(targets) != 1:
        found = "none" if not targets else "both"
        r.report(node, where, "give exactly one target: target_value (the query's number itself) or "
                              f"target_average_value (per replica) (found {found})")
    elif label and targets == ["target_value"]:
        r.report(values["per_replica_label"], f"{where}.per_replica_label",
                 "a per-replica series is averaged over the replicas: use target_average_value with "
                 "per_replica_label")
    if len(r.problems) > before:
        return None
    return MetricTarget(kind=MetricKind.PROMETHEUS, query=query, per_replica_label=label,
                        target_value_milli=value, target_average_value_milli=average)


def _query(node: yaml.Node) -> str:
    query = sy.text(node).strip()
    if not query:
        raise Invalid("the query is empty")
    return query


def _label_name(node: yaml.Node) -> str:
    name = sy.text(node)
    if not _LABEL_NAME.match(name):
        raise Invalid(f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return name


def _milli(node: yaml.Node) -> int:
    """A positive number as integer milli-units: ``100`` → 100000, ``0.5`` → 500, and Kubernetes' ``500m``
    → 500 (the text as written, so ``0.1`` is exactly 100)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag in (sy.NULL_TAG, sy.BOOL_TAG):
        raise Invalid(f"expected a number like 100, 0.5 or 500m, got {sy.kind_of(node)}")
    text = str(node.value).strip()
    if node.tag == sy.FLOAT_TAG and not math.isfinite(SafeConstructor().construct_yaml_float(node)):
        raise Invalid(f"expected a finite number, got {node.value}")  # YAML's .inf and .nan
    try:
        if node.tag == sy.INT_TAG:  # YAML's own forms too: 1_000, 0x10
            milli = Decimal(int(SafeConstructor().construct_yaml_int(node))) * 1000
        elif text.endswith("m"):
            milli = Decimal(text[:-1])
        else:
            milli = Decimal(text) * 1000
    except (ValueError, InvalidOperation):
        raise Invalid(f"expected a number like 100, 0.5 or 500m, got {node.value!r}") from None
    if not milli.is_finite():
        raise Invalid(f"expected a finite number, got {node.value}")
    if milli <= 0:
        raise Invalid(f"must be more than 0, got {node.value}")
    if milli != milli.to_integral_value():
        raise Invalid(f"{node.value} is finer than 0.001 (targets are kept in thousandths)")
    if milli > MAX_TARGET_MILLI:
        raise Invalid(f"{node.value} is too large (at most {Decimal(MAX_TARGET_MILLI).scaleb(-3)})")
    return int(milli)


def _tolerance(node: yaml.Node) -> float:
    if not isinstance(node, yaml.ScalarNode) or node.tag not in (sy.INT_TAG, sy.FLOAT_TAG):
        raise Invalid(f"expected a fraction like 0.1, got {sy.kind_of(node)}")
    try:
        value = float(SafeConstructor().construct_yaml_float(node))
    except ValueError:
        raise Invalid(f"expected a fraction like 0.1, got {node.value!r}") from None
    if not 0 <= value < 1:  # NaN fails too
        raise Invalid(f"must be at least 0 and below 1 (a fraction of the target: 0.1 is 10 %), "
                      f"got {node.value}")
    return value


def _at_least(low: int, high: int | None = None) -> Callable[[yaml.Node], int]:
    def convert(node: yaml.Node) -> int:
        value = sy.integer(node)
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"{low}-{high}"
            raise Invalid(f"must be {bound}, got {value}")
        return value
    return convert


# -- behavior ----------------------------------------------------------------------------------------------

def _behavior(r: sy.Reader, node: yaml.Node) -> Behavior:
    path = "autoscale.behavior"
    values = r.mapping(node, path, DIRECTION_KEYS, aliases=_DIRECTION_ALIASES)
    if values is None:
        return Behavior()
    up, down = default_scale_up(), default_scale_down()
    if _given(values, "scale_up"):
        up = _rules(r, values["scale_up"], f"{path}.scale_up", up)
    if _given(values, "scale_down"):
        down = _rules(r, values["scale_down"], f"{path}.scale_down", down)
    return Behavior(scale_up=up, scale_down=down)


def _rules(r: sy.Reader, node: yaml.Node, path: str, default: ScalingRules) -> ScalingRules:
    """One direction; the keys left out take the direction's default (as Kubernetes fills them in)."""
    values = r.mapping(node, path, RULES_KEYS, aliases=_RULES_ALIASES)
    if values is None:
        return default
    window = r.read(values, "stabilization_window_seconds", path, _at_least(0, MAX_STABILIZATION_WINDOW),
                    default.stabilization_window_seconds)
    select = r.read(values, "select_policy", path, _select_policy, default.select_policy)
    policies = default.policies
    if _given(values, "policies"):
        policies = _policies(r, values["policies"], f"{path}.policies")
    return ScalingRules(stabilization_window_seconds=window, select_policy=select, policies=policies)


def _select_policy(node: yaml.Node) -> str:
    word = sy.text(node)
    if word not in SELECT_POLICIES:
        hint = f" (Kubernetes' {word} is {word.lower()})" if word.lower() in SELECT_POLICIES else ""
        raise Invalid(f"unknown select policy {word!r}: use max, min or disabled{hint}")
    return word


def _policies(r: sy.Reader, node: yaml.Node, path: str) -> tuple[ScalingPolicy, ...]:
    items = r.convert(node, path, sy.items, None)
    if items is None:
        return ()
    if not items:
        r.report(node, path, "give at least one policy, or leave policies out for the default "
                             "(select_policy: disabled turns the direction off)")
    found: dict[ScalingPolicy, int] = {}
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        values = r.mapping(item, where, POLICY_KEYS, required=POLICY_KEYS, aliases=_POLICY_ALIASES)
        if values is None:
            continue
        kind = r.read(values, "type", where, _policy_type, None, required=True)
        value = r.read(values, "value", where, _at_least(1), None, required=True)
        period = r.read(values, "period_seconds", where, _at_least(1, MAX_PERIOD), None, required=True)
        if kind is None or value is None or period is None:
            continue
        policy = ScalingPolicy(type=kind, value=value, period_seconds=period)
        if policy in found:
            r.report(item, where, f"the same policy as {path}[{found[policy]}]")
            continue
        found[policy] = index
    return tuple(sorted(found, key=lambda p: (_POLICY_ORDER[p.type], p.period_seconds, p.value)))


def _policy_type(node: yaml.Node) -> str:
    word = sy.text(node)
    if word not in POLICY_TYPES:
        hint = {"Pods": " (Kubernetes' Pods is replicas)", "pods": " (Kubernetes' Pods is replicas)",
                "Percent": " (Kubernetes' Percent is percent)"}.get(word, "")
        raise Invalid(f"unknown policy type {word!r}: use replicas or percent{hint}")
    return word


__all__ = ["AUTOSCALE_KEYS", "DEFAULT_MIN", "DEFAULT_TOLERANCE", "parse_autoscale"]
