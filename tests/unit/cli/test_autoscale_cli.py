"""``shoal autoscale`` and the autoscale policy in ``get``/``describe`` (agent/cli/autoscale.py,
cluster_output.py, cluster_describe.py), from lite messages: the first word as a service or a sub-command
(``replay`` left free), the flags checked and merged into the current policy, and how a policy is shown
(the one-line summary, wide columns, JSON keys, describe's block)."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import json_format

from agent.cli import autoscale, autoscale_decisions, cluster_describe, main
from agent.cli import cluster_output as out
from agent.cli.client import CliError
from proto.scheduler.v1 import scheduler_lite as spb
from proto.scheduler.v1 import scheduler_pb2
from scheduler import spec as service_file

POLICY = """\
name: web
replicas: 7
template: {image: b, resources: {cpus: 0.5, memory: 64M}}
autoscale:
  min: 2
  max: 20
  metrics:
  - cpu: {target_utilization_percent: 60}
  - prometheus: {query: 'sum(rate(http_requests_total[30s]))', target_value: 100}
  - prometheus: {query: 'sum(queue_depth)', target_average_value: 2.5}
  - prometheus: {query: 'rate(jobs_done_total[30s])', per_replica_label: replica, target_average_value: 5}
  tolerance: {scale_down: 0.2}
  behavior:
    scale_down: {stabilization_window_seconds: 60, policies: [{type: percent, value: 50, period_seconds: 15}]}
"""


def lite_spec(text: str) -> spb.ServiceSpec:
    """What the CLI receives for the service ``text`` declares (as the scheduler sends it)."""
    spec = service_file.parse_service(text)
    message = json_format.ParseDict(service_file.api_dict(spec), scheduler_pb2.ServiceSpec())
    return spb.ServiceSpec.FromString(message.SerializeToString())


def parse(*argv: str) -> argparse.Namespace:
    return main.build_parser(list(argv)).parse_args(list(argv))


# -- the command line ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "name"), [
    (["autoscale", "web", "--max", "5"], "web"),
    (["autoscale", "service", "web", "--max", "5"], "web"),
    (["autoscale", "service/web", "--max", "5"], "web"),
    (["autoscale", "svc/replay", "--max", "5"], "replay"),
    (["autoscale", "--scheduler", "a:1", "web", "--max", "5"], None),  # options come after the service
])
def test_the_first_word_is_the_service(argv: list[str], name: str | None) -> None:
    if name is None:
        with pytest.raises(SystemExit):
            parse(*argv)
        return
    args = parse(*argv)
    assert (args.name, args.max, args.func, args.cluster) == (name, 5, autoscale.cmd_autoscale, True)


def test_replay_and_history_are_sub_commands_and_a_service_may_still_be_named_so() -> None:
    parser = main.build_parser(None)
    args = parser.parse_args(["autoscale", "replay", "decision.json"])
    assert (args.func, args.file) == (autoscale_decisions.cmd_replay, "decision.json")
    history = parser.parse_args(["autoscale", "history", "web", "-o", "json"])
    assert (history.func, history.service, history.output) == (autoscale_decisions.cmd_history, "web", "json")
    named = parser.parse_args(["autoscale", "service/replay", "--off"])
    assert (named.func, named.name, named.off) == (autoscale.cmd_autoscale, "replay", True)


def test_autoscale_is_routed_to_its_module() -> None:
    routed = {word for word, module in main.COMMANDS.items() if module == "autoscale"}
    assert routed == set(autoscale.COMMANDS)


@pytest.mark.parametrize(("argv", "message"), [
    (["web"], "nothing to set: give --min/--max and a metric"),
    (["web", "--off", "--max", "3"], "--off removes the policy: give it without --max"),
    (["web", "--min", "-1", "--max", "3"], "--min must be 0 or more, got -1"),
    (["web", "--max", "0"], "--max must be at least 1, got 0"),
    (["web", "--min", "4", "--max", "3"], "--min (4) is above --max (3)"),
    (["web", "--max", "3", "--cpu-percent", "0"], "--cpu-percent must be at least 1, got 0"),
    (["web", "--max", "3", "--memory-percent", "-5"], "--memory-percent must be at least 1, got -5"),
    (["web", "--tolerance", "1"], "--tolerance must be at least 0 and below 1 (0.1 is 10 %), got 1"),
])
def test_flags_are_checked_before_anything_is_asked(argv: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message.replace("(", r"\(").replace(")", r"\)")):
        autoscale.cmd_autoscale(None, parse("autoscale", *argv))  # type: ignore[arg-type]  # never reached


# -- merging the flags into the policy -----------------------------------------------------------------------

def test_a_new_policy_needs_max_and_a_metric() -> None:
    with pytest.raises(CliError, match="not autoscaled yet: give --max"):
        autoscale.merged_policy(None, parse("autoscale", "web", "--cpu-percent", "50"))
    with pytest.raises(CliError, match="give the metric to scale on"):
        autoscale.merged_policy(None, parse("autoscale", "web", "--max", "5"))
    policy = autoscale.merged_policy(None, parse("autoscale", "web", "--max", "5", "--cpu-percent", "50"))
    assert policy == spb.Autoscale(max_replicas=5, metrics=[spb.MetricTarget(kind="cpu",
                                                                            target_utilization_percent=50)])
    assert not policy.HasField("min_replicas")  # the scheduler's default (1) applies


def test_flags_merge_into_the_current_policy() -> None:
    current = lite_spec(POLICY).autoscale
    kept = autoscale.merged_policy(current, parse("autoscale", "web", "--max", "30", "--tolerance", "0.05"))
    assert (kept.min_replicas, kept.max_replicas) == (2, 30)
    assert (kept.tolerance_up, kept.tolerance_down) == (0.05, 0.05)
    assert kept.metrics == current.metrics and kept.behavior == current.behavior
    assert current.max_replicas == 20  # a copy was changed, not what was read

    replaced = autoscale.merged_policy(current, parse("autoscale", "web", "--memory-percent", "70"))
    assert [(m.kind, m.target_utilization_percent) for m in replaced.metrics] == [
        ("memory", 70), ("prometheus", 0), ("prometheus", 0), ("prometheus", 0)]  # cpu gone, prometheus kept
    assert replaced.min_replicas == 2 and replaced.max_replicas == 20


# -- how a policy is shown -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("milli", "text"), [(100_000, "100"), (2500, "2.5"), (1, "0.001"), (10, "0.01"),
                                            (999_999_999_999_999, "999999999999.999"), (0, "0")])
def test_milli_units_are_shown_exactly(milli: int, text: str) -> None:
    assert out.milli_text(milli) == text


def test_the_one_line_summary_and_the_wide_columns() -> None:
    spec = lite_spec(POLICY)
    service = spb.Service(spec=spec, generation=3)
    assert autoscale.policy_line(service) == (
        "service/web autoscaled: 2\u201320 replicas on cpu 60%, prometheus 5 per replica, "
        "prometheus 2.5 (avg), prometheus 100")
    assert out.SERVICE_WIDE == ["IMAGE", "STRATEGY", "MIN", "MAX", "TARGETS", "MESSAGE"]
    assert out.service_row(service, wide=True)[6:] == ["b", "spread", "2", "20", "cpu 60%, prometheus 5 per "
                                                       "replica, + 2 more", ""]
    plain = spb.Service(spec=lite_spec("name: w\ntemplate: {image: b}\n"))
    assert out.service_row(plain, wide=True)[8:11] == ["-", "-", "-"]


def test_json_has_the_policy_in_the_files_words_with_every_default() -> None:
    service = spb.Service(spec=lite_spec(POLICY))
    policy = out.service_json(service)["autoscale"]
    assert policy == {
        "min": 2, "max": 20,
        "metrics": [{"cpu": {"target_utilization_percent": 60}},
                    {"prometheus": {"query": "rate(jobs_done_total[30s])", "per_replica_label": "replica",
                                    "target_average_value": 5}},
                    {"prometheus": {"query": "sum(queue_depth)", "target_average_value": 2.5}},
                    {"prometheus": {"query": "sum(rate(http_requests_total[30s]))", "target_value": 100}}],
        "tolerance": {"scale_up": 0.1, "scale_down": 0.2},
        "behavior": {
            "scale_up": {"stabilization_window_seconds": 0, "select_policy": "max",
                         "policies": [{"type": "replicas", "value": 4, "period_seconds": 15},
                                      {"type": "percent", "value": 100, "period_seconds": 15}]},
            "scale_down": {"stabilization_window_seconds": 60, "select_policy": "max",
                           "policies": [{"type": "percent", "value": 50, "period_seconds": 15}]}},
    }
    plain = spb.Service(spec=lite_spec("name: w\ntemplate: {image: b}\n"))
    assert out.service_json(plain)["autoscale"] is None


def test_describe_shows_the_policy_in_plain_words() -> None:
    text = cluster_describe.service_text(spb.Service(spec=lite_spec(POLICY), generation=3), [], None)
    block = text[text.index("Autoscale:"):text.index("Replicas:  none")].splitlines()
    assert block == [
        "Autoscale:",
        "  Replicas:   2\u201320 (now 7)",
        "  Metrics:    cpu 60% of the request",
        "              prometheus rate(jobs_done_total[30s]) = 5 per replica (label replica)",
        "              prometheus sum(queue_depth) = 2.5 per replica (its value / replicas)",
        "              prometheus sum(rate(http_requests_total[30s])) = 100",
        "  Tolerance:  scale up above 110% of target, down below 80%",
        "  Scale up:   no window; the larger of 4 replicas per 15s or 100% per 15s",
        "  Scale down: window 60s; at most 50% per 15s",
        "Autoscaler decisions:  none yet",
    ]
    plain = cluster_describe.service_text(spb.Service(spec=lite_spec("name: w\ntemplate: {image: b}\n")), [],
                                          None)
    assert "Autoscale" not in plain


@pytest.mark.parametrize(("behavior", "up", "down"), [
    ("{}", "no window; the larger of 4 replicas per 15s or 100% per 15s",
     "window 300s; at most 100% per 15s"),
    ("{scale_up: {select_policy: disabled}, scale_down: {select_policy: min, policies: "
     "[{type: replicas, value: 1, period_seconds: 60}, {type: percent, value: 10, period_seconds: 60}]}}",
     "disabled", "window 300s; the smaller of 1 replica per 60s or 10% per 60s"),
])
def test_describe_words_each_direction(behavior: str, up: str, down: str) -> None:
    spec = lite_spec("name: w\ntemplate: {image: b, resources: {cpus: 1}}\nautoscale:\n  max: 3\n"
                     f"  metrics: [cpu: {{target_utilization_percent: 50}}]\n  behavior: {behavior}\n")
    lines = cluster_describe.autoscale_text(spec.autoscale, replicas=1).splitlines()
    assert lines[-2:] == [f"  Scale up:   {up}", f"  Scale down: {down}"]
    # A policy missing its behavior (an older scheduler) reads as Kubernetes' defaults.
    bare = spb.Autoscale(max_replicas=3, metrics=[spb.MetricTarget(kind="cpu", target_utilization_percent=5)])
    assert cluster_describe.autoscale_text(bare, replicas=1).splitlines()[1:] == [
        "  Replicas:   1\u20133 (now 1)", "  Metrics:    cpu 5% of the request",
        "  Tolerance:  scale up above 110% of target, down below 90%",
        "  Scale up:   no window; the larger of 4 replicas per 15s or 100% per 15s",
        "  Scale down: window 300s; at most 100% per 15s"]


def test_describe_shows_the_latest_decisions_newest_last() -> None:
    decisions = [spb.AutoscaleDecision(current_replicas=2, desired_replicas=2 + i, reason=f"reason {i}")
                 for i in range(7)]
    service = spb.Service(spec=lite_spec(POLICY), generation=3)
    text = cluster_describe.service_text(service, [], None, decisions)
    block = text[text.index("Autoscaler decisions:"):text.index("Replicas:  none")].splitlines()
    assert block[1].split() == ["AGE", "REPLICAS", "REASON"]
    assert [line.split()[-2:] for line in block[2:]] == [["reason", str(i)] for i in range(2, 7)]
    assert "2 -> 8" in block[-1]
