"""deploy/: the Grafana dashboard and the Prometheus rules refer only to metrics the agent exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .builders import exposed_names

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
METRIC = re.compile(r"(?<![:\w])((?:container|machine|shoal_agent|shoal_host)_[a-z_]+)\b")


def _unknown(expr: str, known: set[str]) -> set[str]:
    # Label names such as container_label_app are not metrics: only match names not followed by "=~!".
    names = {m.group(1) for m in METRIC.finditer(expr)
             if not re.match(r"\s*(=|!=|=~|!~)", expr[m.end():])}
    return names - known


def _panels(dashboard: dict) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_is_valid_and_every_query_uses_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "shoal-dashboard.json").read_text())
    known = exposed_names()
    assert "container_cpu_usage_seconds_total" in known and "shoal_agent_sample_seconds_bucket" in known
    queries = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(queries) >= 15
    for expr in queries:
        assert METRIC.search(expr), expr
        assert not _unknown(expr, known), (expr, _unknown(expr, known))
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in _panels(dashboard))
    for topic in ("cpu", "memory working set", "network", "oom", "starts", "sample duration"):
        assert topic in titles, topic


def test_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    known = exposed_names()
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        assert not _unknown(expr, known), (expr, _unknown(expr, known))


def test_scrape_config_has_the_agent_job() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "shoal-agent" in jobs
    assert jobs["shoal-agent"]["relabel_configs"]
    assert config["rule_files"] == ["rules.yml", "scheduler-rules.yml"]
