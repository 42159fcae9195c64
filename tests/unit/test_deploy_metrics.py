"""deploy/: every PromQL expression in the Grafana dashboards and the Prometheus rules uses only metric
names Shoal exports — taken from the real registries (the agent's with its cAdvisor-named usage
collector, the scheduler's with a published cluster), plus the rules' own recordings and the series
Prometheus adds per target (``up``) — so renaming a metric breaks this test, not a dashboard in
production.

Names are read out of the expressions by a small PromQL tokenizer (``metric_names``): identifiers that
are not functions, aggregation operators or keywords, outside label matchers, label lists
(``by (...)``, ``on (...)``...) and ranges; Grafana's ``$variables`` and ``label_values(metric, label)``
are understood."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from scheduler import metrics as scheduler_metrics
from scheduler.store import base

from .usage.builders import exposed_names as agent_exposed_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
RULE_FILES = sorted(p for p in (DEPLOY / "prometheus").glob("*.yml")
                    if p.name != "prometheus.yml" and not p.name.endswith(".test.yml"))
# Series Prometheus adds to every target it scrapes.
PER_TARGET = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
  | (?P<number>(?:\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?)+|\.\d+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/%^@:])
  | (?P<space>\s+)
""", re.VERBOSE)
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<query>.*),)?\s*\w+\s*\)\s*$", re.DOTALL)


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position:position + 20]!r} in {expr!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, match.group()


def metric_names(expr: str) -> set[str]:
    """The metric names an expression (or a Grafana ``label_values(...)`` query) selects."""
    values = LABEL_VALUES.match(expr)
    if values is not None:
        return metric_names(values.group("query")) if values.group("query") else set()
    tokens = list(_tokens(expr))
    names: set[str] = set()
    depth = {"{": 0, "[": 0}
    skip_list = False  # inside by (...), on (...)...
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text in ("{", "["):
            depth[text] += 1
        elif text == "}":
            depth["{"] -= 1
        elif text == "]":
            depth["["] -= 1
        elif skip_list:
            skip_list = text != ")"
        elif kind == "ident" and not depth["{"] and not depth["["]:
            if text in LABEL_LISTS:
                skip_list = following == "("
            elif following == "(" or text in AGGREGATIONS or text in KEYWORDS:
                continue  # a function or an aggregation operator
            else:
                names.add(text)
    return names


def _exposition_names(metric: Metric) -> set[str]:
    """The sample names a family is exposed under, also when it has no sample yet (a labelled counter
    or histogram nobody has touched)."""
    by_type = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
               "summary": ("", "_count", "_sum", "_created"), "info": ("_info",),
               "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
    names = {metric.name + suffix for suffix in by_type.get(metric.type, ("",))}
    return names | {sample.name for sample in metric.samples}


def scheduler_exposed_names() -> set[str]:
    """Every family the scheduler's /metrics can hold: its registry with a published (empty) cluster, as
    the leader and with the etcd client's counters."""
    published = scheduler_metrics.Published(
        cluster=scheduler_metrics.PublishedCluster(base.Snapshot(revision=1)), leading=True, synced=True,
        etcd_retries=0, etcd_watch_resumes=0)
    exporter = scheduler_metrics.SchedulerMetrics()
    exporter.published = lambda: published  # type: ignore[method-assign]  # what the loop would publish
    registry: CollectorRegistry = exporter.registry
    return {name for metric in registry.collect() for name in _exposition_names(metric)}


def recorded_names() -> set[str]:
    return {rule["record"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


@pytest.fixture(scope="module")
def known() -> set[str]:
    return agent_exposed_names() | scheduler_exposed_names() | recorded_names() | PER_TARGET


def dashboard_queries(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    return queries + [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]


def rule_expressions(path: Path) -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_metric_names_reads_promql() -> None:
    expr = ('sum by (service, le) (rate(a_bucket{service=~"$service", le!="x"}[5m] offset 1h)) '
            '/ on (service) group_left (zone) max without (instance) (b:rec:max) > bool 0.5 '
            'or vector(0) unless topk(3, c_total[$__rate_interval:1m]) and 1e3 * d')
    assert metric_names(expr) == {"a_bucket", "b:rec:max", "c_total", "d"}
    query = 'label_values(machine_cpu_cores{instance=~"$x"}, instance)'
    assert metric_names(query) == {"machine_cpu_cores"}
    assert metric_names("label_values(instance)") == set()


def test_the_registries_are_read(known: set[str]) -> None:
    for name in ("container_cpu_usage_seconds_total", "shoal_agent_sample_seconds_bucket",
                 "shoal_service_replicas_desired", "shoal_scheduler_placement_duration_seconds_bucket",
                 "shoal_hostgroup_provider_requests_total", "shoal_autoscale_decision_failed",
                 "shoal_scheduler_etcd_retries_total", "shoal:service_replicas_ready:max"):
        assert name in known, name
    assert "shoal_service_replicas_desired_total" not in known


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_exported_metrics(path: Path, known: set[str]) -> None:
    queries = dashboard_queries(path)
    assert queries
    for expr in queries:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, (expr, names - known)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_expressions_use_exported_metrics(path: Path, known: set[str]) -> None:
    for expr in rule_expressions(path):
        names = metric_names(expr)
        assert names, expr
        assert names <= known, (expr, names - known)


def test_services_dashboard_covers_the_issue() -> None:
    """Desired / ready / pending replicas, autoscaler decisions, failovers, host groups."""
    queries = " ".join(dashboard_queries(DEPLOY / "grafana" / "shoal-services.json"))
    for name in ("shoal:service_replicas_desired:max", "shoal:service_replicas_ready:max",
                 "shoal:service_replicas_pending:max", "shoal_autoscale_last_decision_timestamp_seconds",
                 "shoal:host_ready_drops:5m", "shoal:scheduler_leader_takeovers:5m",
                 "shoal:hostgroup_desired_hosts:max", "shoal:hostgroup_pending_replicas:max"):
        assert name in queries, name
