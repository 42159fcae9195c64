"""Watching a host: ``shoal events`` (lifecycle stream), ``shoal stats`` (live usage) and ``shoal host``."""

from __future__ import annotations

import argparse
import sys

from agent.cli.client import Agent, CliError, rpc_errors
from agent.cli.output import human_size, table
from proto.agent.v1 import agent_lite as pb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.table import Table

_EVENT_NAMES = {v: k.removeprefix("EVENT_TYPE_").lower() for k, v in pb.EventType.items()}
_HEALTH_NAMES = {v: k.removeprefix("HEALTH_STATUS_").lower() for k, v in pb.HealthStatus.items()}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser("events", help="stream container lifecycle events")
    events.add_argument("--since", type=int, default=None, metavar="SEQ",
                        help="replay kept events after sequence SEQ first (0 = all kept history)")
    events.add_argument("-f", "--filter", action="append", default=[], metavar="label=K=V")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(func=cmd_events)

    stats = sub.add_parser("stats", help="live resource usage of running containers")
    stats.add_argument("--no-stream", action="store_true", help="print one snapshot and exit")
    stats.add_argument("-f", "--filter", action="append", default=[], metavar="label=K=V")
    stats.set_defaults(func=cmd_stats)

    host = sub.add_parser("host", help="this host's identity, capacity and use")
    host.add_argument("--json", action="store_true")
    host.set_defaults(func=cmd_host)


def _labels(filters: list[str]) -> dict[str, str]:
    out = {}
    for item in filters:
        kind, _, rest = item.partition("=")
        key, sep, value = rest.partition("=")
        if kind != "label" or not sep or not key:
            raise CliError(f"unsupported filter {item!r}: use label=KEY=VALUE")
        out[key] = value
    return out


def event_line(event: pb.Event) -> str:
    kind = _EVENT_NAMES.get(event.type, "unknown")
    details = []
    if event.type in (pb.EVENT_TYPE_EXITED, pb.EVENT_TYPE_OOM_KILLED):
        details.append(f"exit={event.exit_code}")
    if event.reason:
        details.append(f"reason={event.reason}")
    if event.type == pb.EVENT_TYPE_HEALTH_CHANGED:
        details.append(f"health={_HEALTH_NAMES.get(event.health, '?')}")
    if event.restart_count:
        details.append(f"restarts={event.restart_count}")
    if event.message:
        import json

        details.append(f"message={json.dumps(event.message)}")
    return (f"{event.time.ToJsonString()} #{event.sequence} {kind} {event.container_id[:12]} "
            f"({event.container_name}) {' '.join(details)}").rstrip()


def cmd_events(agent: Agent, args: argparse.Namespace) -> int:
    import json

    from agent.protolite import to_dict

    request = pb.WatchEventsRequest(labels=_labels(args.filter))
    if args.since is not None:
        request.after_sequence = args.since
    try:
        with rpc_errors(agent.address):
            for event in agent.containers.WatchEvents(request):
                if args.json:
                    # What json_format.MessageToJson(event, preserving_proto_field_name=True,
                    # indent=None) prints.
                    print(json.dumps(to_dict(event), ensure_ascii=False))
                else:
                    print(event_line(event))
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    return 0


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def stats_rows(snapshot: pb.UsageSnapshot) -> list[list[str]]:
    rows = []
    for c in sorted(snapshot.containers, key=lambda c: c.name):
        limit = human_size(c.memory_limit_bytes) if c.memory_limit_bytes else "unlimited"
        mem_pct = (_percent(c.memory_working_set_bytes / c.memory_limit_bytes) if c.memory_limit_bytes
                   else "")
        rows.append([
            c.id[:12], c.name, _percent(c.cpu_cores),
            f"{human_size(c.memory_working_set_bytes)} / {limit}", mem_pct,
            f"{human_size(c.network_rx_bytes)} / {human_size(c.network_tx_bytes)}", str(c.pids),
        ])
    return rows


_STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "PIDS"]


def _rich_table(rows: Iterable[list[str]]) -> Table:
    from rich.table import Table

    t = Table(box=None, header_style="bold")
    for h in _STATS_HEADERS:
        t.add_column(h)
    for row in rows:
        t.add_row(*row)
    return t


def cmd_stats(agent: Agent, args: argparse.Namespace) -> int:
    stream = agent.host.WatchUsage(pb.WatchUsageRequest(labels=_labels(args.filter)))
    try:
        with rpc_errors(agent.address):
            if args.no_stream:
                print(table(_STATS_HEADERS, stats_rows(next(iter(stream)))))
                stream.cancel()
                return 0
            from rich.console import Console
            from rich.live import Live

            console = Console()
            with Live(_rich_table([]), console=console, auto_refresh=False) as live:
                for snapshot in stream:
                    live.update(_rich_table(stats_rows(snapshot)), refresh=True)
    except KeyboardInterrupt:
        stream.cancel()
        return 130
    return 0


def cmd_host(agent: Agent, args: argparse.Namespace) -> int:
    import json

    from agent.protolite import to_dict

    with rpc_errors(agent.address):
        host = agent.host.GetHost(pb.GetHostRequest())
    if args.json:
        # What json_format.MessageToJson(host, preserving_proto_field_name=True) prints.
        print(json.dumps(to_dict(host), indent=2, ensure_ascii=False))
        return 0
    labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
    conditions = ", ".join(f"{c.type} ({c.message})" for c in host.conditions) or "none"
    rows = [
        ["host id", host.host_id], ["hostname", host.hostname], ["agent version", host.agent_version],
        ["platform", f"{host.os}/{host.architecture}"], ["boot id", host.boot_id],
        ["labels", labels], ["conditions", conditions],
        ["cpu cores", f"{host.cpu_cores} ({host.cpu_allocatable_millis / 1000:.2f} allocatable)"],
        ["cpu used", f"{host.cpu_used_cores:.2f} cores"],
        ["cpu committed", f"{host.cpu_committed_millis / 1000:.2f} cores requested, "
                          f"{host.cpu_limits_millis / 1000:.2f} cores of limits"],
        ["memory total", human_size(host.memory_total_bytes)],
        ["memory allocatable", human_size(host.memory_allocatable_bytes)],
        ["memory used", human_size(host.memory_used_bytes)],
        ["memory committed", f"{human_size(host.memory_committed_bytes)} requested, "
                             f"{human_size(host.memory_limits_bytes)} of limits"],
        ["disk", f"{human_size(host.disk_free_bytes)} free of {human_size(host.disk_total_bytes)}"],
        ["storage limits", f"{host.storage_limit_enforcement or '-'} ({host.storage_limit_detail or '-'})"],
        ["containers", f"{host.containers} ({host.containers_running} running)"],
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return 0
