"""``shoal system df``: where the host's disk goes — images, shared layers, containers' writable layers."""

from __future__ import annotations

import argparse

from agent.cli.client import Agent, rpc_errors
from agent.cli.output import human_size, short_id, table
from proto.agent.v1 import agent_lite as pb

_STATES = {pb.CONTAINER_STATE_CREATED: "created", pb.CONTAINER_STATE_RUNNING: "running",
           pb.CONTAINER_STATE_EXITED: "exited"}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    system = sub.add_parser("system", help="host-wide information")
    ssub = system.add_subparsers(dest="system_command", required=True, prog="shoal system")
    df = ssub.add_parser("df", help="disk used by images, layers and containers")
    df.add_argument("-v", "--verbose", action="store_true", help="one row per image and container")
    df.set_defaults(func=cmd_df)


def cmd_df(agent: Agent, args: argparse.Namespace) -> int:
    with rpc_errors(agent.address):
        usage = agent.system.DiskUsage(pb.DiskUsageRequest())
    in_use = sum(1 for i in usage.images if i.containers)
    unique = sum(i.size - i.shared_size for i in usage.images)
    writable = sum(c.writable_bytes for c in usage.containers)
    running = sum(1 for c in usage.containers if c.state == pb.CONTAINER_STATE_RUNNING)
    print(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "NOTE"], [
        ["Images", str(len(usage.images)), str(in_use), human_size(usage.layers_bytes + usage.blobs_bytes),
         f"{human_size(unique)} unique to one image"],
        ["Layers", str(usage.layers), "", human_size(usage.layers_bytes), "unpacked, shared by images"],
        ["Containers", str(len(usage.containers)), str(running), human_size(writable), "writable layers"],
    ]))
    if args.verbose:
        print()
        print(table(["IMAGE ID", "TAGS", "SIZE", "SHARED", "CONTAINERS"], [
            [short_id(i.id), ",".join(i.repo_tags) or "<none>", human_size(i.size),
             human_size(i.shared_size), str(i.containers)] for i in usage.images]))
        print()
        print(table(["CONTAINER ID", "NAME", "IMAGE", "STATE", "WRITABLE"], [
            [c.id[:12], c.name, c.image, _STATES.get(c.state, "?"), human_size(c.writable_bytes)]
            for c in usage.containers]))
    return 0
