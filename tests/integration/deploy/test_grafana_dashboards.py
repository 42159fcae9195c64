"""deploy/grafana/: every query of every dashboard is PromQL that the real promtool parses (each one,
with Grafana's variables filled in, checked as a recording rule), and the dashboards are well-formed
(unique panel ids, each panel inside the 24-column grid)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[3] / "deploy" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<query>.*),)?\s*\w+\s*\)\s*$", re.DOTALL)


def panels(dashboard: dict) -> list[dict]:  # type: ignore[type-arg]
    return [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]


def as_promql(query: str) -> str | None:
    """A dashboard query as Prometheus would receive it: Grafana's interval variables as a duration,
    every other variable (multi-value, regex-matched) as ``.*``; a ``label_values`` query's selector."""
    values = LABEL_VALUES.match(query)
    if values is not None:
        query = values.group("query") or ""
        if not query:
            return None
    query = re.sub(r"\$__\w+|\$\{__\w+\}", "5m", query)
    return re.sub(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]", ".*", query)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len({json.loads(p.read_text())["uid"] for p in DASHBOARDS}) == len(DASHBOARDS)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.integration
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_parses(path: Path, tmp_path: Path) -> None:
    dashboard = json.loads(path.read_text())
    queries = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    exprs = [e for e in (as_promql(q) for q in queries) if e is not None]
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(tmp_path / "queries.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
