"""``shoal describe service|host|replica|scheduler|hostgroup NAME`` and ``shoal explain replica ID``: one
object in detail, for a person: its spec and status, what runs where, and the scheduler's reasons (why a
replica is pending, why it went to its host, what was done to it and why); for a scheduler instance, its
addresses and whether it leads; for a host group, its limits and provider in words, its member hosts
with their use, the requests made to the provider with their delivery, drains, and the elastic loop's
decisions with their reasons."""

from __future__ import annotations

import argparse
import sys

from agent.cli import cluster_get
from agent.cli import cluster_output as out
from agent.cli.client import CliError
from agent.cli.output import table
from agent.cli.scheduler_client import Scheduler, scheduler_errors
from agent.cli.transport import RpcFailure
from agent.protolite import Timestamp
from proto.agent.v1 import agent_lite as apb
from proto.scheduler.v1 import scheduler_lite as spb

KINDS = {"service": "service", "services": "service", "svc": "service", "host": "host", "hosts": "host",
         "node": "host", "replica": "replica", "replicas": "replica", "scheduler": "scheduler",
         "schedulers": "scheduler", "hostgroup": "hostgroup", "hostgroups": "hostgroup", "hg": "hostgroup"}


def fields(rows: list[tuple[str, str]]) -> str:
    """``Key:   value`` lines, aligned (kubectl describe's layout); an empty key continues the one above."""
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{(k + ':' if k else '').ljust(width)}{v}".rstrip() for k, v in rows)


def indented(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())


def _when(ts: Timestamp) -> str:
    stamp = out.timestamp(ts)
    return f"{stamp} ({out.age(ts)} ago)" if stamp else "-"


# -- services ------------------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    return f"{seconds:g}s" if seconds < 60 or seconds % 60 else f"{seconds / 60:g}m"


def health_text(check: apb.HealthCheck) -> str:
    probe = check.WhichOneof("probe")
    if probe == "http":
        what = f"http GET :{check.http.port}{check.http.path or '/'}"
    elif probe == "tcp":
        what = f"tcp :{check.tcp.port}"
    elif probe == "exec":
        import shlex

        what = f"exec {shlex.join(check.exec.command)}"
    else:
        return "none"
    text = (f"{what}, every {_duration(check.interval_seconds or 30)}, timeout "
            f"{_duration(check.timeout_seconds or 30)}, unhealthy after {check.retries or 3} failures")
    if check.start_period_seconds:
        text += f", start period {_duration(check.start_period_seconds)}"
    return text + (", restart when unhealthy" if check.restart_on_unhealthy else "")


_RESTART = {apb.RESTART_MODE_NO: "no", apb.RESTART_MODE_ON_FAILURE: "on-failure",
            apb.RESTART_MODE_ALWAYS: "always"}
_NETWORK = {apb.NETWORK_MODE_UNSPECIFIED: "the host's default", apb.NETWORK_MODE_NONE: "none",
            apb.NETWORK_MODE_HOST: "host", apb.NETWORK_MODE_BRIDGE: "bridge"}


def resources_text(res: apb.Resources) -> str:
    parts = []
    if res.cpu_millis or res.cpu_request_millis:
        cpu = f"cpus {out.cpus_text(res.cpu_millis)}" if res.cpu_millis else "cpus unlimited"
        parts.append(cpu + (f" (request {out.cpus_text(res.cpu_request_millis)})" if res.cpu_request_millis
                            else ""))
    if res.memory_bytes or res.memory_request_bytes:
        memory = f"memory {out.size_text(res.memory_bytes)}" if res.memory_bytes else "memory unlimited"
        parts.append(memory + (f" (request {out.size_text(res.memory_request_bytes)})"
                               if res.memory_request_bytes else ""))
    if res.pids_max:
        parts.append(f"pids {res.pids_max}")
    return ", ".join(parts) or "unlimited"


def service_text(service: spb.Service, replicas: list[spb.Replica], rollout: spb.Rollout | None,
                 decisions: list[spb.AutoscaleDecision] | None = None) -> str:
    import shlex

    spec, status, template = service.spec, service.status, service.spec.template
    placement = spec.placement
    ports = ", ".join(f"{p.host_port}->" * bool(p.host_port) + f"{p.container_port}/{p.protocol or 'tcp'}"
                      for p in template.ports) or "none"
    update = spec.update
    surge = (f"{update.max_surge_percent}%" if update.HasField("max_surge_percent")
             else str(update.max_surge))
    unavailable = (f"{update.max_unavailable_percent}%" if update.HasField("max_unavailable_percent")
                   else str(update.max_unavailable))
    rows = [
        ("Name", spec.name),
        ("Generation", f"{service.generation} (template generation {service.template_generation})"),
        ("Replicas", f"{spec.replicas} desired | {status.replicas} current | {status.ready} ready | "
                     f"{status.updated} up-to-date | {status.pending} pending | {status.failed} failed"),
    ]
    if status.message:
        rows.append(("Status", status.message))
    if service.deleting:
        rows.append(("Deleting", "yes: its replicas are being stopped and removed"))
    rows += [
        ("Created", _when(service.created_at)),
        ("Updated", _when(service.updated_at)),
        ("Labels", out.labels_text(dict(spec.labels))),
        ("Image", template.image),
        ("Command", shlex.join([*template.entrypoint, *template.command]) or "the image's"),
        ("Resources", resources_text(template.resources)),
        ("Ports", ports),
        ("Network", _NETWORK.get(template.network, "?")),
        ("Health check", health_text(template.health) if template.HasField("health") else "none"),
        ("Restart", _RESTART.get(template.restart.mode, "?")
         + (f":{template.restart.max_retries}" if template.restart.max_retries else "")),
        ("Strategy", placement.strategy or "spread"),
        ("Constraints", ", ".join(placement.constraints) or "none"),
        ("Topology spread", f"over {placement.topology_spread.label} (max skew "
                            f"{placement.topology_spread.max_skew or 1})"
         if placement.topology_spread.label else "none"),
        ("Update", f"max surge {surge}, max unavailable {unavailable}"),
    ]
    if spec.metrics_port:
        rows.append(("Metrics port", str(spec.metrics_port)))
    if rollout is not None:
        state = "complete" if rollout.complete else (
            f"{rollout.updated} of {rollout.desired} updated, {rollout.updated_ready} ready, "
            f"{rollout.old} old")
        rows.append(("Rollout", state + (f": {rollout.message}" if rollout.message else "")))
    text = fields(rows)
    if spec.HasField("autoscale"):
        text += "\n" + autoscale_text(spec.autoscale, replicas=spec.replicas)
        text += "\n" + decisions_text(decisions or [])
    return text + "\n" + _replica_table(replicas, with_service=False)


DECISIONS_SHOWN = 5


def decisions_text(decisions: list[spb.AutoscaleDecision]) -> str:
    """The autoscaler's latest recorded decisions, newest last (``shoal autoscale history`` has all)."""
    if not decisions:
        return "Autoscaler decisions:  none yet"
    rows = [[out.age(d.time), f"{d.current_replicas} -> {d.desired_replicas}"
             if d.desired_replicas != d.current_replicas else f"{d.current_replicas}", d.reason]
            for d in decisions[-DECISIONS_SHOWN:]]
    return "Autoscaler decisions:\n" + indented(table(["AGE", "REPLICAS", "REASON"], rows))


def autoscale_text(policy: spb.Autoscale, *, replicas: int) -> str:
    """The policy in plain words, under ``Autoscale:``: the range, each metric (with its query), the
    tolerance, and how fast each direction may go."""
    def percent(fraction: float) -> str:
        return f"{fraction * 100:g}%"

    up = policy.tolerance_up if policy.HasField("tolerance_up") else 0.1
    down = policy.tolerance_down if policy.HasField("tolerance_down") else 0.1
    behavior = policy.behavior
    rows = [("Replicas", f"{out.autoscale_range(policy)} (now {replicas})")]
    rows += [("Metrics" if i == 0 else "", _metric_words(m)) for i, m in enumerate(policy.metrics)]
    rows += [
        ("Tolerance", f"scale up above {percent(1 + up)} of target, down below {percent(1 - down)}"),
        ("Scale up", _rules_words(behavior.scale_up if behavior.HasField("scale_up") else None, "scale_up")),
        ("Scale down", _rules_words(behavior.scale_down if behavior.HasField("scale_down") else None,
                                    "scale_down")),
    ]
    return "Autoscale:\n" + indented(fields(rows))


def _metric_words(metric: spb.MetricTarget) -> str:
    if metric.kind in ("cpu", "memory"):
        return f"{metric.kind} {metric.target_utilization_percent}% of the request"
    if metric.kind != "prometheus":
        return metric.kind or "?"
    if metric.target_value_milli:
        return f"prometheus {metric.query} = {out.milli_text(metric.target_value_milli)}"
    average = out.milli_text(metric.target_average_value_milli)
    if metric.per_replica_label:
        return f"prometheus {metric.query} = {average} per replica (label {metric.per_replica_label})"
    return f"prometheus {metric.query} = {average} per replica (its value / replicas)"


# What the scheduler fills in when a direction is left out (Kubernetes' defaults); it sends them filled.
_DEFAULT_RULES = {
    "scale_up": spb.ScalingRules(stabilization_window_seconds=0, select_policy="max", policies=[
        spb.ScalingPolicy(type="replicas", value=4, period_seconds=15),
        spb.ScalingPolicy(type="percent", value=100, period_seconds=15)]),
    "scale_down": spb.ScalingRules(stabilization_window_seconds=300, select_policy="max", policies=[
        spb.ScalingPolicy(type="percent", value=100, period_seconds=15)]),
}


def _rules_words(rules: spb.ScalingRules | None, direction: str) -> str:
    """``window 300s; at most 100% per 15s``, ``no window; the larger of 4 replicas or 100% per 15s``."""
    default = _DEFAULT_RULES[direction]
    rules = rules if rules is not None else default
    window = rules.stabilization_window_seconds if rules.HasField("stabilization_window_seconds") \
        else default.stabilization_window_seconds
    select = rules.select_policy or "max"
    if select == "disabled":
        return "disabled"
    limits = [f"{p.value}{'%' if p.type == 'percent' else ' replica' if p.value == 1 else ' replicas'} per "
              f"{p.period_seconds}s" for p in (rules.policies or default.policies)]
    if len(limits) == 1:
        limit = f"at most {limits[0]}"
    else:
        limit = f"the {'larger' if select == 'max' else 'smaller'} of {' or '.join(limits)}"
    return (f"window {window}s; " if window else "no window; ") + limit


def _replica_table(replicas: list[spb.Replica], *, with_service: bool) -> str:
    if not replicas:
        return "Replicas:  none"
    headers = ["ID", *(["SERVICE"] if with_service else []), "STATE", "READY", "HOST", "RESTARTS", "AGE",
               "REASON"]
    rows = [[r.id, *([r.service] if with_service else []), out.replica_state(r.state),
             "yes" if r.ready else "no", r.host_name or r.host or "<none>", str(r.restarts),
             out.age(r.created_at), r.reason] for r in replicas]
    return "Replicas:\n" + indented(table(headers, rows))


# -- hosts ------------------------------------------------------------------------------------------------

def host_text(host: spb.Host, replicas: list[spb.Replica]) -> str:
    info = host.info
    agent_conditions = {c.type for c in info.conditions}  # the scheduler adds its own (StartFailing)
    rows = [
        ("Name", host.name), ("ID", host.id), ("Address", host.address),
        ("State", out.host_state(host.state) + (f": {host.reason}" if host.reason else "")),
        ("Labels", out.labels_text(dict(host.labels))),
        ("Metrics", host.metrics_address or "none"),
        ("Agent version", info.agent_version or "-"),
        ("Platform", f"{info.os}/{info.architecture}" if info.os else "-"),
        ("Registered", _when(host.registered_at)),
        ("Last seen", _when(host.last_seen)),
        ("CPU", f"{out.cpus_text(info.cpu_allocatable_millis)} cores allocatable, "
                f"{out.cpus_text(info.cpu_committed_millis)} requested"),
        ("Memory", f"{out.size_text(info.memory_allocatable_bytes)} allocatable, "
                   f"{out.size_text(info.memory_committed_bytes)} requested"),
        ("Disk", f"{out.size_text(info.disk_free_bytes)} free of {out.size_text(info.disk_total_bytes)}"),
        ("Conditions", ", ".join([*(f"{c.type} ({c.message})" if c.message else c.type
                                    for c in info.conditions),
                                  *(c for c in host.conditions if c not in agent_conditions)]) or "none"),
        ("Start failures", f"{host.start_failures} in a row" if host.start_failures else "none"),
    ]
    return fields(rows) + "\n" + _replica_table(replicas, with_service=True)


# -- scheduler instances -------------------------------------------------------------------------------------

def scheduler_text(instance: spb.SchedulerInstance, listing: spb.ListSchedulersResponse) -> str:
    if instance.leader:
        role = f"leader (epoch {listing.leader_epoch}, since {_when(listing.leader_since)})"
    else:
        role = f"follower (leader: {listing.leader})" if listing.leader else "follower (no leader right now)"
    rows = [
        ("ID", instance.id), ("Role", role),
        ("Addresses", ", ".join(instance.addresses) or "-"),
        ("HTTP", instance.http_address or "none"),
        ("Version", instance.version or "-"),
        ("Started", _when(instance.started_at)),
    ]
    return fields(rows)


# -- host groups --------------------------------------------------------------------------------------------

def _percent(part: int, whole: int) -> str:
    return f"{part * 100 // whole}%" if whole else "-"


def _provider_rows(spec: spb.HostGroupSpec) -> list[tuple[str, str]]:
    import shlex

    rows: list[tuple[str, str]] = []
    if spec.HasField("webhook"):
        w = spec.webhook
        extras = [f"timeout {_duration(w.timeout_seconds or 10)}"]
        if w.token_file:
            extras.append(f"bearer token from {w.token_file}")
        if w.cert_file:
            extras.append(f"client certificate {w.cert_file} (key {w.key_file})")
        if w.ca_file:
            extras.append(f"provider verified with {w.ca_file}")
        rows.append(("Provider", f"webhook POST {w.url} ({', '.join(extras)})"))
    if spec.HasField("command"):
        rows.append(("" if rows else "Provider", f"command {shlex.join(spec.command.argv)} (timeout "
                                                f"{_duration(spec.command.timeout_seconds or 60)})"))
    return rows or [("Provider", "none: the scheduler decides and records, but asks nobody")]


def _group_hosts(title: str, hosts: list[spb.GroupHost], what: str) -> str:
    if not hosts:
        return f"{title}:  none"
    rows = [[h.host_name or h.host, out.age(h.since)] for h in hosts]
    return f"{title}:\n" + indented(table(["HOST", what], rows))


def hostgroup_text(group: spb.HostGroup) -> str:
    """The group for a person: limits, shape, when it scales each way and whom it asks, then its hosts,
    requests, drains and decisions (the latest last)."""
    spec, status = group.spec, group.status
    judged = status.revision != 0
    hosts = f"{status.hosts} joined, min {spec.min_hosts}, max {spec.max_hosts}"
    if judged:
        hosts += f", desired {status.desired_hosts}"
        if status.expected_hosts:
            hosts += (f", {status.expected_hosts} asked for and expected until "
                      f"{out.timestamp(status.expected_until) or '-'}")
    rows = [
        ("Name", spec.name),
        ("Generation", str(group.generation)),
        ("Hosts", hosts),
        ("Pending", f"{status.pending_replicas} replicas pending for lack of room that this group would take"
         if judged else "not judged yet: the leader has not recorded a status for this group"),
        ("Shape", out.shape_text(spec.shape) if spec.HasField("shape")
         else "not declared: learned from the group's hosts (a group with neither cannot scale out)"),
        ("Scale out", f"when replicas pend {_duration(spec.pending_for_seconds)} for lack of room; at most "
                      f"{spec.max_per_request} hosts per request, one request per "
                      f"{_duration(spec.scale_out_cooldown_seconds)}; hosts not joined within "
                      f"{_duration(spec.provision_timeout_seconds)} are no longer expected"),
        ("Scale in", f"a host below {spec.scale_in_utilization_percent}% cpu and memory requests for "
                     f"{_duration(spec.scale_in_after_seconds)} is drained and released, not within "
                     f"{_duration(spec.scale_in_delay_after_scale_out_seconds)} of a scale-out, at most "
                     f"{spec.max_concurrent_drains} {_plural(spec.max_concurrent_drains, 'drain')} at once"
         if spec.scale_in else "disabled"),
        *_provider_rows(spec),
    ]
    if status.last_scale_out_at.seconds:
        rows.append(("Last scale-out", _when(status.last_scale_out_at)))
    rows += [("Created", _when(group.created_at)), ("Updated", _when(group.updated_at))]
    parts = [fields(rows)]
    if group.members:
        member_rows = [_member_row(m) for m in group.members]
        parts.append("Members:\n" + indented(table(
            ["NAME", "STATE", "REPLICAS", "CPU (REQ/ALLOC)", "MEMORY (REQ/ALLOC)", "SCALE-IN"], member_rows)))
    else:
        parts.append(f"Members:  none (hosts join with shoal-agent serve --label group={spec.name})")
    if status.requests:
        request_rows = [[r.id, r.kind, r.state, str(r.attempts), out.age(r.created_at), _request_what(r),
                         r.last_error or "-"] for r in status.requests]
        parts.append("Requests:\n" + indented(table(
            ["ID", "KIND", "STATE", "ATTEMPTS", "AGE", "WHAT", "LAST ERROR"], request_rows)))
    else:
        parts.append("Requests:  none")
    parts.append(_group_hosts("Drains", list(status.draining), "DRAINING FOR"))
    if status.released:
        parts.append(_group_hosts("Released", list(status.released), "RELEASED FOR"))
    if status.decisions:
        shown = status.decisions[-GROUP_DECISIONS_SHOWN:]
        decision_rows = [[out.age(d.time), d.action, d.reason] for d in shown]
        parts.append("Decisions:\n" + indented(table(["AGE", "ACTION", "REASON"], decision_rows)))
    else:
        parts.append("Decisions:  none yet")
    return "\n".join(parts)


GROUP_DECISIONS_SHOWN = 10


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def _member_row(m: spb.HostGroupMember) -> list[str]:
    cpu = (f"{out.cpus_text(m.cpu_requested_millis)}/{out.cpus_text(m.cpu_allocatable_millis)} "
           f"({_percent(m.cpu_requested_millis, m.cpu_allocatable_millis)})")
    memory = (f"{out.size_text(m.memory_requested_bytes)}/{out.size_text(m.memory_allocatable_bytes)} "
              f"({_percent(m.memory_requested_bytes, m.memory_allocatable_bytes)})")
    if m.draining_since.seconds:
        scale_in = f"draining for {out.age(m.draining_since)}"
    elif m.underused_since.seconds:
        scale_in = f"underused for {out.age(m.underused_since)}"
    else:
        scale_in = "-"
    return [m.name or m.id, out.host_state(m.state), str(m.replicas), cpu, memory, scale_in]


def _request_what(request: spb.ProviderRequest) -> str:
    if request.kind == "scale_out":
        shape = f" of {out.shape_text(request.shape)}" if request.HasField("shape") else ""
        return f"{request.count} {_plural(request.count, 'host')}{shape}"
    return "remove " + (", ".join(request.hosts) or "-")


# -- replicas and explanations ------------------------------------------------------------------------------

def replica_rows(replica: spb.Replica) -> list[tuple[str, str]]:
    return [
        ("ID", replica.id), ("Service", replica.service),
        ("Host", f"{replica.host_name} ({replica.host})" if replica.host_name else replica.host or "none"),
        ("State", out.replica_state(replica.state)), ("Ready", "yes" if replica.ready else "no"),
        ("Reason", replica.reason or "-"), ("Generation", str(replica.generation)),
        ("Restarts", str(replica.restarts)),
        ("Endpoints", ", ".join(e.address for e in replica.endpoints) or "none"),
        ("Created", _when(replica.created_at)), ("Updated", _when(replica.updated_at)),
    ]


def explanation_text(explanation: spb.Explanation) -> str:
    parts = [f"Placement:  {explanation.summary or '-'}"]
    if explanation.hosts:
        verdicts = sorted(explanation.hosts, key=lambda v: (not v.feasible, -v.score, v.host_name or v.host))
        rows = [[v.host_name or v.host, "yes" if v.feasible else "no",
                 f"{v.score:.1f}" if v.feasible else "-",
                 "; ".join(v.reasons) if v.reasons else
                 ", ".join(f"{k} {s:.1f}" for k, s in sorted(v.scores.items()))]
                for v in verdicts]
        parts.append("Hosts:\n" + indented(table(["HOST", "FITS", "SCORE", "REASONS / SCORES"], rows)))
    if explanation.decisions:
        rows = [[out.timestamp(d.time) or "-", d.action, d.reason] for d in explanation.decisions]
        parts.append("Decisions:\n" + indented(table(["TIME", "ACTION", "REASON"], rows)))
    return "\n".join(parts)


# -- the verbs -----------------------------------------------------------------------------------------------

def cmd_describe(scheduler: Scheduler, args: argparse.Namespace) -> int:
    kind = KINDS.get(args.kind)
    if kind is None:
        raise CliError(f"cannot describe {args.kind!r}: use service, host, replica, scheduler or hostgroup")
    api = scheduler.api
    with scheduler_errors(scheduler.conn):
        if kind == "service":
            service = api.GetService(spb.GetServiceRequest(name=args.name))
            replicas = api.ListReplicas(spb.ListReplicasRequest(service=service.spec.name)).replicas
            try:
                rollout: spb.Rollout | None = api.RolloutStatus(spb.GetServiceRequest(name=service.spec.name))
            except RpcFailure as err:
                if err.code != "NOT_FOUND" and err.code != "FAILED_PRECONDITION":
                    raise
                rollout = None
            decisions = (list(api.GetAutoscaleStatus(spb.GetServiceRequest(name=service.spec.name)).decisions)
                         if service.spec.HasField("autoscale") else [])
            print(service_text(service, list(replicas), rollout, decisions))
        elif kind == "hostgroup":
            print(hostgroup_text(api.GetHostGroup(spb.GetHostGroupRequest(name=args.name))))
        elif kind == "scheduler":
            instance = cluster_get.find_scheduler(scheduler, args.name)
            listing = api.ListSchedulers(spb.ListSchedulersRequest())
            print(scheduler_text(instance, listing))
        elif kind == "host":
            host = api.GetHost(spb.GetHostRequest(host=args.name))
            replicas = api.ListReplicas(spb.ListReplicasRequest(host=host.id)).replicas
            print(host_text(host, list(replicas)))
        else:
            explanation = api.Explain(spb.ExplainRequest(replica=args.name))
            print(fields(replica_rows(explanation.replica)))
            print(explanation_text(explanation))
    return 0


def cmd_explain(scheduler: Scheduler, args: argparse.Namespace) -> int:
    if KINDS.get(args.kind) != "replica":
        raise CliError(f"only replicas are explained (not {args.kind!r}): shoal explain replica ID")
    with scheduler_errors(scheduler.conn):
        explanation = scheduler.api.Explain(spb.ExplainRequest(replica=args.name))
    if args.output == "json":
        import json

        from agent.protolite import to_dict

        print(json.dumps(to_dict(explanation), indent=2, ensure_ascii=False))
        return 0
    replica = explanation.replica
    where = replica.host_name or replica.host
    print(f"replica {replica.id} of service {replica.service}: {out.replica_state(replica.state)}"
          + (f" on {where}" if where else ""))
    print(explanation_text(explanation))
    sys.stdout.flush()
    return 0


__all__ = [
    "autoscale_text", "cmd_describe", "cmd_explain", "decisions_text", "explanation_text", "fields",
    "health_text", "host_text", "hostgroup_text", "service_text",
]
