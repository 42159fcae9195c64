"""Human output for the CLI: tables aligned like docker's, relative times, sizes, status lines."""

from __future__ import annotations

import time

from proto.agent.v1 import agent_lite as pb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [list(headers), *rows]]
    return "\n".join(lines)


def ago(seconds: float, *, now: float | None = None) -> str:
    return f"{duration((now or time.time()) - seconds)} ago"


def duration(delta: float) -> str:
    delta = max(delta, 0)
    if delta < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= size:
            n = int(delta // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    n = int(delta)
    return f"{n} second{'s' if n != 1 else ''}"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"


_HEALTH = {pb.HEALTH_STATUS_STARTING: " (health: starting)", pb.HEALTH_STATUS_HEALTHY: " (healthy)",
           pb.HEALTH_STATUS_UNHEALTHY: " (unhealthy)"}


def status_line(ctr: pb.Container) -> str:
    if ctr.state == pb.CONTAINER_STATE_RUNNING:
        up = f"Up {duration(time.time() - ctr.started_at.ToNanoseconds() / 1e9)}"
        return up + _HEALTH.get(ctr.health, "")
    if ctr.HasField("next_restart_at"):
        return f"Restarting ({ctr.exit_code}) {ago(ctr.finished_at.ToNanoseconds() / 1e9)}"
    if ctr.state == pb.CONTAINER_STATE_EXITED:
        when = ago(ctr.finished_at.ToNanoseconds() / 1e9) if ctr.HasField("finished_at") else ""
        reason = f" {ctr.reason}" if ctr.reason in ("OOMKilled", "StartFailed", "Lost", "Evicted") else ""
        return f"Exited ({ctr.exit_code}){reason} {when}".rstrip()
    return "Created"


def command_line(argv: Sequence[str], *, width: int = 20) -> str:
    import shlex

    text = shlex.join(argv)
    return f'"{text[: width - 1]}…"' if len(text) > width else f'"{text}"'


def short_id(digest_or_id: str) -> str:
    return digest_or_id.removeprefix("sha256:")[:12]


def ports_line(ports: Sequence[pb.PortMapping]) -> str:
    """Docker's PORTS column: ``0.0.0.0:8080->80/tcp, …``."""
    return ", ".join(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.protocol or 'tcp'}"
                     for p in ports)
