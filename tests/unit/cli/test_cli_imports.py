"""What a ``shoal`` process imports: start-up is most of its cost, so the hot paths (parsing any verb,
building a run request, the transport) must not pull in grpc, the protobuf runtime, asyncio, rich,
typing, dataclasses, pathlib or http.client. docs/architecture.md states this list; keep both true."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("grpc", "google.protobuf", "asyncio", "rich", "typing", "dataclasses", "pathlib", "http",
             "email", "ipaddress", "secrets", "shutil", "json", "tarfile", "socket", "selectors",
             "agent.runtime.spec",
             "agent.network", "agent.runtime.restart", "agent.runtime.health")

PROBE = """
import json, sys
before = set(sys.modules)
from agent.cli import main, containers, transport
parser = main.build_parser()
args = parser.parse_args(["run", "--rm", "-m", "64M", "--cpus", "0.5", "-p", "8080:80", "--restart",
                          "on-failure:3", "--health-cmd", "true", "-e", "A=1", "-l", "k=v", "img", "true"])
request = containers.build_request(args)
request.SerializeToString()
for argv in (["ps", "-a"], ["logs", "-f", "x"], ["image", "pull", "r/x"], ["exec", "c", "ls"], ["stats"]):
    parser.parse_args(argv)
agent = transport.AgentTransport("unix:///nonexistent/agent.sock")
try:
    agent.chosen
except transport.RpcFailure:
    pass
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_cli_hot_paths_import_only_what_they_need() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    offenders = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not offenders, f"the CLI's hot path imports {offenders}"
    assert "proto.agent.v1.agent_lite" in loaded and "proto.agent.v1.agent_pb2" not in loaded


CLUSTER_PROBE = """
import json, sys
before = set(sys.modules)
from agent.cli import main, cluster_get, scheduler_client, transport
from proto.scheduler.v1 import scheduler_lite as spb
parser = main.build_parser()
for argv in (["get", "replicas", "-w"], ["apply", "-f", "-"], ["scale", "web", "--replicas", "2"],
             ["describe", "service", "web"], ["rollout", "status", "web"], ["drain", "h", "--wait"],
             ["autoscale", "web", "--min", "2", "--max", "5", "--cpu-percent", "60"]):
    parser.parse_args(argv)
printer = cluster_get.Printer(cluster_get.REPLICAS, None, watching=False)
printer.listing([spb.Replica(id="r1", service="web", state=spb.REPLICA_STATE_RUNNING, ready=True)])
conn = scheduler_client.SchedulerConnection(["127.0.0.1:1", "unix:///nonexistent/s.sock"])
try:
    spb.SchedulerStub(conn).ListServices(spb.ListServicesRequest())
except transport.RpcFailure as err:
    assert err.code == "UNAVAILABLE", err
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_cluster_verbs_import_neither_grpc_nor_yaml_to_print_a_table_or_find_no_scheduler() -> None:
    out = subprocess.run([sys.executable, "-c", CLUSTER_PROBE], capture_output=True, text=True,
                         check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    offenders = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in (*FORBIDDEN, "yaml"))]
    assert not offenders, f"the cluster verbs import {offenders}"
    assert "proto.scheduler.v1.scheduler_lite" in loaded and "proto.scheduler.v1.scheduler_pb2" not in loaded
