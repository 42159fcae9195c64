"""``shoal autoscale`` and autoscaled services in ``apply``/``get``/``describe``, run as a process against
the in-process fake scheduler of test_cluster_cli.py (mTLS on loopback), which answers ``AutoscaleService``
and ``ApplyService`` with the scheduler's own rules (``scheduler.api``: the policy read as the file's
section, the count an apply keeps). Checked: what is printed, the requests sent (the merged policy, the
generation it was read at), retrying a merge the service changed under, the scheduler's refusals with
their paths, and exit statuses."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler import api
from scheduler import spec as service_file
from scheduler.autoscale import replay
from scheduler.model import ServiceSpec
from scheduler.spec import SpecError
from tests.integration.cli.test_cluster_cli import (
    WEB,
    FakeScheduler,
    Server,
    _abort,
    as_json,
    ok,
    pki,
    run,
)

pytestmark = [pytest.mark.integration]
__all__ = ["pki"]  # the module-scoped fixture, shared with test_cluster_cli.py

AUTOSCALED = WEB.replace("replicas: 2\n", "") + """\
autoscale:
  min: 2
  max: 20
  metrics:
  - cpu: {target_utilization_percent: 60}
  - prometheus: {query: 'sum(rate(http_requests_total{service="web"}[30s]))', target_value: 100}
"""
EN_DASH = "\u2013"


def _spec_of(message: pb.ServiceSpec) -> ServiceSpec:
    return service_file.spec_from_api(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _message_of(spec: ServiceSpec) -> pb.ServiceSpec:
    return json_format.ParseDict(service_file.api_dict(spec), pb.ServiceSpec())


class AutoscalingFake(FakeScheduler):
    """The fake scheduler, with apply keeping an autoscaled service's count and ``AutoscaleService``."""

    def __init__(self) -> None:
        super().__init__()
        self.changes_under_merge = 0  # AutoscaleService calls to answer as if the service changed meanwhile
        self.decisions: dict[str, list[pb.AutoscaleDecision]] = {}

    def _apply(self, text: str, source: str) -> list[pb.ApplyResult]:
        results = []
        for spec in service_file.parse_service_file(text, source=source):
            old = self.services.get(spec.name)
            kept = api.replicas_to_keep(_spec_of(old.spec), spec) if old is not None else spec.replicas
            replicas_kept = kept != spec.replicas
            kept_spec = dataclasses.replace(spec, replicas=kept)
            [result] = super()._apply(service_file.render_yaml(kept_spec), source)
            result.replicas_kept = replicas_kept
            results.append(result)
        return results

    def GetAutoscaleStatus(self, request: pb.GetServiceRequest, context: grpc.ServicerContext
                           ) -> pb.AutoscaleStatus:
        self.record("GetAutoscaleStatus", request)
        self._service(request.name, context)
        return pb.AutoscaleStatus(service=request.name, decisions=self.decisions.get(request.name, []))

    def ReplayAutoscale(self, request: pb.ReplayAutoscaleRequest, context: grpc.ServicerContext
                        ) -> pb.ReplayAutoscaleResponse:
        self.record("ReplayAutoscale", request)
        try:  # the scheduler's own function: the fake answers what the real one does
            return pb.ReplayAutoscaleResponse(output_json=replay.replay(request.input_json))
        except replay.ReplayError as err:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument", str(err))
            raise

    def AutoscaleService(self, request: pb.AutoscaleServiceRequest, context: grpc.ServicerContext
                         ) -> pb.Service:
        self.record("AutoscaleService", request)
        service = self._service(request.name, context)
        if self.changes_under_merge:
            self.changes_under_merge -= 1
            service.generation += 1  # someone else's change landed between the CLI's read and its write
        if request.expected_generation and request.expected_generation != service.generation:
            _abort(context, grpc.StatusCode.ABORTED, "Aborted",
                   f"service {service.spec.name} is at generation {service.generation}, not "
                   f"{request.expected_generation}: it changed since you read it")
        policy = request.autoscale if request.WhichOneof("policy") == "autoscale" else None
        try:
            spec = api.spec_with_autoscale(_spec_of(service.spec), policy)
        except SpecError as err:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument", str(err))
        service.spec.CopyFrom(_message_of(spec))
        service.generation += 1
        return service


@pytest.fixture
def server(pki: dict[str, Path]) -> Iterator[Server]:
    fake = AutoscalingFake()
    fake._apply(AUTOSCALED.replace("name: web", "name: auto"), "canned.yaml")
    fake._apply(WEB.replace("name: web", "name: bare").replace("cpus: 0.5, ", ""), "canned.yaml")
    fake.requests.clear()
    s = Server(pki, fake)
    yield s
    s.stop()


def sent(server: Server) -> list[pb.AutoscaleServiceRequest]:
    return server.fake.calls("AutoscaleService")


# -- shoal autoscale ----------------------------------------------------------------------------------------

def test_autoscale_sets_a_policy_like_kubectl_autoscale(server: Server, pki: dict[str, Path]) -> None:
    out = ok(run(pki, server.address, "autoscale", "web", "--min", "2", "--max", "20", "--cpu-percent", "60"))
    assert out == f"service/web autoscaled: 2{EN_DASH}20 replicas on cpu 60%\n"
    [request] = sent(server)
    assert (request.name, request.expected_generation) == ("web", 1)  # the generation it read
    assert (request.autoscale.min_replicas, request.autoscale.max_replicas) == (2, 20)
    assert [(m.kind, m.target_utilization_percent) for m in request.autoscale.metrics] == [("cpu", 60)]
    assert not request.autoscale.HasField("tolerance_up")  # not asked for: the scheduler's default
    web = server.fake.services["web"]
    assert web.spec.autoscale.max_replicas == 20 and web.spec.replicas == 2 and web.generation == 2


def test_flags_merge_into_the_policy_and_prometheus_metrics_stay(server: Server,
                                                                  pki: dict[str, Path]) -> None:
    out = ok(run(pki, server.address, "autoscale", "service/auto", "--cpu-percent", "75", "--memory-percent",
                 "80", "--tolerance", "0.2"))
    assert out == (f"service/auto autoscaled: 2{EN_DASH}20 replicas on cpu 75%, memory 80%, prometheus 100\n")
    [request] = sent(server)
    metrics = request.autoscale.metrics
    assert [(m.kind, m.target_utilization_percent, m.target_value_milli) for m in metrics] == [
        ("cpu", 75, 0), ("memory", 80, 0), ("prometheus", 0, 100_000)]
    assert (request.autoscale.min_replicas, request.autoscale.max_replicas) == (2, 20)
    assert (request.autoscale.tolerance_up, request.autoscale.tolerance_down) == (0.2, 0.2)
    assert request.autoscale.behavior.scale_down.stabilization_window_seconds == 300  # as it was


def test_a_merge_the_service_changed_under_is_done_again(server: Server, pki: dict[str, Path]) -> None:
    assert isinstance(server.fake, AutoscalingFake)
    server.fake.changes_under_merge = 2
    out = ok(run(pki, server.address, "autoscale", "auto", "--max", "30"))
    assert out.startswith(f"service/auto autoscaled: 2{EN_DASH}30 replicas")
    assert [r.expected_generation for r in sent(server)] == [1, 2, 3]  # re-read after each refusal
    assert len(server.fake.calls("GetService")) == 3


def test_a_stale_expected_generation_is_refused_once(server: Server, pki: dict[str, Path]) -> None:
    result = run(pki, server.address, "autoscale", "auto", "--max", "30", "--expected-generation", "7")
    assert result.returncode == 1
    assert result.stderr == "shoal: service auto is at generation 1, not 7: it changed since you read it\n"
    assert [r.expected_generation for r in sent(server)] == [7]
    assert server.fake.services["auto"].spec.autoscale.max_replicas == 20


def test_off_removes_the_policy_and_the_count_stays(server: Server, pki: dict[str, Path]) -> None:
    server.fake.services["auto"].spec.replicas = 7
    assert ok(run(pki, server.address, "autoscale", "auto", "--off")) == \
        "service/auto autoscaling off: replicas stay at 7\n"
    [request] = sent(server)
    assert (request.WhichOneof("policy"), request.off, request.expected_generation) == ("off", True, 0)
    assert not server.fake.services["auto"].spec.HasField("autoscale")


def test_the_schedulers_refusal_names_the_path(server: Server, pki: dict[str, Path]) -> None:
    result = run(pki, server.address, "autoscale", "bare", "--max", "5", "--cpu-percent", "50")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("shoal: autoscale: autoscale.metrics[0].cpu: cpu utilization is a percentage of "
                             "the cpu request: set template.resources.cpus (or cpus_request)\n")
    zero = run(pki, server.address, "autoscale", "web", "--min", "0", "--max", "5", "--cpu-percent", "50")
    assert zero.returncode == 1
    assert "autoscale.min: min 0 needs a service-level prometheus metric" in zero.stderr


def test_mistakes_in_the_flags_send_nothing(server: Server, pki: dict[str, Path]) -> None:
    for argv, message in ((["web", "--min", "5", "--max", "3"], "--min (5) is above --max (3)"),
                          (["web", "--off", "--cpu-percent", "3"], "--off removes the policy"),
                          (["web", "--cpu-percent", "50"], "the service is not autoscaled yet: give --max")):
        result = run(pki, server.address, "autoscale", *argv)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    assert sent(server) == []
    missing = run(pki, server.address, "autoscale", "nope", "--max", "3", "--cpu-percent", "5")
    assert (missing.returncode, missing.stderr) == (1, "shoal: no such service: nope\n")


# -- apply, get, describe -----------------------------------------------------------------------------------

def test_apply_says_when_the_autoscalers_count_was_kept(server: Server, pki: dict[str, Path]) -> None:
    server.fake.services["auto"].spec.replicas = 7  # what the autoscaler set
    text = AUTOSCALED.replace("name: web", "name: auto")
    assert ok(run(pki, server.address, "apply", "-f", "-", stdin=text)) == \
        "service/auto unchanged (replicas 7 kept: autoscaled)\n"
    assert ok(run(pki, server.address, "apply", "-f", "-", stdin=text.replace("max: 20", "max: 5"))) == \
        "service/auto updated (replicas 5 kept: autoscaled)\n"
    assert ok(run(pki, server.address, "apply", "-f", "-", stdin=text.replace("min: 2", "min: 5"))) == \
        "service/auto updated\n"  # 5 is also what the file means: nothing was kept from it


def test_get_wide_json_and_yaml_show_the_policy(server: Server, pki: dict[str, Path]) -> None:
    lines = ok(run(pki, server.address, "get", "services", "-o", "wide")).splitlines()
    header = lines[0].split()
    assert header[6:11] == ["IMAGE", "STRATEGY", "MIN", "MAX", "TARGETS"]
    auto = next(line for line in lines if line.startswith("auto "))
    assert "   2     20    cpu 60%, prometheus 100" in auto
    services = {s["name"]: s for s in as_json(run(pki, server.address, "get", "services", "-o", "json"))}
    assert services["web"]["autoscale"] is None
    policy = services["auto"]["autoscale"]
    assert (policy["min"], policy["max"]) == (2, 20)
    assert policy["tolerance"] == {"scale_up": 0.1, "scale_down": 0.1}
    assert policy["metrics"][0] == {"cpu": {"target_utilization_percent": 60}}
    rendered = ok(run(pki, server.address, "get", "service", "auto", "-o", "yaml"))
    assert "autoscale:\n  min: 2\n  max: 20\n" in rendered
    assert ok(run(pki, server.address, "apply", "-f", "-", stdin=rendered)) == "service/auto unchanged\n"


def test_describe_shows_the_policy(server: Server, pki: dict[str, Path]) -> None:
    text = ok(run(pki, server.address, "describe", "service", "auto"))
    assert "Autoscale:\n" in text
    for expected in (f"Replicas:   2{EN_DASH}20 (now 2)", "Metrics:    cpu 60% of the request",
                     'prometheus sum(rate(http_requests_total{service="web"}[30s])) = 100',
                     "Scale down: window 300s; at most 100% per 15s"):
        assert expected in text, text
    assert "Autoscale" not in ok(run(pki, server.address, "describe", "service", "web"))


INPUT = {"current_replicas": 2, "min_replicas": 1, "max_replicas": 10,
         "metrics": [{"type": "cpu", "target_utilization_percent": 50, "replicas": [
             {"id": "r1", "cpu_request_milli": 100, "cpu_usage_milli": 100},
             {"id": "r2", "cpu_request_milli": 100, "cpu_usage_milli": 100}]}]}


def test_history_lists_the_recorded_decisions_and_their_inputs(server: Server, pki: dict[str, Path]) -> None:
    decided = pb.AutoscaleDecision(current_replicas=2, desired_replicas=4, reason="cpu 100% of target 50%",
                                   input_json=json.dumps(INPUT))
    decided.time.FromSeconds(1_700_000_000)
    server.fake.decisions["auto"] = [decided]
    table = ok(run(pki, server.address, "autoscale", "history", "auto"))
    assert table.splitlines()[0].split() == ["TIME", "FROM", "TO", "REASON"]
    assert "2023-11-14T22:13:20Z   2      4    cpu 100% of target 50%" in table
    [row] = json.loads(ok(run(pki, server.address, "autoscale", "history", "auto", "-o", "json")))
    assert (row["current_replicas"], row["desired_replicas"], row["input"]) == (2, 4, INPUT)
    described = ok(run(pki, server.address, "describe", "service", "auto"))
    assert "Autoscaler decisions:" in described and "2 -> 4" in described
    assert "no decision recorded yet" in ok(run(pki, server.address, "autoscale", "history", "bare"))


def test_replay_prints_the_decision_and_names_a_bad_keys_path(server: Server, pki: dict[str, Path],
                                                              tmp_path: Path) -> None:
    good = tmp_path / "in.json"
    good.write_text(json.dumps(INPUT))
    decision = json.loads(ok(run(pki, server.address, "autoscale", "replay", str(good))))
    assert decision["desired_replicas"] == 4
    assert decision["reason"].startswith("cpu 100% of target 50% on 2 ready replicas")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**INPUT, "metrics": [{"type": "cpu", "target_utilization_percent": 50,
                                                      "replicas": [{"id": "r1", "cpu_usage_milli": 5}]}]}))
    refused = run(pki, server.address, "autoscale", "replay", str(bad))
    assert refused.returncode == 1
    assert "metrics[0].replicas[0].cpu_request_milli: required for cpu metrics" in refused.stderr
    missing = run(pki, server.address, "autoscale", "replay", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
