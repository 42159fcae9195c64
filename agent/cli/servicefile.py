"""The service file as ``shoal get services -o yaml`` prints it: the API's ``ServiceSpec`` → YAML that
``shoal apply -f`` takes back.

The scheduler owns the format (``scheduler/spec.py`` parses it, ``scheduler/spec_render.py`` renders it),
but the CLI may not import the scheduler, and renders what the API sent it. So everything below the
imports is a copy of the second half of ``scheduler/spec_render.py``, working on the protobuf JSON
mapping of ``ServiceSpec`` (``agent.protolite.to_dict``); ``tests/unit/scheduler/test_spec_render.py``
fails when the two differ in source or in output. PyYAML is imported by ``dump_documents`` only: only
``-o yaml`` needs it (``autoscale_dict`` serves ``-o json`` and costs no import).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

def dump_documents(documents: Sequence[Mapping[str, Any]]) -> str:
    """YAML as ``shoal`` writes it: keys in the file's order, flow style for short leaf lists/maps."""
    import yaml  # here: the CLI prints JSON and tables with this module, and only -o yaml needs PyYAML

    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=None, width=100,
                              allow_unicode=True, explicit_start=len(documents) > 1)


_SIZE_UNITS = (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10))
_HEALTH_DEFAULTS = {"interval_seconds": 30.0, "timeout_seconds": 30.0, "retries": 3}


def _size(value: Any) -> str | int:
    size = int(value)
    for suffix, unit in _SIZE_UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return size


def _thousandths(value: Any) -> int | float:
    """Milli-units (millicores, an autoscale target) as the number a file writes: 1500 → 1.5."""
    millis = int(value)
    return millis // 1000 if millis % 1000 == 0 else millis / 1000


def _duration(value: Any) -> str:
    # The shortest of "2h", "10m", "90s", "250ms" that a file reads back as exactly these seconds (it
    # reads "24871ms" as 24871 * 0.001 = 24.871000000000002); else every digit, in seconds.
    seconds = float(value)
    millis = seconds * 1000
    if millis == int(millis):
        whole = int(millis)
        if whole == 0:
            return "0s"
        for suffix, size in (("h", 3600), ("m", 60), ("s", 1)):
            if whole % (size * 1000) == 0 and whole // (size * 1000) * float(size) == seconds:
                return f"{whole // (size * 1000)}{suffix}"
        if whole * 0.001 == seconds:
            return f"{whole}ms"
    import decimal  # here: only this rare case needs it, and the CLI starts without it

    return f"{decimal.Decimal(repr(seconds)):f}s"  # repr's shortest digits, never an exponent


def _enum_word(value: Any, prefix: str) -> str:
    return str(value).removeprefix(prefix).lower().replace("_", "-")


def file_dict_from_api(api: Mapping[str, Any]) -> dict[str, Any]:
    """A ``ServiceSpec`` in protobuf JSON form → the service file's mapping (keys in the documented
    order, defaults left out where the file's defaults are the same)."""
    out: dict[str, Any] = {"name": api.get("name", "")}
    replicas = int(api.get("replicas", 0))
    autoscale = api.get("autoscale")
    # In proto3 a structured spec's replicas 0 is also "not given": with an autoscale min above 0, that is
    # the file's default (max(min, 1)) rather than a count the policy refuses.
    if not (autoscale is not None and replicas == 0 and int(autoscale.get("min_replicas", 1)) > 0):
        out["replicas"] = replicas
    if api.get("labels"):
        out["labels"] = dict(sorted(api["labels"].items()))
    out["template"] = _template_dict(api.get("template", {}))
    placement = api.get("placement", {})
    placed: dict[str, Any] = {"strategy": placement.get("strategy") or "spread"}
    if placement.get("constraints"):
        placed["constraints"] = list(placement["constraints"])
    spread = placement.get("topology_spread")
    if spread:
        placed["topology_spread"] = {"label": spread.get("label", ""),
                                     "max_skew": int(spread.get("max_skew", 0))}
    out["placement"] = placed
    if "update" in api:  # absent from a structured spec: the defaults
        update = api["update"]
        surge_percent = update.get("max_surge_percent")
        unavailable_percent = update.get("max_unavailable_percent")
        out["update"] = {
            "max_surge": f"{surge_percent}%" if surge_percent is not None
            else int(update.get("max_surge", 0)),
            "max_unavailable": f"{unavailable_percent}%" if unavailable_percent is not None
            else int(update.get("max_unavailable", 0)),
        }
    if api.get("metrics_port"):
        out["metrics_port"] = int(api["metrics_port"])
    if autoscale is not None:
        out["autoscale"] = _autoscale_file_dict(autoscale_dict(autoscale))
    return out


_TOLERANCE_DEFAULT = 0.1
_RULES_DEFAULTS: dict[str, dict[str, Any]] = {
    "scale_up": {"stabilization_window_seconds": 0, "select_policy": "max",
                 "policies": [{"type": "replicas", "value": 4, "period_seconds": 15},
                              {"type": "percent", "value": 100, "period_seconds": 15}]},
    "scale_down": {"stabilization_window_seconds": 300, "select_policy": "max",
                   "policies": [{"type": "percent", "value": 100, "period_seconds": 15}]},
}


def autoscale_dict(a: Mapping[str, Any]) -> dict[str, Any]:
    """An ``Autoscale`` in protobuf JSON form → the file's ``autoscale`` mapping with every default written
    out (what ``get services -o json`` shows); unset fields take the file's defaults."""
    behavior = a.get("behavior", {})
    return {
        "min": int(a.get("min_replicas", 1)),
        "max": int(a.get("max_replicas", 0)),
        "metrics": [_metric_dict(m) for m in a.get("metrics", [])],
        "tolerance": {"scale_up": float(a.get("tolerance_up", _TOLERANCE_DEFAULT)),
                      "scale_down": float(a.get("tolerance_down", _TOLERANCE_DEFAULT))},
        "behavior": {direction: _rules_dict(behavior.get(direction, {}), default)
                     for direction, default in _RULES_DEFAULTS.items()},
    }


def _metric_dict(m: Mapping[str, Any]) -> dict[str, Any]:
    kind = m.get("kind", "")
    if kind != "prometheus":  # cpu, memory (and what a newer scheduler may add: shown, so refused)
        return {kind: {"target_utilization_percent": int(m.get("target_utilization_percent", 0))}}
    metric: dict[str, Any] = {"query": m.get("query", "")}
    if m.get("per_replica_label"):
        metric["per_replica_label"] = m["per_replica_label"]
    if int(m.get("target_value_milli", 0)):
        metric["target_value"] = _thousandths(m["target_value_milli"])
    if int(m.get("target_average_value_milli", 0)):
        metric["target_average_value"] = _thousandths(m["target_average_value_milli"])
    return {"prometheus": metric}


def _rules_dict(r: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    policies = [{"type": p.get("type", ""), "value": int(p.get("value", 0)),
                 "period_seconds": int(p.get("period_seconds", 0))} for p in r.get("policies", [])]
    return {"stabilization_window_seconds": int(r.get("stabilization_window_seconds",
                                                      default["stabilization_window_seconds"])),
            "select_policy": r.get("select_policy") or default["select_policy"],
            "policies": policies or [dict(p) for p in default["policies"]]}


def _autoscale_file_dict(full: Mapping[str, Any]) -> dict[str, Any]:
    """``autoscale_dict``'s mapping without what the file's defaults already say."""
    out: dict[str, Any] = {"min": full["min"], "max": full["max"], "metrics": full["metrics"]}
    tolerance = {k: v for k, v in full["tolerance"].items() if v != _TOLERANCE_DEFAULT}
    if tolerance:
        out["tolerance"] = tolerance
    behavior: dict[str, Any] = {}
    for direction, default in _RULES_DEFAULTS.items():
        rules = {k: v for k, v in full["behavior"][direction].items() if v != default[k]}
        if rules:
            behavior[direction] = rules
    if behavior:
        out["behavior"] = behavior
    return out


def _template_dict(t: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"image": t.get("image", "")}
    for key in ("entrypoint", "command"):
        if t.get(key):
            out[key] = list(t[key])
    if t.get("env"):
        out["env"] = dict(item.partition("=")[::2] for item in t["env"])
    for key in ("working_dir", "user", "hostname"):
        if t.get(key):
            out[key] = t[key]
    resources = t.get("resources", {})
    res: dict[str, Any] = {}
    for key, name, render in (("cpu_millis", "cpus", _thousandths), ("memory_bytes", "memory", _size),
                              ("pids_max", "pids", int), ("cpu_request_millis", "cpus_request", _thousandths),
                              ("memory_request_bytes", "memory_request", _size),
                              ("storage_bytes", "storage", _size)):
        if int(resources.get(key, 0)):
            res[name] = render(resources[key])
    if res:
        out["resources"] = res
    if t.get("ports"):
        out["ports"] = [_port_dict(p) for p in t["ports"]]
    if "health" in t:
        out["health"] = _health_dict(t["health"])
    if "restart" in t:  # even "no": absent is a service's default, not the same thing
        restart = t["restart"]
        mode = _enum_word(restart.get("mode", "RESTART_MODE_NO"), "RESTART_MODE_")
        out["restart"] = f"{mode}:{restart['max_retries']}" if restart.get("max_retries") else mode
    if t.get("read_only"):
        out["read_only"] = True
    network = _enum_word(t.get("network", "NETWORK_MODE_UNSPECIFIED"), "NETWORK_MODE_")
    if network != "unspecified":
        out["network"] = network
    if t.get("labels"):
        out["labels"] = dict(sorted(t["labels"].items()))
    for key in sorted(set(t) - _TEMPLATE_RENDERED):  # fields the file has no key for: shown, so refused
        out[key] = t[key]
    return out


_TEMPLATE_RENDERED = {"image", "entrypoint", "command", "env", "working_dir", "user", "hostname", "resources",
                      "ports", "health", "restart", "read_only", "network", "labels"}


def _port_dict(p: Mapping[str, Any]) -> dict[str, Any]:
    port: dict[str, Any] = {"container": int(p.get("container_port", 0))}
    if int(p.get("host_port", 0)):
        port["host"] = int(p["host_port"])
    if p.get("protocol", "tcp") != "tcp":
        port["protocol"] = p["protocol"]
    if p.get("host_ip"):
        port["host_ip"] = p["host_ip"]
    return port


def _health_dict(h: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "http" in h:
        out["http"] = {"port": int(h["http"].get("port", 0)), "path": h["http"].get("path") or "/"}
    elif "tcp" in h:
        out["tcp"] = {"port": int(h["tcp"].get("port", 0))}
    elif "exec" in h:
        argv = list(h["exec"].get("command", []))
        out["exec"] = argv[2] if len(argv) == 3 and argv[:2] == ["/bin/sh", "-c"] else argv
    for key, name in (("interval_seconds", "interval"), ("timeout_seconds", "timeout")):
        seconds = float(h.get(key, 0)) or _HEALTH_DEFAULTS[key]
        if seconds != _HEALTH_DEFAULTS[key]:
            out[name] = _duration(seconds)
    retries = int(h.get("retries", 0)) or _HEALTH_DEFAULTS["retries"]
    if retries != _HEALTH_DEFAULTS["retries"]:
        out["retries"] = retries
    if float(h.get("start_period_seconds", 0)):
        out["start_period"] = _duration(h["start_period_seconds"])
    if h.get("restart_on_unhealthy"):
        out["restart_on_unhealthy"] = True
    return out


__all__ = ["autoscale_dict", "dump_documents", "file_dict_from_api"]
