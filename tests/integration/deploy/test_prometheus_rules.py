"""deploy/prometheus/ checked by the real promtool: the configuration and every rule file are valid,
every rule file's unit tests (``*.test.yml`` beside it) pass, and every alert has at least one such test
— an alert added without a test fails here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
RULE_FILES = sorted(p for p in PROMETHEUS.glob("*.yml") if p.name != "prometheus.yml"
                    and not p.name.endswith(".test.yml"))
TEST_FILES = sorted(PROMETHEUS.glob("*.test.yml"))

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (apt-get install prometheus)")


def promtool(*args: str) -> str:
    result = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_rule_file_is_loaded_and_tested() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert sorted(config["rule_files"]) == [p.name for p in RULE_FILES]
    tested = {name for t in TEST_FILES for name in yaml.safe_load(t.read_text())["rule_files"]}
    assert tested == {p.name for p in RULE_FILES}


def test_every_alert_has_a_unit_test() -> None:
    alerts = {rule["alert"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    tested = {check["alertname"] for path in TEST_FILES for case in yaml.safe_load(path.read_text())["tests"]
              for check in case.get("alert_rule_test", [])
              if check.get("exp_alerts")}  # a test that only expects silence proves nothing fires
    assert {"ShoalHostNotReady", "ShoalReplicasPending", "ShoalServiceDegraded"} <= alerts
    assert alerts - tested == set()


@needs_promtool
@pytest.mark.integration
def test_promtool_accepts_the_config_and_rules() -> None:
    promtool("check", "config", "prometheus.yml")
    for path in RULE_FILES:
        promtool("check", "rules", path.name)


@needs_promtool
@pytest.mark.integration
@pytest.mark.parametrize("tests", [p.name for p in TEST_FILES])
def test_rule_unit_tests_pass(tests: str) -> None:
    assert "SUCCESS" in promtool("test", "rules", tests)
