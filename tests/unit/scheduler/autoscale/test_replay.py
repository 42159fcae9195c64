"""The replay format: reading an input (every mistake named by its JSON path), writing the decision,
and writing an input back so that a recorded decision replays to the same outcome."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from scheduler.autoscale import hpa, replay
from scheduler.autoscale.replay import ReplayError
from scheduler.errors import InvalidArgument
from scheduler.model import ReplicaId
from tests.unit.scheduler.autoscale.builders import policy

# The example of the issue, key for key.
EXAMPLE: dict[str, Any] = {
    "current_replicas": 3, "min_replicas": 1, "max_replicas": 10,
    "tolerance": {"scale_up": 0.1, "scale_down": 0.1},
    "metrics": [
        {"type": "cpu", "target_utilization_percent": 50,
         "replicas": [{"id": "r1", "state": "running", "ready": True, "recently_started": False,
                       "cpu_request_milli": 1000, "cpu_usage_milli": 800}]},
        {"type": "replica_average", "target_average_milli": 20000,
         "replicas": [{"id": "r1", "state": "running", "ready": True, "value_milli": 18000}],
         "unmatched_samples_milli": []},
        {"type": "value", "target_milli": 10000, "value_milli": 15000, "ready_replicas": 3},
        {"type": "average_value", "target_average_milli": 10000, "value_milli": 15000},
    ],
    "behavior": None,
    "downscale_stabilization_seconds": 300,
    "history": {"recommendations": [{"replicas": 3, "age_seconds": 10}],
                "scale_up_events": [{"change": 2, "age_seconds": 20}],
                "scale_down_events": []},
}


def edited(change: Callable[[dict[str, Any]], None]) -> str:
    doc = copy.deepcopy(EXAMPLE)
    change(doc)
    return json.dumps(doc)


def test_the_example_of_the_issue_is_read_key_for_key() -> None:
    inp = replay.load_input(json.dumps(EXAMPLE))
    assert (inp.current_replicas, inp.min_replicas, inp.max_replicas) == (3, 1, 10)
    assert inp.behavior is None and inp.downscale_stabilization_seconds == 300
    cpu, per_replica, value, average = inp.metrics
    assert isinstance(cpu, hpa.ResourceMetric) and cpu.resource is hpa.Resource.CPU
    assert cpu.replicas == (hpa.ReplicaSample(id=ReplicaId("r1"), value=800, request=1000),)
    assert isinstance(per_replica, hpa.ReplicaAverageMetric) and per_replica.replicas[0].value == 18000
    assert value == hpa.ValueMetric(target_milli=10000, value_milli=15000, ready_replicas=3)
    assert average == hpa.AverageValueMetric(target_average_milli=10000, value_milli=15000)
    assert inp.history == hpa.History(recommendations=(hpa.Recommendation(replicas=3, at=-10.0),),
                                      scale_up_events=(hpa.ScaleEvent(change=2, at=-20.0),))


def test_replay_prints_the_decision() -> None:
    out = json.loads(replay.replay(json.dumps(EXAMPLE)))
    assert (out["desired_replicas"], out["error"], out["deciding_metric"]) == (5, None, 2)
    assert out["reason"] == "value 15 of target 10 on 3 ready replicas → 5 (the highest of 4 metrics)"
    cpu, per_replica, value, average = out["metrics"]
    assert (cpu["ratio"], cpu["utilization_percent"], cpu["average_milli"]) == (1.6, 80, 800)
    assert cpu["proposal"] == 2
    assert cpu["replicas"] == {"ready": 1, "unready": 0, "missing": 0, "ignored": 0}
    assert (per_replica["ratio"], per_replica["average_milli"], per_replica["outcome"]) == (
        0.9, 18000, "within_tolerance")
    assert (value["ratio"], value["value_milli"], value["proposal"]) == (1.5, 15000, 5)
    assert (average["ratio"], average["average_milli"], average["proposal"]) == (0.5, 5000, 2)


def test_an_error_decision_has_no_desired_count() -> None:
    def break_value(d: dict[str, Any]) -> None:
        d["metrics"] = [d["metrics"][2] | {"value_milli": None}]

    out = json.loads(replay.replay(edited(break_value)))
    assert (out["desired_replicas"], out["error"]) == (None, "value: no value")
    assert out["metrics"][0]["outcome"] == "failed"


def test_an_infinite_ratio_is_written_as_null() -> None:
    doc = {"current_replicas": 0, "min_replicas": 0, "max_replicas": 5,
           "metrics": [{"type": "average_value", "target_average_milli": 1000, "value_milli": 2500}]}
    out = json.loads(replay.replay(json.dumps(doc)))
    metric = out["metrics"][0]
    assert (out["desired_replicas"], metric["ratio"], metric["average_milli"]) == (3, None, None)


def test_defaults_for_what_is_left_out() -> None:
    doc = {"current_replicas": 2, "max_replicas": 4,
           "metrics": [{"type": "memory", "target_utilization_percent": 80,
                        "replicas": [{"id": "a", "memory_request_bytes": 100, "memory_usage_bytes": 90},
                                     {"id": "b", "memory_request_bytes": 100}]}],
           "behavior": {"scale_down": {"policies": [{"type": "replicas", "value": 1, "period_seconds": 60}]}}}
    inp = replay.load_input(json.dumps(doc))
    assert inp.min_replicas == 1 and inp.tolerance == hpa.Tolerance() and inp.history == hpa.History()
    down = hpa.scale_down_rules(policies=(policy("replicas", 1, 60),))
    assert inp.behavior == hpa.Behavior(scale_down=down)
    a, b = inp.metrics[0].replicas  # type: ignore[union-attr]
    assert (a.state, a.ready, a.recently_started, b.value) == (hpa.ReplicaState.RUNNING, True, False, None)


def set_key(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """Set (or with ``...`` delete) the key at a dotted path with [i] indexes."""
    def change(doc: dict[str, Any]) -> None:
        parts = path.replace("[", ".").replace("]", "").split(".")
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return change


@pytest.mark.parametrize(("change", "message"), [
    (set_key("metrics[0].replicas[0].cpu_request_milli", 0),
     "metrics[0].replicas[0].cpu_request_milli: must be > 0 for cpu metrics"),
    (set_key("metrics[0].replicas[0].cpu_request_milli", ...),
     "metrics[0].replicas[0].cpu_request_milli: required for cpu metrics"),
    (set_key("metrics[0].replicas[0].cpu_usage_milli", -5),
     "metrics[0].replicas[0].cpu_usage_milli: must be >= 0"),
    (set_key("metrics[0].replicas[0].memory_usage_bytes", 5),
     "metrics[0].replicas[0].memory_usage_bytes: unknown key for a cpu metric's replica (expected one of id, "
     "state, ready, recently_started, cpu_request_milli, cpu_usage_milli)"),
    (set_key("metrics[0].replicas[0].state", "running!"),
     'metrics[0].replicas[0].state: must be one of pending, running, exited, terminating, not "running!"'),
    (set_key("metrics[0].replicas[0].ready", "yes"),
     'metrics[0].replicas[0].ready: must be true or false, not "yes"'),
    (set_key("metrics[0].replicas[0].id", ""), "metrics[0].replicas[0].id: must not be empty"),
    (set_key("metrics[0].target_utilization_percent", 0),
     "metrics[0].target_utilization_percent: must be > 0"),
    (set_key("metrics[0].target_utilization_percent", 50.5),
     "metrics[0].target_utilization_percent: must be a whole number, not 50.5"),
    (set_key("metrics[1].type", "pods"),
     'metrics[1].type: must be one of cpu, memory, replica_average, value, average_value, not "pods"'),
    (set_key("metrics[1].type", ...),
     "metrics[1].type: required (one of cpu, memory, replica_average, value, average_value)"),
    (set_key("metrics[1].unmatched_samples_milli", [1, "2"]),
     'metrics[1].unmatched_samples_milli[1]: must be a whole number, not "2"'),
    (set_key("metrics[2].ready_replicas", ...), "metrics[2].ready_replicas: required"),
    (set_key("metrics[2].ready_replicas", True),
     "metrics[2].ready_replicas: must be a whole number, not true"),
    (set_key("metrics[2].value_milli", 2**63), "metrics[2].value_milli: must fit in 64 bits"),
    (set_key("metrics[3].target_average_milli", -1), "metrics[3].target_average_milli: must be > 0"),
    (set_key("metrics", []), "metrics: must have at least one metric"),
    (set_key("metrics", {}), "metrics: must be an array, not an object"),
    (set_key("current_replicas", ...), "current_replicas: required"),
    (set_key("min_replicas", 11), "min_replicas: must be <= max_replicas (10)"),
    (set_key("max_replicas", 2**31), "max_replicas: must be <= 2147483647"),
    (set_key("replicas", 3),
     "replicas: unknown key (expected one of current_replicas, min_replicas, max_replicas, tolerance, "
     "metrics, behavior, downscale_stabilization_seconds, history)"),
    (set_key("tolerance.scale_up", -0.1), "tolerance.scale_up: must be a number >= 0, not -0.1"),
    (set_key("behavior", {"scale_up": {"select_policy": "fastest"}}),
     'behavior.scale_up.select_policy: must be one of max, min, disabled, not "fastest"'),
    (set_key("behavior", {"scale_down": {"stabilization_window_seconds": 3601}}),
     "behavior.scale_down.stabilization_window_seconds: must be <= 3600"),
    (set_key("behavior", {"scale_down": {"policies": []}}),
     "behavior.scale_down.policies: must have at least one policy"),
    (set_key("behavior", {"scale_up": {"policies": [{"type": "pods", "value": 4, "period_seconds": 15}]}}),
     'behavior.scale_up.policies[0].type: must be replicas or percent, not "pods"'),
    (set_key("behavior", {"scale_up": {"policies": [{"type": "percent", "value": 0, "period_seconds": 15}]}}),
     "behavior.scale_up.policies[0].value: must be > 0"),
    (set_key("behavior", {"scale_up": {"policies": [{"type": "percent", "value": 10}]}}),
     "behavior.scale_up.policies[0].period_seconds: required"),
    (set_key("behavior", {"scale_up": {"policies": [{"type": "percent", "value": 10,
                                                     "period_seconds": 1801}]}}),
     "behavior.scale_up.policies[0].period_seconds: must be <= 1800"),
    (set_key("history.recommendations[0].age_seconds", -1),
     "history.recommendations[0].age_seconds: must be a number >= 0, not -1"),
    (set_key("history.scale_up_events[0].change", -2), "history.scale_up_events[0].change: must be >= 0"),
    (set_key("history.scale_down_events", [{"change": 1}]),
     "history.scale_down_events[0].age_seconds: required"),
    (set_key("history", []), "history: must be an object, not an array"),
])
def test_mistakes_are_named_by_their_json_path(change: Callable[[dict[str, Any]], None],
                                               message: str) -> None:
    with pytest.raises(ReplayError) as raised:
        replay.load_input(edited(change))
    assert str(raised.value) == message
    assert isinstance(raised.value, InvalidArgument)


def test_min_zero_needs_a_service_level_metric() -> None:
    def cpu_only(doc: dict[str, Any]) -> None:
        doc["min_replicas"] = 0
        doc["metrics"] = doc["metrics"][:2]

    with pytest.raises(ReplayError) as raised:
        replay.load_input(edited(cpu_only))
    assert str(raised.value) == ("min_replicas: 0 needs a service-level metric (value or average_value) "
                                 "to wake the service from zero replicas")


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not JSON: line 1 column 2: Expecting property name enclosed in double quotes"),
    ('{"current_replicas": NaN}', "not JSON: line 1 column 1: NaN is not a JSON number"),
    ('{"current_replicas": 1, "current_replicas": 2}',
     "not JSON Shoal accepts: key 'current_replicas' appears twice in one object"),
    ("[]", ": must be an object, not an array"),
])
def test_documents_that_are_not_inputs(text: str, message: str) -> None:
    with pytest.raises(ReplayError) as raised:
        replay.load_input(text)
    assert str(raised.value) == message.removeprefix(": ")


def test_a_recorded_input_replays_to_the_same_decision() -> None:
    behavior = hpa.Behavior(scale_up=hpa.scale_up_rules(stabilization_window_seconds=30,
                                                        select_policy=hpa.SelectPolicy.MIN),
                            scale_down=hpa.scale_down_rules(policies=(policy("percent", 50, 60),)))
    inp = replay.load_input(json.dumps(EXAMPLE | {"behavior": None}))
    inp = hpa.DecisionInput(
        current_replicas=inp.current_replicas, max_replicas=20, metrics=inp.metrics, behavior=behavior,
        tolerance=hpa.Tolerance(scale_up=0.05, scale_down=0.2),
        history=hpa.History(recommendations=(hpa.Recommendation(replicas=4, at=1990.0),),
                            scale_up_events=(hpa.ScaleEvent(change=1, at=1995.5),)))
    recorded = replay.render_input(inp, now=2000.0)
    assert recorded["history"]["recommendations"] == [{"replicas": 4, "age_seconds": 10}]
    assert recorded["history"]["scale_up_events"] == [{"change": 1, "age_seconds": 4.5}]
    again = replay.load_input(json.dumps(recorded))
    assert replay.render_decision(hpa.decide(again)) == replay.render_decision(hpa.decide(inp, now=2000.0))
    # And the input itself comes back as it was, with times relative to 0.
    assert replay.render_input(again) == recorded


def test_render_input_of_a_parsed_example_is_the_example_with_defaults_written_out() -> None:
    rendered = replay.render_input(replay.load_input(json.dumps(EXAMPLE)))
    assert rendered["metrics"][0] == EXAMPLE["metrics"][0]
    assert rendered["history"] == EXAMPLE["history"]
    assert {k: v for k, v in rendered.items() if k not in ("metrics", "history")} == {
        k: v for k, v in EXAMPLE.items() if k not in ("metrics", "history")}
