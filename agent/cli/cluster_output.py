"""What the cluster verbs print: services, replicas, hosts and endpoints as table rows (kubectl's
columns and habits) and as the JSON objects of ``-o json``.

The JSON keys are a contract scripts rely on (docs/service-file.md and the README list them): services
``name``, ``replicas`` (desired), ``ready``, ``generation``, ``autoscale`` (null, or the policy as the
service file writes it, every default filled in: ``min``, ``max``, ``metrics``, ``tolerance``,
``behavior``); replicas ``id``, ``service``, ``host``, ``state``, ``ready``, ``generation``, ``reason``;
hosts ``id``, ``name``, ``address``, ``state``, ``labels``; endpoints ``service``, ``replica``, ``host``,
``address``; scheduler instances ``id``, ``address`` (the first API address), ``leader`` (a boolean),
``started_at``; host groups ``name``, ``min``, ``max``, ``hosts`` (joined members), ``desired_hosts``,
``pending_replicas``, ``expected_hosts``, ``undelivered_requests``, ``generation``, ``shape`` (null when
learned from the hosts), ``provider`` (``webhook``: the URL or null, ``command``: the argv or null),
``members`` (``id``, ``name``, ``state``, ``replicas``). More keys may be added, none removed or renamed.
States are lowercase words (``pending``, ``not_ready``), times RFC 3339 in UTC.
"""

from __future__ import annotations

import time

from agent.protolite import Timestamp
from proto.scheduler.v1 import scheduler_lite as spb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from typing import Any

REPLICA_STATES = {v: k.removeprefix("REPLICA_STATE_").lower() for k, v in spb.ReplicaState.items()}
HOST_STATES = {v: k.removeprefix("HOST_STATE_").lower() for k, v in spb.HostState.items()}
REPLICA_STATE_VALUES = {name: value for value, name in REPLICA_STATES.items() if value}


def replica_state(value: int) -> str:
    return REPLICA_STATES.get(value, "unspecified")


def host_state(value: int) -> str:
    return HOST_STATES.get(value, "unspecified")


def timestamp(ts: Timestamp) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def age(ts: Timestamp, *, now: float | None = None) -> str:
    """kubectl's AGE: the largest unit or two (``45s``, ``5m``, ``3h12m``, ``4d``)."""
    if not ts.seconds and not ts.nanos:
        return "<unknown>"
    seconds = int(max((now if now is not None else time.time()) - ts.ToNanoseconds() / 1e9, 0))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def cpus_text(millis: int) -> str:
    return f"{millis / 1000:g}"


def size_text(size: int) -> str:
    """Binary units, like the sizes of a service file (``64Mi`` reads as 64M there)."""
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{value:.4g}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


# -- services ------------------------------------------------------------------------------------------------

def service_json(service: spb.Service) -> dict[str, Any]:
    from agent.protolite import to_dict

    status = service.status
    return {
        "name": service.spec.name,
        "replicas": service.spec.replicas,
        "ready": status.ready,
        "generation": service.generation,
        "template_generation": service.template_generation,
        "current": status.replicas,
        "updated": status.updated,
        "pending": status.pending,
        "failed": status.failed,
        "message": status.message,
        "deleting": service.deleting,
        "image": service.spec.template.image,
        "created_at": timestamp(service.created_at),
        "updated_at": timestamp(service.updated_at),
        "autoscale": autoscale_json(service.spec),
        "spec": to_dict(service.spec),
    }


def autoscale_json(spec: spb.ServiceSpec) -> dict[str, Any] | None:
    if not spec.HasField("autoscale"):
        return None
    from agent.cli.servicefile import autoscale_dict  # the file's form (no PyYAML needed for it)
    from agent.protolite import to_dict

    return autoscale_dict(to_dict(spec.autoscale))


SERVICE_HEADERS = ["NAME", "READY", "UP-TO-DATE", "PENDING", "GENERATION", "AGE"]
# MIN, MAX and TARGETS: what kubectl shows of an HPA (``get hpa``), for an autoscaled service.
SERVICE_WIDE = ["IMAGE", "STRATEGY", "MIN", "MAX", "TARGETS", "MESSAGE"]
TARGETS_SHOWN = 2  # then "+ N more", as kubectl get hpa


def service_row(service: spb.Service, *, wide: bool = False) -> list[str]:
    status = service.status
    name = service.spec.name + (" (deleting)" if service.deleting else "")
    row = [name, f"{status.ready}/{service.spec.replicas}", str(status.updated), str(status.pending),
           str(service.generation), age(service.created_at)]
    if wide:
        row += [service.spec.template.image, service.spec.placement.strategy or "spread"]
        if service.spec.HasField("autoscale"):
            policy = service.spec.autoscale
            row += [str(autoscale_min(policy)), str(policy.max_replicas),
                    targets_text(policy, most=TARGETS_SHOWN)]
        else:
            row += ["-", "-", "-"]
        row.append(status.message)
    return row


# -- autoscale policies ------------------------------------------------------------------------------------

def autoscale_min(policy: spb.Autoscale) -> int:
    return policy.min_replicas if policy.HasField("min_replicas") else 1  # unset: the file's default


EN_DASH = "\u2013"  # between the two ends of a range of replicas, as typeset


def autoscale_range(policy: spb.Autoscale) -> str:
    return f"{autoscale_min(policy)}{EN_DASH}{policy.max_replicas}"


def milli_text(milli: int) -> str:
    """Milli-units as the number they stand for: 100000 → "100", 2500 → "2.5" (exact, no float)."""
    whole, rest = divmod(abs(milli), 1000)
    sign = "-" if milli < 0 else ""
    return f"{sign}{whole}" + (f".{rest:03d}".rstrip("0") if rest else "")


def metric_text(metric: spb.MetricTarget) -> str:
    """One metric and its target, short: ``cpu 60%``, ``prometheus 100``, ``prometheus 10 (avg)``,
    ``prometheus 5 per replica``."""
    if metric.kind in ("cpu", "memory"):
        return f"{metric.kind} {metric.target_utilization_percent}%"
    if metric.kind != "prometheus":
        return metric.kind or "?"
    if metric.target_value_milli:
        return f"prometheus {milli_text(metric.target_value_milli)}"
    average = milli_text(metric.target_average_value_milli)
    return f"prometheus {average} per replica" if metric.per_replica_label else f"prometheus {average} (avg)"


def targets_text(policy: spb.Autoscale, *, most: int | None = None) -> str:
    texts = [metric_text(m) for m in policy.metrics]
    if most is not None and len(texts) > most:
        texts = [*texts[:most], f"+ {len(texts) - most} more"]
    return ", ".join(texts) or "none"


# -- replicas ------------------------------------------------------------------------------------------------

def replica_json(replica: spb.Replica) -> dict[str, Any]:
    return {
        "id": replica.id,
        "service": replica.service,
        "host": replica.host,
        "host_name": replica.host_name,
        "state": replica_state(replica.state),
        "ready": replica.ready,
        "generation": replica.generation,
        "reason": replica.reason,
        "restarts": replica.restarts,
        "endpoints": [e.address for e in replica.endpoints],
        "created_at": timestamp(replica.created_at),
        "updated_at": timestamp(replica.updated_at),
    }


REPLICA_HEADERS = ["ID", "SERVICE", "STATE", "READY", "HOST", "RESTARTS", "AGE", "REASON"]
REPLICA_WIDE = ["GENERATION", "ENDPOINTS"]


def replica_row(replica: spb.Replica, *, wide: bool = False) -> list[str]:
    row = [replica.id, replica.service, replica_state(replica.state), "yes" if replica.ready else "no",
           replica.host_name or replica.host or "<none>", str(replica.restarts), age(replica.created_at),
           replica.reason]
    if wide:
        row += [str(replica.generation), ",".join(e.address for e in replica.endpoints) or "<none>"]
    return row


# -- hosts ---------------------------------------------------------------------------------------------------

def host_json(host: spb.Host) -> dict[str, Any]:
    info = host.info
    return {
        "id": host.id,
        "name": host.name,
        "address": host.address,
        "state": host_state(host.state),
        "labels": dict(sorted(host.labels.items())),
        "replicas": host.replicas,
        "reason": host.reason,
        "metrics_address": host.metrics_address,
        "agent_version": info.agent_version,
        "cpu_allocatable_millis": info.cpu_allocatable_millis,
        "cpu_committed_millis": info.cpu_committed_millis,
        "memory_allocatable_bytes": info.memory_allocatable_bytes,
        "memory_committed_bytes": info.memory_committed_bytes,
        "conditions": host_conditions(host),
        "start_failures": host.start_failures,
        "registered_at": timestamp(host.registered_at),
        "last_seen": timestamp(host.last_seen),
    }


def host_conditions(host: spb.Host) -> list[str]:
    """What makes placement avoid the host (the scheduler's list; an older one's: the agent's only)."""
    return list(host.conditions) or [c.type for c in host.info.conditions]


HOST_HEADERS = ["NAME", "STATE", "ADDRESS", "REPLICAS", "CONDITIONS", "LABELS", "AGE"]
HOST_WIDE = ["ID", "CPU (REQ/ALLOC)", "MEMORY (REQ/ALLOC)", "VERSION", "REASON"]


def host_row(host: spb.Host, *, wide: bool = False) -> list[str]:
    row = [host.name or host.id, host_state(host.state), host.address, str(host.replicas),
           ",".join(host_conditions(host)) or "-", labels_text(dict(host.labels)), age(host.registered_at)]
    if wide:
        info = host.info
        row += [host.id, f"{cpus_text(info.cpu_committed_millis)}/{cpus_text(info.cpu_allocatable_millis)}",
                f"{size_text(info.memory_committed_bytes)}/{size_text(info.memory_allocatable_bytes)}",
                info.agent_version, host.reason]
    return row


# -- endpoints -----------------------------------------------------------------------------------------------

def endpoint_json(endpoint: spb.Endpoint) -> dict[str, Any]:
    return {
        "service": endpoint.service,
        "replica": endpoint.replica,
        "host": endpoint.host,
        "address": endpoint.address,
        "container_port": endpoint.container_port,
        "protocol": endpoint.protocol or "tcp",
    }


ENDPOINT_HEADERS = ["SERVICE", "ADDRESS", "REPLICA", "HOST"]
ENDPOINT_WIDE = ["PORT"]


def endpoint_row(endpoint: spb.Endpoint, *, wide: bool = False) -> list[str]:
    row = [endpoint.service, endpoint.address, endpoint.replica, endpoint.host]
    if wide:
        row.append(f"{endpoint.container_port}/{endpoint.protocol or 'tcp'}")
    return row


# -- scheduler instances -------------------------------------------------------------------------------------

def scheduler_json(instance: spb.SchedulerInstance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "address": instance.addresses[0] if instance.addresses else "",
        "addresses": list(instance.addresses),
        "leader": instance.leader,
        "started_at": timestamp(instance.started_at),
        "http_address": instance.http_address,
        "version": instance.version,
    }


SCHEDULER_HEADERS = ["ID", "ADDRESS", "LEADER", "AGE"]
SCHEDULER_WIDE = ["OTHER ADDRESSES", "HTTP", "VERSION"]


def scheduler_row(instance: spb.SchedulerInstance, *, wide: bool = False) -> list[str]:
    addresses = list(instance.addresses)
    row = [instance.id, addresses[0] if addresses else "-", "yes" if instance.leader else "no",
           age(instance.started_at)]
    if wide:
        row += [",".join(addresses[1:]) or "-", instance.http_address or "-", instance.version or "-"]
    return row


# -- host groups -----------------------------------------------------------------------------------------

def shape_text(shape: spb.HostShape) -> str:
    """``2 cpus, 4Gi, zone=a`` (the group label, which every host of the group has, left out)."""
    labels = {k: v for k, v in shape.labels.items() if k != "group"}
    text = f"{cpus_text(shape.cpu_millis)} cpus, {size_text(shape.memory_bytes)}"
    return text + (f", {labels_text(labels)}" if labels else "")


def provider_text(spec: spb.HostGroupSpec) -> str:
    parts = []
    if spec.HasField("webhook"):
        parts.append(f"webhook {spec.webhook.url}")
    if spec.HasField("command"):
        parts.append(f"command {spec.command.argv[0] if spec.command.argv else '?'}")
    return " + ".join(parts) or "none"


def hostgroup_json(group: spb.HostGroup) -> dict[str, Any]:
    from agent.protolite import to_dict

    spec, status = group.spec, group.status
    shape = None
    if spec.HasField("shape"):
        shape = {"cpu_millis": spec.shape.cpu_millis, "memory_bytes": spec.shape.memory_bytes,
                 "labels": dict(sorted(spec.shape.labels.items()))}
    return {
        "name": spec.name,
        "min": spec.min_hosts,
        "max": spec.max_hosts,
        "hosts": status.hosts,
        "desired_hosts": status.desired_hosts,
        "pending_replicas": status.pending_replicas,
        "expected_hosts": status.expected_hosts,
        "undelivered_requests": status.undelivered_requests,
        "generation": group.generation,
        "shape": shape,
        "provider": {"webhook": spec.webhook.url if spec.HasField("webhook") else None,
                     "command": list(spec.command.argv) if spec.HasField("command") else None},
        "members": [{"id": m.id, "name": m.name, "state": host_state(m.state), "replicas": m.replicas}
                    for m in group.members],
        "created_at": timestamp(group.created_at),
        "updated_at": timestamp(group.updated_at),
        "spec": to_dict(spec),
        "status": to_dict(status),
    }


HOSTGROUP_HEADERS = ["NAME", "MIN", "MAX", "HOSTS", "DESIRED", "PENDING", "REQUESTS", "AGE"]
HOSTGROUP_WIDE = ["SHAPE", "PROVIDER"]


def hostgroup_row(group: spb.HostGroup, *, wide: bool = False) -> list[str]:
    spec, status = group.spec, group.status
    judged = status.revision != 0  # the leader has written a status: its figures mean something
    row = [spec.name, str(spec.min_hosts), str(spec.max_hosts), str(status.hosts),
           str(status.desired_hosts) if judged else "-", str(status.pending_replicas) if judged else "-",
           str(status.undelivered_requests), age(group.created_at)]
    if wide:
        row += [shape_text(spec.shape) if spec.HasField("shape") else "from its hosts", provider_text(spec)]
    return row


__all__ = [
    "ENDPOINT_HEADERS",
    "HOSTGROUP_HEADERS",
    "HOSTGROUP_WIDE",
    "HOST_HEADERS",
    "REPLICA_HEADERS",
    "REPLICA_STATE_VALUES",
    "SCHEDULER_HEADERS",
    "SCHEDULER_WIDE",
    "SERVICE_HEADERS",
    "age",
    "autoscale_json",
    "autoscale_min",
    "autoscale_range",
    "endpoint_json",
    "endpoint_row",
    "host_json",
    "host_row",
    "host_state",
    "hostgroup_json",
    "hostgroup_row",
    "metric_text",
    "milli_text",
    "provider_text",
    "replica_json",
    "replica_row",
    "replica_state",
    "scheduler_json",
    "scheduler_row",
    "service_json",
    "service_row",
    "shape_text",
    "size_text",
    "targets_text",
    "timestamp",
]
