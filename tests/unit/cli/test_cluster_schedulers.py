"""``shoal get schedulers`` and ``shoal describe scheduler`` from lite messages: the table row and its
wide columns, the JSON keys scripts rely on, finding an instance by id or unique prefix (and the errors
when there is none or several), the describe text for a leader and a follower, and ``-w`` refused."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

import pytest

from agent.cli import cluster_describe, cluster_get
from agent.cli import cluster_output as out
from agent.cli.client import CliError
from agent.protolite import Timestamp
from proto.scheduler.v1 import scheduler_lite as spb

NOW = 1_700_000_000.0


def instance(id: str, *, leader: bool = False, started: float = NOW - 90) -> spb.SchedulerInstance:
    return spb.SchedulerInstance(id=id, addresses=["10.0.0.1:7400", "unix:///run/shoal/s.sock"],
                                 http_address="10.0.0.1:9400", started_at=Timestamp(seconds=int(started)),
                                 version="0.9.0", leader=leader)


LISTING = spb.ListSchedulersResponse(
    schedulers=[instance("sched-a", leader=True), instance("sched-b")], leader="sched-a", leader_epoch=42,
    leader_since=Timestamp(seconds=int(NOW - 30)), revision=7)


class _Api:
    def ListSchedulers(self, request: spb.ListSchedulersRequest) -> spb.ListSchedulersResponse:
        return LISTING


class _Scheduler:
    api = _Api()


def test_rows_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out.time, "time", lambda: NOW)
    assert out.scheduler_row(instance("sched-a", leader=True)) == ["sched-a", "10.0.0.1:7400", "yes", "90s"]
    assert out.scheduler_row(instance("sched-b"), wide=True) == [
        "sched-b", "10.0.0.1:7400", "no", "90s", "unix:///run/shoal/s.sock", "10.0.0.1:9400", "0.9.0"]
    assert out.scheduler_row(spb.SchedulerInstance(id="x")) == ["x", "-", "no", "<unknown>"]
    as_json = out.scheduler_json(instance("sched-a", leader=True))
    assert as_json["id"] == "sched-a" and as_json["address"] == "10.0.0.1:7400"
    assert as_json["leader"] is True and as_json["started_at"] == "2023-11-14T22:11:50Z"
    assert out.scheduler_json(instance("sched-b"))["leader"] is False


def test_a_listing_prints_one_row_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out.time, "time", lambda: NOW)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cluster_get.Printer(cluster_get.SCHEDULERS, None, watching=False).listing(list(LISTING.schedulers))
    lines = buffer.getvalue().splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "LEADER", "AGE"]
    assert [line.split()[:3] for line in lines[1:]] == [["sched-a", "10.0.0.1:7400", "yes"],
                                                        ["sched-b", "10.0.0.1:7400", "no"]]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cluster_get.Printer(cluster_get.SCHEDULERS, "json", watching=False).listing(list(LISTING.schedulers))
    assert [(o["id"], o["leader"]) for o in json.loads(buffer.getvalue())] == [("sched-a", True),
                                                                               ("sched-b", False)]


def test_an_instance_is_found_by_id_or_unique_prefix() -> None:
    scheduler: Any = _Scheduler()
    assert cluster_get.find_scheduler(scheduler, "sched-b").id == "sched-b"
    assert cluster_get.find_scheduler(scheduler, "sched-a").leader
    with pytest.raises(CliError, match="ambiguous: sched-a, sched-b"):
        cluster_get.find_scheduler(scheduler, "sched")
    with pytest.raises(CliError, match=r"no scheduler instance 'zz' \(running: sched-a, sched-b\)"):
        cluster_get.find_scheduler(scheduler, "zz")
    query = cluster_get._query(argparse.Namespace(kind="scheduler", name="sched-b", service="", host="",
                                                  state=[]))
    assert query.kind is cluster_get.SCHEDULERS
    assert [s.id for s in query.fetch(scheduler)[0]] == ["sched-b"]
    assert [s.id for s in cluster_get.Query(cluster_get.SCHEDULERS, None).fetch(scheduler)[0]] == [
        "sched-a", "sched-b"]


def test_schedulers_cannot_be_watched() -> None:
    args = argparse.Namespace(kind="schedulers", name=None, service="", host="", state=[], watch=True,
                              output=None)
    with pytest.raises(CliError, match="cannot be watched"):
        cluster_get.cmd_get(Any, args)  # type: ignore[arg-type]  # refused before any call


def test_describe_text_for_a_leader_and_a_follower() -> None:
    leader = dict(line.split(":", 1) for line in
                  cluster_describe.scheduler_text(LISTING.schedulers[0], LISTING).splitlines())
    assert leader["Role"].strip().startswith("leader (epoch 42, since 2023-11-14T22:12:50Z")
    assert leader["Addresses"].strip() == "10.0.0.1:7400, unix:///run/shoal/s.sock"
    assert leader["HTTP"].strip() == "10.0.0.1:9400" and leader["Version"].strip() == "0.9.0"
    follower = dict(line.split(":", 1) for line in
                    cluster_describe.scheduler_text(LISTING.schedulers[1], LISTING).splitlines())
    assert follower["Role"].strip() == "follower (leader: sched-a)"
    alone = spb.ListSchedulersResponse(schedulers=[instance("sched-b")])
    text = cluster_describe.scheduler_text(alone.schedulers[0], alone)
    assert "follower (no leader right now)" in text
