"""The growth plot and the markdown table drawn from a fixture sweep: one complete run at 500 hosts and one
at 5,000 that ended before placement finished (its figures are gaps, not zeros)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import scale_plot

FIXTURE = Path(__file__).with_name("scale_sweep_fixture.json")


def test_runs_are_loaded_in_order_of_hosts() -> None:
    runs = scale_plot.load([FIXTURE])
    assert [r["hosts"] for r in runs] == [500, 5000]


def test_figures_of_a_complete_run_in_the_units_plotted() -> None:
    full = scale_plot.load([FIXTURE])[0]
    f = scale_plot.figures(full)
    assert f["replicas_per_s"] == 2500.0
    assert f["leader_rss_mib"] == 300.0
    assert (f["get_services_p50_ms"], f["get_services_p99_ms"]) == (120.0, 400.0)
    assert (f["mass_failure_p50_s"], f["mass_failure_p99_s"]) == (7.5, 11.0)
    assert (f["failover_elected_s"], f["failover_acts_s"]) == (2.1, 3.4)


def test_the_instance_is_the_leader_and_its_session_workers() -> None:
    full = dict(scale_plot.load([FIXTURE])[0])
    assert scale_plot.figures(full)["instance_rss_mib"] is None  # sessions in the leader: no workers
    full["steady_session_workers_rss_bytes"] = [100 << 20, 50 << 20]
    f = scale_plot.figures(full)
    assert (f["workers_rss_mib"], f["instance_rss_mib"]) == (150.0, 450.0)


def test_figures_not_reached_are_none() -> None:
    partial = scale_plot.load([FIXTURE])[1]
    f = scale_plot.figures(partial)
    assert f["running_s"] is None and f["leader_cores"] is None and f["failover_acts_s"] is None


def test_the_table_has_a_row_per_run_with_gaps_and_checks() -> None:
    text = scale_plot.table(scale_plot.load([FIXTURE]))
    lines = text.splitlines()
    assert len(lines) == 4  # header, rule, two runs
    assert lines[2].startswith("| 500 | 10,000 | 2,500 | 12.5 | 0.80 | 300 | — | 120 / 400 | 7.5 / 11.0 | "
                               "2.10 / 3.40 |")
    assert "mass failure audit ok; failover audit ok; failover moved 0, created 0" in lines[2]
    assert lines[3].startswith("| 5,000 | 100,000 | — | — |")
    assert "steady failed; ended: TimeoutError / x more" in lines[3]  # one line, no column breaks


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "img" / "growth.png"
    scale_plot.plot(scale_plot.load([FIXTURE]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_line_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    scale_plot.main([str(FIXTURE), "--table"])
    assert capsys.readouterr().out.startswith("| hosts | replicas | replicas/s |")
    with pytest.raises(SystemExit, match="no such file"):
        scale_plot.main([str(FIXTURE.with_name("missing.json"))])
