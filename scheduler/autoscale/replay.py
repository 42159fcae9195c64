"""The JSON form of a decision's input and of its outcome, for ``shoal autoscale replay FILE`` and for
recording decisions (docs/autoscaling.md describes both).

``load_input`` reads one decision input (integer milli-units; ages in seconds before the decision) into
a ``DecisionInput`` whose history times are negative ages, so ``decide(inp, now=0)`` replays it.
Mistakes are reported with the JSON path of the key (``metrics[0].replicas[2].cpu_request_milli: must
be > 0 for cpu metrics``), one at a time, as ``ReplayError``. ``render_decision`` is the outcome as JSON
(``desired_replicas`` or ``error``, the reason, and per metric its proposal, ratio and
utilization/average); ``render_input`` writes an input back in the same format, ages measured from
``now``, so a recorded decision replays to the same outcome. ``replay`` does all three for the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from scheduler.autoscale.calculator import MetricResult
from scheduler.autoscale.hpa import Decision, decide
from scheduler.autoscale.inputs import (
    AverageValueMetric,
    Behavior,
    DecisionInput,
    History,
    InvalidInput,
    Metric,
    PolicyType,
    Recommendation,
    ReplicaAverageMetric,
    ReplicaSample,
    ReplicaState,
    Resource,
    ResourceMetric,
    ScaleEvent,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    Tolerance,
    ValueMetric,
    scale_down_rules,
    scale_up_rules,
)
from scheduler.autoscale.integers import MAX_INT64, MIN_INT64
from scheduler.errors import InvalidArgument
from scheduler.model import ReplicaId

_TOP_KEYS = ("current_replicas", "min_replicas", "max_replicas", "tolerance", "metrics", "behavior",
             "downscale_stabilization_seconds", "history")
_COMMON_METRIC_KEYS = ("type", "name", "error")
_METRIC_KEYS = {
    "cpu": ("target_utilization_percent", "replicas"),
    "memory": ("target_utilization_percent", "replicas"),
    "replica_average": ("target_average_milli", "replicas", "unmatched_samples_milli"),
    "value": ("target_milli", "value_milli", "ready_replicas"),
    "average_value": ("target_average_milli", "value_milli"),
}
_REPLICA_COMMON_KEYS = ("id", "state", "ready", "recently_started")
# A replica's (request, usage) keys for each metric type; replica_average has no request.
_REPLICA_VALUE_KEYS: dict[str, tuple[str | None, str]] = {
    "cpu": ("cpu_request_milli", "cpu_usage_milli"),
    "memory": ("memory_request_bytes", "memory_usage_bytes"),
    "replica_average": (None, "value_milli"),
}


class ReplayError(InvalidArgument):
    """A decision input that cannot be read: ``path`` is the JSON path of the offending key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def replay(text: str) -> str:
    """``shoal autoscale replay``: the decision for the JSON input ``text``, as indented JSON."""
    return dump(render_decision(decide(load_input(text))))


def dump(document: Mapping[str, Any]) -> str:
    """JSON as Shoal writes it: indented, UTF-8 (the reasons have arrows), one trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def load_input(text: str) -> DecisionInput:
    """Parse and check a decision input written as JSON."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ReplayError("", f"not JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    except _DuplicateKey as e:
        raise ReplayError("", f"not JSON Shoal accepts: key {e.key!r} appears twice in one object") from None
    return parse_input(document)


def parse_input(document: object) -> DecisionInput:
    """Check a decoded JSON document and make it a ``DecisionInput``."""
    top = _object(document, "", _TOP_KEYS)
    metrics_list = _array(_required(top, "metrics", ""), "metrics")
    metrics = tuple(_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics_list))
    with _at(""):
        return DecisionInput(
            current_replicas=_int(_required(top, "current_replicas", ""), "current_replicas"),
            min_replicas=_int(_get(top, "min_replicas", 1), "min_replicas"),
            max_replicas=_int(_required(top, "max_replicas", ""), "max_replicas"),
            metrics=metrics,
            tolerance=_tolerance(top.get("tolerance"), "tolerance"),
            behavior=_behavior(top.get("behavior"), "behavior"),
            downscale_stabilization_seconds=_int(_get(top, "downscale_stabilization_seconds", 300),
                                                 "downscale_stabilization_seconds"),
            history=_history(top.get("history"), "history"))


def render_decision(decision: Decision) -> dict[str, Any]:
    """A decision as JSON."""
    return {
        "desired_replicas": decision.desired_replicas,
        "error": decision.error,
        "current_replicas": decision.current_replicas,
        "reason": decision.reason,
        "metric_replicas": decision.metric_replicas,
        "deciding_metric": decision.deciding_metric,
        "stabilized_replicas": decision.stabilized_replicas,
        "limited_by": [rule.value for rule in decision.limited_by],
        "recommendation": decision.recommendation,
        "metrics": [_render_metric(r) for r in decision.metrics],
    }


def render_input(inp: DecisionInput, *, now: float = 0.0) -> dict[str, Any]:
    """A decision input in the replay format, history ages measured from ``now``."""
    return {
        "current_replicas": inp.current_replicas,
        "min_replicas": inp.min_replicas,
        "max_replicas": inp.max_replicas,
        "tolerance": {"scale_up": inp.tolerance.scale_up, "scale_down": inp.tolerance.scale_down},
        "metrics": [_render_metric_input(m) for m in inp.metrics],
        "behavior": None if inp.behavior is None else {
            "scale_up": _render_rules(inp.behavior.scale_up),
            "scale_down": _render_rules(inp.behavior.scale_down),
        },
        "downscale_stabilization_seconds": inp.downscale_stabilization_seconds,
        "history": {
            "recommendations": [{"replicas": r.replicas, "age_seconds": _seconds(now - r.at)}
                                for r in inp.history.recommendations],
            "scale_up_events": [{"change": e.change, "age_seconds": _seconds(now - e.at)}
                                for e in inp.history.scale_up_events],
            "scale_down_events": [{"change": e.change, "age_seconds": _seconds(now - e.at)}
                                  for e in inp.history.scale_down_events],
        },
    }


# --- reading -------------------------------------------------------------------------------------------


def _metric(value: object, path: str) -> Metric:
    raw = _object(value, path, None)
    kind = _required(raw, "type", path, hint=f"one of {', '.join(_METRIC_KEYS)}")
    if not isinstance(kind, str) or kind not in _METRIC_KEYS:
        raise ReplayError(_join(path, "type"), f"must be one of {', '.join(_METRIC_KEYS)}, not {_show(kind)}")
    m = _object(value, path, _COMMON_METRIC_KEYS + _METRIC_KEYS[kind], what=f"a {kind} metric")
    name = _str(_get(m, "name", ""), _join(path, "name"))
    error = _optional_str(m.get("error"), _join(path, "error"))
    with _at(path):
        if kind in ("cpu", "memory"):
            return ResourceMetric(
                resource=Resource(kind), name=name, error=error,
                target_utilization_percent=_int(_required(m, "target_utilization_percent", path),
                                                _join(path, "target_utilization_percent")),
                replicas=_replicas(m, path, kind))
        if kind == "replica_average":
            unmatched = _array(_get(m, "unmatched_samples_milli", []), _join(path, "unmatched_samples_milli"))
            return ReplicaAverageMetric(
                name=name, error=error,
                target_average_milli=_int(_required(m, "target_average_milli", path),
                                          _join(path, "target_average_milli")),
                replicas=_replicas(m, path, kind),
                unmatched_samples_milli=tuple(_int(v, f"{path}.unmatched_samples_milli[{i}]")
                                              for i, v in enumerate(unmatched)))
        if kind == "value":
            return ValueMetric(
                name=name, error=error,
                target_milli=_int(_required(m, "target_milli", path), _join(path, "target_milli")),
                value_milli=_optional_int(m.get("value_milli"), _join(path, "value_milli")),
                ready_replicas=_int(_required(m, "ready_replicas", path), _join(path, "ready_replicas")))
        return AverageValueMetric(
            name=name, error=error,
            target_average_milli=_int(_required(m, "target_average_milli", path),
                                      _join(path, "target_average_milli")),
            value_milli=_optional_int(m.get("value_milli"), _join(path, "value_milli")))


def _replicas(metric: Mapping[str, object], path: str, kind: str) -> tuple[ReplicaSample, ...]:
    items = _array(_required(metric, "replicas", path), _join(path, "replicas"))
    request_key, usage_key = _REPLICA_VALUE_KEYS[kind]
    keys = _REPLICA_COMMON_KEYS + tuple(k for k in (request_key, usage_key) if k is not None)
    out: list[ReplicaSample] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        here = f"{path}.replicas[{i}]"
        r = _object(item, here, keys, what=f"a {kind} metric's replica")
        replica_id = _str(_required(r, "id", here), _join(here, "id"))
        if not replica_id:
            raise ReplayError(_join(here, "id"), "must not be empty")
        if replica_id in seen:
            raise ReplayError(_join(here, "id"), f"{replica_id!r} appears twice in this metric")
        seen.add(replica_id)
        state_text = _get(r, "state", "running")
        states = [s.value for s in ReplicaState]
        if state_text not in states:
            raise ReplayError(_join(here, "state"),
                              f"must be one of {', '.join(states)}, not {_show(state_text)}")
        assert isinstance(state_text, str)
        request: int | None = None
        if request_key is not None:
            request_path = _join(here, request_key)
            raw_request = r.get(request_key)
            if raw_request is None:
                raise ReplayError(request_path, f"required for {kind} metrics")
            request = _int(raw_request, request_path)
            if request <= 0:
                raise ReplayError(request_path, f"must be > 0 for {kind} metrics")
        usage = _optional_int(r.get(usage_key), _join(here, usage_key))
        if usage is not None and request_key is not None and usage < 0:
            raise ReplayError(_join(here, usage_key), "must be >= 0")
        out.append(ReplicaSample(
            id=ReplicaId(replica_id), state=ReplicaState(state_text),
            ready=_bool(_get(r, "ready", True), _join(here, "ready")),
            recently_started=_bool(_get(r, "recently_started", False), _join(here, "recently_started")),
            value=usage, request=request))
    return tuple(out)


def _tolerance(value: object, path: str) -> Tolerance:
    if value is None:
        return Tolerance()
    t = _object(value, path, ("scale_up", "scale_down"))
    with _at(path):
        return Tolerance(scale_up=_number(_get(t, "scale_up", 0.1), _join(path, "scale_up")),
                         scale_down=_number(_get(t, "scale_down", 0.1), _join(path, "scale_down")))


def _behavior(value: object, path: str) -> Behavior | None:
    if value is None:
        return None
    b = _object(value, path, ("scale_up", "scale_down"))
    return Behavior(scale_up=_rules(b.get("scale_up"), _join(path, "scale_up"), up=True),
                    scale_down=_rules(b.get("scale_down"), _join(path, "scale_down"), up=False))


def _rules(value: object, path: str, *, up: bool) -> ScalingRules:
    make = scale_up_rules if up else scale_down_rules
    if value is None:
        return make()
    r = _object(value, path, ("stabilization_window_seconds", "select_policy", "policies"))
    window = _optional_int(r.get("stabilization_window_seconds"), _join(path, "stabilization_window_seconds"))
    select: SelectPolicy | None = None
    if r.get("select_policy") is not None:
        choices = [s.value for s in SelectPolicy]
        if r["select_policy"] not in choices:
            raise ReplayError(_join(path, "select_policy"),
                              f"must be one of {', '.join(choices)}, not {_show(r['select_policy'])}")
        select = SelectPolicy(r["select_policy"])
    policies: tuple[ScalingPolicy, ...] | None = None
    if r.get("policies") is not None:
        items = _array(r["policies"], _join(path, "policies"))
        policies = tuple(_policy(p, f"{path}.policies[{i}]") for i, p in enumerate(items))
    with _at(path):
        return make(stabilization_window_seconds=window, select_policy=select, policies=policies)


def _policy(value: object, path: str) -> ScalingPolicy:
    p = _object(value, path, ("type", "value", "period_seconds"))
    kind = _required(p, "type", path, hint="replicas or percent")
    if kind not in ("replicas", "percent"):
        raise ReplayError(_join(path, "type"), f"must be replicas or percent, not {_show(kind)}")
    assert isinstance(kind, str)
    with _at(path):
        return ScalingPolicy(type=PolicyType(kind),
                             value=_int(_required(p, "value", path), _join(path, "value")),
                             period_seconds=_int(_required(p, "period_seconds", path),
                                                 _join(path, "period_seconds")))


def _history(value: object, path: str) -> History:
    if value is None:
        return History()
    h = _object(value, path, ("recommendations", "scale_up_events", "scale_down_events"))

    def entries(key: str, count_key: str) -> list[tuple[int, float, str]]:
        items = _array(_get(h, key, []), _join(path, key))
        out = []
        for i, item in enumerate(items):
            here = f"{path}.{key}[{i}]"
            e = _object(item, here, (count_key, "age_seconds"))
            count = _int(_required(e, count_key, here), _join(here, count_key))
            age = _number(_required(e, "age_seconds", here), _join(here, "age_seconds"))
            out.append((count, age, here))
        return out

    recommendations = []
    for replicas, age, here in entries("recommendations", "replicas"):
        with _at(here):
            recommendations.append(Recommendation(replicas=replicas, at=-age))
    events: dict[str, list[ScaleEvent]] = {"scale_up_events": [], "scale_down_events": []}
    for key, found in events.items():
        for change, age, here in entries(key, "change"):
            with _at(here):
                found.append(ScaleEvent(change=change, at=-age))
    return History(recommendations=tuple(recommendations), scale_up_events=tuple(events["scale_up_events"]),
                   scale_down_events=tuple(events["scale_down_events"]))


# --- small readers: each names the path it complains about ---------------------------------------------


@contextmanager
def _at(path: str) -> Iterator[None]:
    """Turn a value's own complaint (``InvalidInput``, naming its field) into one naming the JSON path."""
    try:
        yield
    except InvalidInput as e:
        raise ReplayError(_join(path, e.field), e.message) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value)
    return _json_type(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _object(value: object, path: str, keys: Sequence[str] | None, *, what: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        raise ReplayError(path, f"must be an object, not {_json_type(value)}")
    if keys is not None:
        for key in value:
            if key not in keys:
                where = f" for {what}" if what else ""
                raise ReplayError(_join(path, key), f"unknown key{where} (expected one of {', '.join(keys)})")
    return value


def _get(obj: Mapping[str, object], key: str, default: object) -> object:
    """An optional key: absent and null both mean the default."""
    value = obj.get(key)
    return default if value is None else value


def _required(obj: Mapping[str, object], key: str, path: str, *, hint: str = "") -> object:
    if key not in obj or obj[key] is None:
        raise ReplayError(_join(path, key), "required" + (f" ({hint})" if hint else ""))
    return obj[key]


def _array(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise ReplayError(path, f"must be an array, not {_json_type(value)}")
    return value


def _int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplayError(path, f"must be a whole number, not {_show(value)}")
    if not MIN_INT64 <= value <= MAX_INT64:
        raise ReplayError(path, "must fit in 64 bits")
    return value


def _optional_int(value: object, path: str) -> int | None:
    return None if value is None else _int(value, path)


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReplayError(path, f"must be a number, not {_show(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ReplayError(path, f"must be a number >= 0, not {_show(value)}")
    return number


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ReplayError(path, f"must be true or false, not {_show(value)}")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ReplayError(path, f"must be a string, not {_show(value)}")
    return value


def _optional_str(value: object, path: str) -> str | None:
    return None if value is None else _str(value, path)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> object:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


# --- writing -------------------------------------------------------------------------------------------


def _float(value: float | None) -> float | None:
    """A ratio for JSON: infinities and NaN (``average_value`` at zero replicas) have no JSON form."""
    return value if value is not None and math.isfinite(value) else None


def _seconds(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _render_metric(r: MetricResult) -> dict[str, Any]:
    out: dict[str, Any] = {"index": r.index, "type": r.kind, "name": r.label, "proposal": r.proposal,
                           "outcome": r.outcome.value, "error": r.error, "ratio": _float(r.ratio)}
    counts = None
    if r.counts is not None:
        counts = {"ready": r.counts.ready, "unready": r.counts.unready, "missing": r.counts.missing,
                  "ignored": r.counts.ignored}
        if r.kind == "replica_average":
            counts["unmatched"] = r.counts.unmatched
    if r.kind in ("cpu", "memory"):
        unit = "average_milli" if r.kind == "cpu" else "average_bytes"
        out.update({"target_utilization_percent": r.target, "utilization_percent": r.utilization_percent,
                    unit: r.average, "replicas": counts, "measured": r.measured,
                    "rebalanced_ratio": _float(r.rebalanced_ratio),
                    "rebalanced_utilization_percent": r.rebalanced_utilization_percent})
    elif r.kind == "replica_average":
        out.update({"target_average_milli": r.target, "average_milli": r.average, "replicas": counts,
                    "measured": r.measured, "rebalanced_ratio": _float(r.rebalanced_ratio),
                    "rebalanced_average_milli": r.rebalanced_average})
    elif r.kind == "value":
        out.update({"target_milli": r.target, "value_milli": r.value, "measured": r.measured})
    else:
        out.update({"target_average_milli": r.target, "value_milli": r.value, "average_milli": r.average})
    return out


def _render_metric_input(m: Metric) -> dict[str, Any]:
    out: dict[str, Any] = {"type": m.kind}
    if m.name:
        out["name"] = m.name
    if m.error is not None:
        out["error"] = m.error
    if isinstance(m, ResourceMetric):
        out["target_utilization_percent"] = m.target_utilization_percent
        out["replicas"] = [_render_replica(r, m.kind) for r in m.replicas]
    elif isinstance(m, ReplicaAverageMetric):
        out["target_average_milli"] = m.target_average_milli
        out["replicas"] = [_render_replica(r, m.kind) for r in m.replicas]
        out["unmatched_samples_milli"] = list(m.unmatched_samples_milli)
    elif isinstance(m, ValueMetric):
        out.update({"target_milli": m.target_milli, "value_milli": m.value_milli,
                    "ready_replicas": m.ready_replicas})
    else:
        out.update({"target_average_milli": m.target_average_milli, "value_milli": m.value_milli})
    return out


def _render_replica(r: ReplicaSample, kind: str) -> dict[str, Any]:
    request_key, usage_key = _REPLICA_VALUE_KEYS[kind]
    out: dict[str, Any] = {"id": r.id, "state": r.state.value, "ready": r.ready,
                           "recently_started": r.recently_started}
    if request_key is not None:
        out[request_key] = r.request
    out[usage_key] = r.value
    return out


def _render_rules(rules: ScalingRules) -> dict[str, Any]:
    return {"stabilization_window_seconds": rules.stabilization_window_seconds,
            "select_policy": rules.select_policy.value,
            "policies": [{"type": p.type.value, "value": p.value, "period_seconds": p.period_seconds}
                         for p in rules.policies]}


__all__ = ["ReplayError", "dump", "load_input", "parse_input", "render_decision", "render_input",
           "replay"]
