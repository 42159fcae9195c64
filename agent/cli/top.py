"""``shoal top``: the cluster as a live view — hosts, services and where their replicas run, redrawn in
place every ``--delay`` seconds (``kubectl top`` + ``nomad status`` + ``docker stats`` in one screen).

Two halves, kept apart so the view can be tested and embedded (the demo imports both):

* ``take_snapshot(scheduler)`` reads the scheduler — its instances (who leads), hosts, services,
  replicas, and for autoscaled services the autoscaler's last recorded decision — into a ``TopSnapshot``
  of plain frozen values. It never raises for a scheduler that cannot be read: the snapshot carries
  ``error`` instead, and ``with_last_known`` keeps the previous answer on screen beside it, so a leader
  killed mid-failover is a line in the frame, not the end of ``top``.
* ``render(snapshot)`` is pure: a snapshot in, a rich renderable out (times shown relative to the
  snapshot's own ``taken_at``, so the same snapshot always draws the same frame).

``cmd_top`` drives them: on a terminal without ``-n``, a full-screen ``rich.live.Live`` redrawn until
Ctrl-C (exit 0); otherwise ``-n N`` frames (or frames until interrupted) printed one after another as
``top -b`` does, plain text with no ANSI codes when the output is not a terminal. In that batch mode a
first frame that cannot be read is the usual cluster-verb error (exit 69 when no scheduler answered).
The parser lives in ``cluster.py``: this module imports rich and dataclasses, which the other cluster
verbs must not pay for.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from agent.cli import cluster_output as out
from agent.cli.scheduler_client import UNREACHABLE, Scheduler, is_unreachable, scheduler_errors
from agent.cli.transport import RpcFailure
from agent.protolite import Timestamp
from proto.scheduler.v1 import scheduler_lite as spb

BATCH_WIDTH = 100  # columns of a frame written to a pipe or file when $COLUMNS does not say
# Seconds a call of a look may wait for its answer before the next scheduler address is tried: a scheduler
# that accepts connections but does not answer (a process still starting, or frozen) must not freeze top.
CALL_TIMEOUT = 5.0


# -- the snapshot: plain values ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostView:
    id: str
    name: str
    state: str                          # ready, not_ready, cordoned, draining, drained
    labels: tuple[tuple[str, str], ...]  # sorted by key
    replicas: int                       # as the scheduler counts them (every service)
    cpu_committed_millis: int           # requests the host holds or is promised (see host_view)
    cpu_allocatable_millis: int
    memory_committed_bytes: int
    memory_allocatable_bytes: int
    conditions: tuple[str, ...] = ()    # what makes placement avoid it (MemoryPressure, StartFailing...)
    reason: str = ""                    # why it is not ready

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


@dataclass(frozen=True)
class MetricView:
    """One autoscale metric as the last recorded decision saw it: ``current`` against ``target``."""

    kind: str     # cpu, memory, replica_average, value, average_value
    name: str     # cpu, memory, or the PromQL query
    current: str  # "182%", "15", "" when there was no value
    target: str   # "60%", "10"
    error: str = ""


@dataclass(frozen=True)
class DecisionView:
    at: float          # seconds since the epoch
    current: int
    desired: int
    reason: str
    error: str = ""    # why no count could be decided (the count stayed)


@dataclass(frozen=True)
class AutoscaleView:
    min_replicas: int
    max_replicas: int
    targets: str                          # the policy's metrics and targets: "cpu 60%"
    metrics: tuple[MetricView, ...] = ()  # as of ``decision`` (empty: not known)
    decision: DecisionView | None = None  # the last recorded one; None: none yet


@dataclass(frozen=True)
class ServiceView:
    name: str
    desired: int
    replicas: int      # that exist, in any state
    running: int
    ready: int
    pending: int
    updated: int       # on the current template
    failed: int = 0
    deleting: bool = False
    message: str = ""
    autoscale: AutoscaleView | None = None


@dataclass(frozen=True)
class ReplicaView:
    id: str
    service: str
    state: str         # pending, starting, running, failed, stopping
    ready: bool
    host: str = ""     # host id; empty while pending
    host_name: str = ""


@dataclass(frozen=True)
class TopSnapshot:
    """What one look at the scheduler saw. ``error`` set: it could not be read at ``taken_at``; the data,
    if any, is then an earlier answer's (read at ``data_at``)."""

    taken_at: float                       # when this look was made (seconds since the epoch)
    data_at: float | None = None          # when the data below was read; None: no data
    scheduler: str = ""                   # the address that answered
    leader: str = ""                      # the leading instance's id; empty: none right now
    leader_epoch: int = 0
    instances: tuple[str, ...] = ()       # every scheduler instance's id
    hosts: tuple[HostView, ...] = ()      # sorted by name
    services: tuple[ServiceView, ...] = ()  # sorted by name
    replicas: tuple[ReplicaView, ...] = ()  # sorted by service, then id
    missing: tuple[str, ...] = ()         # services asked for (--service) that do not exist
    error: str = ""


def with_last_known(snapshot: TopSnapshot, last: TopSnapshot | None) -> TopSnapshot:
    """A failed look keeps showing the last answer (marked with its time) rather than an empty screen."""
    if not snapshot.error or last is None or last.data_at is None:
        return snapshot
    return dataclasses.replace(last, taken_at=snapshot.taken_at, error=snapshot.error)


# -- reading the scheduler -----------------------------------------------------------------------------------

def take_snapshot(scheduler: Scheduler, *, services: Sequence[str] = ()) -> TopSnapshot:
    """The cluster as the scheduler sees it now; for a scheduler that cannot be read (no address answers,
    or the one that does has no etcd), a snapshot with ``error`` and no data. Each call waits as long as
    the connection lets it: ``connect_scheduler(..., timeout=CALL_TIMEOUT)`` makes one that accepts but
    never answers count as unreachable (``cmd_top`` does so)."""
    now = time.time()
    try:
        return read_snapshot(scheduler, services=services, now=now)
    except RpcFailure as err:
        return TopSnapshot(taken_at=now, error=failure_text(err, scheduler))


def failure_text(err: RpcFailure, scheduler: Scheduler) -> str:
    """For the frame: every address tried and why it failed, or the answering scheduler's own message
    (the hints of ``describe_failure`` are for a command that ends, not for a frame that retries)."""
    if is_unreachable(err):
        where = err.message if UNREACHABLE in err.metadata else \
            f"{scheduler.conn.address} ({err.message or err.code})"
        return f"scheduler unreachable: {where}"
    return f"scheduler error: {err.message or err.code}"


def read_snapshot(scheduler: Scheduler, *, services: Sequence[str] = (), now: float | None = None
                  ) -> TopSnapshot:
    """``take_snapshot``, raising the ``RpcFailure`` that stopped it (for a caller that reports it as the
    other cluster verbs do)."""
    api = scheduler.api
    taken = time.time() if now is None else now
    instances = api.ListSchedulers(spb.ListSchedulersRequest())
    hosts = api.ListHosts(spb.ListHostsRequest()).hosts
    listed = api.ListServices(spb.ListServicesRequest()).services
    replicas = api.ListReplicas(spb.ListReplicasRequest()).replicas
    requested = requests_by_host(listed, replicas)  # every service's, whatever --service shows
    wanted = set(services)
    if wanted:
        listed = [s for s in listed if s.spec.name in wanted]
        replicas = [r for r in replicas if r.service in wanted]
    running: dict[str, int] = {}
    for r in replicas:
        if r.state == spb.REPLICA_STATE_RUNNING:
            running[r.service] = running.get(r.service, 0) + 1
    views = [service_view(s, running=running.get(s.spec.name, 0),
                          autoscale=_autoscale(scheduler, s) if s.spec.HasField("autoscale") else None)
             for s in listed]
    found = {s.spec.name for s in listed}
    return TopSnapshot(
        taken_at=taken, data_at=taken, scheduler=scheduler.conn.address,
        leader=instances.leader, leader_epoch=instances.leader_epoch,
        instances=tuple(i.id for i in instances.schedulers),
        hosts=tuple(sorted((host_view(h, requested=requested.get(h.id)) for h in hosts),
                           key=lambda h: (h.name, h.id))),
        services=tuple(sorted(views, key=lambda s: s.name)),
        replicas=tuple(sorted((replica_view(r) for r in replicas), key=lambda r: (r.service, r.id))),
        missing=tuple(name for name in dict.fromkeys(services) if name not in found))


class Requested:
    """The requests of the replicas the scheduler put on one host: ``counted`` (running: in the agent's
    committed figure, or soon) and ``placed`` (starting, or failed and about to be tried again there:
    not in it yet)."""

    def __init__(self) -> None:
        self.counted_cpu = self.counted_memory = self.placed_cpu = self.placed_memory = 0


def requests_by_host(services: Sequence[spb.Service], replicas: Sequence[spb.Replica]
                     ) -> dict[str, Requested]:
    """Host id → the requests of its replicas (a replica's request is its service's current template's;
    a request left 0 is its limit, as the agent counts it). Stopping and pending replicas hold none."""
    each: dict[str, tuple[int, int]] = {}
    for service in services:
        res = service.spec.template.resources
        each[service.spec.name] = (res.cpu_request_millis or res.cpu_millis,
                                   res.memory_request_bytes or res.memory_bytes)
    found: dict[str, Requested] = {}
    for r in replicas:
        if not r.host or r.service not in each or r.state in (spb.REPLICA_STATE_STOPPING,
                                                               spb.REPLICA_STATE_PENDING):
            continue
        cpu, memory = each[r.service]
        here = found.setdefault(r.host, Requested())
        if r.state == spb.REPLICA_STATE_RUNNING:
            here.counted_cpu += cpu
            here.counted_memory += memory
        else:
            here.placed_cpu += cpu
            here.placed_memory += memory
    return found


def host_view(host: spb.Host, *, requested: Requested | None = None) -> HostView:
    """The host with its requests as placement counts them (``scheduler/placement/view.py``): the
    agent's committed figure — which comes with its registration and may lag by a minute — but at least
    what its running replicas request, plus what the replicas placed there and not started yet request."""
    info = host.info
    r = requested or Requested()
    return HostView(
        id=host.id, name=host.name or host.id, state=out.host_state(host.state),
        labels=tuple(sorted(host.labels.items())), replicas=host.replicas,
        cpu_committed_millis=max(info.cpu_committed_millis, r.counted_cpu) + r.placed_cpu,
        cpu_allocatable_millis=info.cpu_allocatable_millis,
        memory_committed_bytes=max(info.memory_committed_bytes, r.counted_memory) + r.placed_memory,
        memory_allocatable_bytes=info.memory_allocatable_bytes,
        conditions=tuple(out.host_conditions(host)), reason=host.reason)


def service_view(service: spb.Service, *, running: int, autoscale: AutoscaleView | None = None
                 ) -> ServiceView:
    status = service.status
    return ServiceView(
        name=service.spec.name, desired=service.spec.replicas, replicas=status.replicas, running=running,
        ready=status.ready, pending=status.pending, updated=status.updated, failed=status.failed,
        deleting=service.deleting, message=status.message, autoscale=autoscale)


def replica_view(replica: spb.Replica) -> ReplicaView:
    return ReplicaView(id=replica.id, service=replica.service, state=out.replica_state(replica.state),
                       ready=replica.ready, host=replica.host, host_name=replica.host_name)


def _seconds(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


# The figures of a recorded decision, by (service, decision time): the scheduler replays a decision's
# input (its own rules, no state touched) once, not on every frame. Bounded: cleared when it grows.
_FIGURES: dict[tuple[str, int], tuple[MetricView, ...]] = {}
_FIGURES_KEPT = 256


def _autoscale(scheduler: Scheduler, service: spb.Service) -> AutoscaleView:
    """The policy, and the autoscaler's last decision with each metric's value against its target. A
    service deleted meanwhile, or a scheduler that cannot replay, leaves out what it could not give."""
    policy = service.spec.autoscale
    view = AutoscaleView(min_replicas=out.autoscale_min(policy), max_replicas=policy.max_replicas,
                         targets=out.targets_text(policy))
    try:
        status = scheduler.api.GetAutoscaleStatus(spb.GetServiceRequest(name=service.spec.name))
    except RpcFailure as err:
        if is_unreachable(err):
            raise
        return view
    if not status.decisions:
        return view
    last = status.decisions[-1]
    decision = DecisionView(at=_seconds(last.time), current=last.current_replicas,
                            desired=last.desired_replicas, reason=last.reason, error=last.error)
    key = (service.spec.name, last.time.ToNanoseconds())
    metrics = _FIGURES.get(key)
    if metrics is None and last.input_json:
        try:
            reply = scheduler.api.ReplayAutoscale(spb.ReplayAutoscaleRequest(input_json=last.input_json))
        except RpcFailure as err:
            if is_unreachable(err):
                raise
            reply = None  # an older scheduler, or an input its rules now refuse: no figures
        metrics = metric_views(reply.output_json) if reply is not None else ()
        if len(_FIGURES) >= _FIGURES_KEPT:
            _FIGURES.clear()
        _FIGURES[key] = metrics
    return dataclasses.replace(view, metrics=metrics or (), decision=decision)


def metric_views(output_json: str) -> tuple[MetricView, ...]:
    """Each metric's value and target from a replayed decision (docs/autoscaling.md, "The output")."""
    import json

    try:
        document = json.loads(output_json)
    except ValueError:
        return ()
    metrics = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(metrics, list):
        return ()
    return tuple(_metric_view(m) for m in metrics if isinstance(m, dict))


def _metric_view(m: Mapping[str, Any]) -> MetricView:
    kind = str(m.get("type") or "?")

    def milli(key: str) -> str:
        value = m.get(key)
        return out.milli_text(value) if isinstance(value, int) else ""

    if kind in ("cpu", "memory"):
        used, target = m.get("utilization_percent"), m.get("target_utilization_percent")
        current = f"{used}%" if isinstance(used, int) else ""
        goal = f"{target}%" if isinstance(target, int) else "?"
    elif kind == "value":
        current, goal = milli("value_milli"), milli("target_milli")
    else:  # replica_average, average_value: the average per replica
        current, goal = milli("average_milli"), milli("target_average_milli")
    return MetricView(kind=kind, name=str(m.get("name") or kind), current=current, target=goal or "?",
                      error=str(m.get("error") or ""))


# -- rendering: snapshot → renderable (pure) -----------------------------------------------------------------

# A replica as one character: its state, and for a running one whether it is ready.
GLYPHS = {"running": ("●", "green"), "unready": ("◐", "yellow"), "starting": ("◔", "cyan"),
          "pending": ("○", "bright_black"), "failed": ("✗", "red"), "stopping": ("◌", "magenta")}
LEGEND_ORDER = ("running", "unready", "starting", "pending", "failed", "stopping")
LEGEND_WORDS = {"running": "running", "unready": "not ready", "starting": "starting", "pending": "pending",
                "failed": "failed", "stopping": "stopping"}
HOST_STYLES = {"ready": "", "not_ready": "bold red", "cordoned": "yellow", "draining": "yellow",
               "drained": "yellow"}
REPLICA_COUNT_STYLES = {"starting": "cyan", "pending": "bold yellow", "failed": "bold red",
                        "stopping": "magenta"}
UNPLACED = "(unplaced)"
NAME_SHOWN = 16   # characters of a PromQL query shown as a metric's name
ID_SHOWN = 8      # characters of a host id shown after a name that several hosts share
FULL_WIDTH = 100  # from this many columns every column has its own place; below, the compact layout


def render(snapshot: TopSnapshot) -> RenderableType:
    """The frame for ``snapshot``: a header, an error line when the scheduler could not be read, then
    hosts, services, and the replicas on each host. It lays itself out for the width it is drawn at:
    narrower than ``FULL_WIDTH``, headers are shorter and the autoscaler's figures share one column."""
    return Frame(snapshot)


class Frame:
    """``render``'s renderable: the layout is chosen when rich asks for lines at a given width."""

    def __init__(self, snapshot: TopSnapshot) -> None:
        self.snapshot = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield frame(self.snapshot, compact=options.max_width < FULL_WIDTH)


def frame(s: TopSnapshot, *, compact: bool = False) -> Group:
    parts: list[RenderableType] = [*_header(s)]
    if s.error:
        line = Text(f"{s.error}, retrying", style="bold red")
        if s.data_at is not None:
            line.append(f" (showing its last answer, from {_clock(s.data_at)})", style="red")
        parts.append(line)
    if s.data_at is None:
        parts.append(Text("no answer from the scheduler yet", style="dim"))
        return Group(*parts)
    parts += [Text(""), _title(f"HOSTS ({len(s.hosts)})"), _hosts_table(s, compact=compact),
              Text(""), _title(f"SERVICES ({len(s.services)})"), _services_table(s, compact=compact)]
    if s.missing:
        parts.append(Text(f"no such service: {', '.join(s.missing)}", style="yellow"))
    parts += [Text(""), _title("REPLICAS BY HOST"), _placement_table(s), _legend()]
    return Group(*parts)


def host_labels(hosts: Sequence[HostView]) -> dict[str, str]:
    """Host id → what the frame calls it: its name, with the start of its id when another host has the same
    name (hosts in network namespaces of one machine share its hostname)."""
    seen: dict[str, int] = {}
    for h in hosts:
        seen[h.name] = seen.get(h.name, 0) + 1
    return {h.id: f"{h.name} ({h.id[:ID_SHOWN]})" if seen[h.name] > 1 else h.name for h in hosts}


def _title(text: str) -> Text:
    return Text(text, style="bold underline")


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _ago(when: float, now: float) -> str:
    return out.age(Timestamp(seconds=int(when), nanos=int(when % 1 * 1e9)), now=now)


def _header(s: TopSnapshot) -> list[Text]:
    """Two lines: when and who leads (and which address answered), then the counts."""
    who = Text()
    who.append(_clock(s.taken_at), style="bold")
    who.append("  ")
    if s.data_at is None:
        who.append("leader unknown", style="dim")
        return [who]
    count = len(s.instances)
    if s.leader:
        who.append("leader ")
        who.append(s.leader, style="bold")
        who.append(f" (epoch {s.leader_epoch})")
    else:
        who.append("no leader (election in progress)", style="bold yellow")
    who.append(f" of {count} scheduler {'instance' if count == 1 else 'instances'}")
    if s.scheduler:
        who.append(f"  via {s.scheduler}", style="dim")
    counts = Text()
    ready = sum(h.state == "ready" for h in s.hosts)
    counts.append("hosts ")
    counts.append(f"{ready}/{len(s.hosts)} ready", style="" if ready == len(s.hosts) else "bold red")
    counts.append(f"   services {len(s.services)}")
    by_state: dict[str, int] = {}
    for r in s.replicas:
        by_state[r.state] = by_state.get(r.state, 0) + 1
    counts.append(f"   replicas {by_state.get('running', 0)} running")
    for state, style in REPLICA_COUNT_STYLES.items():  # pending always; the others when there are some
        n = by_state.get(state, 0)
        if n or state == "pending":
            counts.append(", ")
            counts.append(f"{n} {state}", style=style if n else "")
    counts.append(f", {len(s.replicas)} total")
    return [who, counts]


def _table(*, expand: bool = False) -> Table:
    """``expand``: as wide as the frame, a column with a ``ratio`` taking what the others leave."""
    return Table(box=None, pad_edge=False, header_style="bold", show_edge=False, expand=expand)


def _share(used: int, total: int, show: Any, *, percent: bool) -> Text:
    """``0.5/2 25%``: committed of allocatable; the share highlighted from 90 %."""
    share = used * 100 // total if total else 0
    high = "bold yellow" if share >= 90 else ""
    text = Text(f"{show(used)}/{show(total)}", style=high if not percent else "")
    if total and percent:
        text.append(f" {share}%", style=high or "dim")
    return text


def _hosts_table(s: TopSnapshot, *, compact: bool) -> Table:
    zoned = any(h.label("zone") for h in s.hosts)
    labels = host_labels(s.hosts)
    table = _table(expand=True)
    table.add_column("NAME", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("ZONE" if zoned else "LABELS", no_wrap=zoned, overflow="fold")
    table.add_column("REPL", justify="right", no_wrap=True)
    table.add_column("CPU" if compact else "CPU REQ/ALLOC", no_wrap=True)
    table.add_column("MEM" if compact else "MEM REQ/ALLOC", no_wrap=True)
    # One line per host, as in top: the whole reason is in ``shoal describe host``.
    table.add_column("CONDITIONS", no_wrap=True, overflow="ellipsis", min_width=10, ratio=1)
    if not s.hosts:
        table.add_row(Text("none joined", style="dim"), "", "", "", "", "", "")
    for h in s.hosts:
        style = HOST_STYLES.get(h.state, "bold red")
        where = h.label("zone") if zoned else out.labels_text(dict(h.labels))
        conditions = ", ".join(h.conditions)
        if h.reason:
            conditions = f"{conditions}: {h.reason}" if conditions else h.reason
        table.add_row(Text(labels[h.id], style=style), Text(h.state, style=style), Text(where or "-"),
                      Text(str(h.replicas)),
                      _share(h.cpu_committed_millis, h.cpu_allocatable_millis, out.cpus_text,
                             percent=not compact),
                      _share(h.memory_committed_bytes, h.memory_allocatable_bytes, out.size_text,
                             percent=not compact),
                      Text(conditions or "-", style=style if conditions else "dim"))
    return table


def _metric_text(m: MetricView) -> str:
    name = m.name
    if m.kind not in ("cpu", "memory") and len(name) > NAME_SHOWN:
        name = name[:NAME_SHOWN - 1] + "…"
    if m.error or not m.current:
        return f"{name} ?/{m.target}"
    return f"{name} {m.current}/{m.target}"


def _decision_text(d: DecisionView | None, now: float) -> Text:
    """``3→5, 12s ago``; ``kept 4, 3s ago``; ``kept 2, 1m ago: <why no count could be decided>``."""
    if d is None:
        return Text("none yet", style="dim")
    when = f"{_ago(d.at, now)} ago"
    if d.error:
        return Text(f"kept {d.current}, {when}: {d.error}", style="yellow")
    if d.desired != d.current:
        return Text(f"{d.current}→{d.desired}, {when}", style="bold")
    return Text(f"kept {d.current}, {when}")


def _services_table(s: TopSnapshot, *, compact: bool) -> Table:
    now = s.taken_at
    table = _table(expand=not compact)
    table.add_column("NAME", no_wrap=True)
    counts = ("DES", "RUN", "RDY", "PEND", "UPD") if compact else \
        ("DESIRED", "RUNNING", "READY", "PENDING", "UPDATED")
    for header in counts:
        table.add_column(header, justify="right", no_wrap=True)
    if compact:  # range, figures and decision in one column that wraps
        table.add_column("AUTOSCALE", overflow="fold", min_width=12)
    else:
        table.add_column("AUTOSCALE", no_wrap=True)
        table.add_column("METRIC NOW/TARGET", overflow="fold")
        table.add_column("LAST DECISION", no_wrap=True, overflow="ellipsis", min_width=12, ratio=1)
    if not s.services:
        table.add_row(Text("none", style="dim"), *[""] * (6 if compact else 8))
    for v in s.services:
        name = Text(v.name + (" (deleting)" if v.deleting else ""), style="yellow" if v.deleting else "")
        cells = [name, Text(str(v.desired)), Text(str(v.running)),
                 Text(str(v.ready), style="yellow" if v.ready < v.desired else "green"),
                 Text(str(v.pending), style="bold yellow" if v.pending else ""),
                 Text(str(v.updated), style="yellow" if v.updated < v.replicas else "")]
        a = v.autoscale
        if a is None:
            dash = Text("-", style="dim")
            cells += [dash] if compact else [dash, dash, Text(v.message or "-", style="dim")]
            table.add_row(*cells)
            continue
        scale = Text(f"{a.min_replicas}{out.EN_DASH}{a.max_replicas}")
        metrics = Text(", ".join(_metric_text(m) for m in a.metrics) or a.targets)
        decision = _decision_text(a.decision, now)
        if compact:
            cells.append(Text.assemble(scale, "  ", metrics, "  ", decision))
        else:
            cells += [scale, metrics, decision]
        table.add_row(*cells)
    return table


def _glyph(r: ReplicaView) -> Text:
    key = "unready" if r.state == "running" and not r.ready else r.state
    glyph, style = GLYPHS.get(key, ("?", "red"))
    return Text(glyph, style=style)


def _placement_table(s: TopSnapshot) -> Table:
    """Every host (in the hosts table's order), then the unplaced: each service's replicas there as
    glyphs, so a replica that moves is seen leaving one row and arriving in another."""
    rows: dict[str, list[ReplicaView]] = {h.id: [] for h in s.hosts}
    names = host_labels(s.hosts)
    for r in s.replicas:
        if not r.host:
            rows.setdefault(UNPLACED, []).append(r)
        else:
            rows.setdefault(r.host, []).append(r)
            names.setdefault(r.host, r.host_name or r.host)  # a host the listing no longer has
    names[UNPLACED] = UNPLACED
    table = _table()
    table.add_column("HOST", no_wrap=True)
    table.add_column("REPLICAS", overflow="fold")
    if not any(rows.values()):
        table.add_row(Text("-", style="dim"), Text("no replicas", style="dim"))
    states = {h.id: h.state for h in s.hosts}
    for key, replicas in rows.items():
        line = Text()
        by_service: dict[str, list[ReplicaView]] = {}
        for r in replicas:
            by_service.setdefault(r.service, []).append(r)
        for service, group in by_service.items():
            if line:
                line.append("  ")
            line.append(f"{service} ")
            for r in group:
                line.append_text(_glyph(r))
        style = HOST_STYLES.get(states.get(key, "ready"), "")
        table.add_row(Text(names[key], style=style if key != UNPLACED else "dim"), line or Text("-", "dim"))
    return table


def _legend() -> Text:
    text = Text("")
    for key in LEGEND_ORDER:
        glyph, style = GLYPHS[key]
        if text:
            text.append("  ")
        text.append(glyph, style=style)
        text.append(f" {LEGEND_WORDS[key]}", style="dim")
    return text


# -- the command ---------------------------------------------------------------------------------------------

def batch_console(*, terminal: bool, columns: str | None = None) -> Console:
    """Where batch frames go: colours on a terminal, none (and no cursor moves) in a pipe or file, whose
    width is $COLUMNS or ``BATCH_WIDTH``."""
    if terminal:
        return Console(highlight=False)
    width = int(columns) if columns and columns.isdigit() and int(columns) > 0 else BATCH_WIDTH
    return Console(file=sys.stdout, width=width, color_system=None, force_terminal=False,
                   force_interactive=False, highlight=False, emoji=False, soft_wrap=False)


class _Ticker:
    """Frame times every ``delay`` seconds from the start (a slow frame does not push the others)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.next = time.monotonic()

    def wait(self) -> None:
        self.next += self.delay
        pause = self.next - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            self.next = time.monotonic()  # behind: start again from now rather than rush


def cmd_top(scheduler: Scheduler, args: argparse.Namespace) -> int:
    services = tuple(args.service or ())
    if scheduler.conn.timeout is None:  # read when the first call makes a transport: none yet
        scheduler.conn.timeout = CALL_TIMEOUT
    terminal = sys.stdout.isatty()
    try:
        if args.iterations is None and terminal:
            return _live(scheduler, services=services, delay=args.delay)
        return _batch(scheduler, services=services, delay=args.delay, frames=args.iterations,
                      terminal=terminal)
    except KeyboardInterrupt:
        return 0


def _batch(scheduler: Scheduler, *, services: tuple[str, ...], delay: float, frames: int | None,
           terminal: bool) -> int:
    import os

    console = batch_console(terminal=terminal, columns=os.environ.get("COLUMNS"))
    ticker = _Ticker(delay)
    with scheduler_errors(scheduler.conn):  # the first look failing is the usual error
        last = read_snapshot(scheduler, services=services)
    print_frame(console, last, plain=not terminal)
    shown = 1
    while frames is None or shown < frames:
        ticker.wait()
        snapshot = with_last_known(take_snapshot(scheduler, services=services), last)
        if not snapshot.error:
            last = snapshot
        sys.stdout.write("\n")
        print_frame(console, snapshot, plain=not terminal)
        shown += 1
    return 0


def print_frame(console: Console, snapshot: TopSnapshot, *, plain: bool) -> None:
    """One frame after the last; plain (a pipe, a file) without the spaces that pad table cells."""
    if plain:
        with console.capture() as captured:
            console.print(render(snapshot))
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    else:
        console.print(render(snapshot))
    sys.stdout.flush()


def _live(scheduler: Scheduler, *, services: tuple[str, ...], delay: float) -> int:
    from rich.live import Live

    ticker = _Ticker(delay)
    last: TopSnapshot | None = None
    with Live(console=Console(highlight=False), screen=True, auto_refresh=False) as live:
        while True:
            snapshot = with_last_known(take_snapshot(scheduler, services=services), last)
            if not snapshot.error:
                last = snapshot
            live.update(render(snapshot), refresh=True)
            ticker.wait()


__all__ = ["CALL_TIMEOUT", "AutoscaleView", "DecisionView", "Frame", "HostView", "MetricView", "ReplicaView",
           "Requested", "ServiceView", "TopSnapshot", "batch_console", "cmd_top", "failure_text", "frame",
           "host_labels", "host_view", "metric_views", "print_frame", "read_snapshot", "render",
           "replica_view", "requests_by_host", "service_view", "take_snapshot", "with_last_known"]
