"""Test-only driver: a ``NetworkManager`` inside a test host, steered over stdin/stdout.

Started with ``nsenter --net=<host netns>`` so the manager's namespace files are bind-mounted in the
test's own mount namespace. stdin: one JSON command per line; stdout: one JSON reply per line,
``{"ok": ...}`` or ``{"error": "<ExceptionClass>", "message": ...}``. ``fail`` arms a one-shot fault in a
named step of attach, to check that a half-built attach leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from agent.network import bridge, firewall, manager, ports


def _arm(step: str) -> None:
    module: Any = {"veth": bridge, "inside": bridge, "forwards": firewall}[step]
    name = {"veth": "add_veth", "inside": "configure_inside", "forwards": "add_forwards"}[step]
    original = getattr(module, name)

    def failing(*args: Any, **kwargs: Any) -> Any:
        setattr(module, name, original)
        if step == "forwards":
            original(*args, **kwargs)  # fail *after* the elements went in: rollback must remove them
        raise RuntimeError(f"injected failure in {name}")

    setattr(module, name, failing)


async def _handle(m: manager.NetworkManager, cmd: dict[str, Any]) -> Any:
    op = cmd["op"]
    if op == "setup":
        host = await m.setup_host()
        return {"mtu": host.mtu, "gateway": str(host.gateway)}
    if op == "attach":
        publish = [ports.parse_port_spec(s) for s in cmd.get("ports", [])]
        a = await m.attach(cmd["id"], publish=publish)
        return {"netns_path": a.netns_path, "address": str(a.address.ip), "mac": a.mac, "veth": a.host_veth,
                "mtu": a.mtu, "ports": [str(p) for p in a.ports]}
    if op == "detach":
        return await m.detach(cmd["id"])
    if op == "reconcile":
        return await m.reconcile(cmd["live"])
    if op == "allocations":
        return {k: str(v) for k, v in m.ipam.allocations().items()}
    if op == "published":
        return {k: [str(p) for p in v] for k, v in m.ports.read().items()}
    if op == "view":  # the in-memory view attachment() answers from, in the shape of the two above
        view = m.attachments()
        return {"allocations": {k: str(a.address.ip) for k, a in view.items()},
                "published": {k: [str(p) for p in a.ports] for k, a in view.items() if a.ports}}
    if op == "teardown":
        await m.teardown_host()
        return True
    if op == "fail":
        _arm(cmd["step"])
        return True
    raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    root, subnet, bridge_name = sys.argv[1], sys.argv[2], sys.argv[3]
    m = manager.NetworkManager(Path(root), subnet=ipaddress.IPv4Network(subnet), bridge_name=bridge_name)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        try:
            reply: dict[str, Any] = {"ok": await _handle(m, json.loads(line))}
        except Exception as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
