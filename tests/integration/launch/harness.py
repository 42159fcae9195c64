"""Test-only driver: calls ``launch()`` from a fresh single-threaded process, as the supervisor would.

stdin: ``{"plan": <LaunchPlan dict>, "output": <path for the container's stdout+stderr>}``.
stdout, one JSON object per line: ``{"pid": N}`` once launched, then ``{"exit": CODE}`` when the
container's init has exited; or ``{"error": {"kind", "message"}, "children_left": BOOL}`` if launch
failed (we are a subreaper, so any leftover process from the attempt would be our child).
"""

from __future__ import annotations

import json
import os
import sys

from agent.errors import LaunchError
from agent.runtime.launch import launch
from agent.runtime.plan import LaunchPlan

LEAK_CANDIDATE_FD = 50


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    spec = json.loads(sys.stdin.read())
    plan = LaunchPlan.from_dict(spec["plan"])
    out = os.open(spec["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    # A careless supervisor's inheritable fd: the container must not get it.
    os.dup2(out, LEAK_CANDIDATE_FD, inheritable=True)
    try:
        pid = launch(plan, stdout_fd=out, stderr_fd=out, timeout=float(spec.get("timeout", 10.0)))
    except LaunchError as exc:
        try:
            os.waitpid(-1, os.WNOHANG)  # running or zombie: either way something was left behind
            left = True
        except ChildProcessError:
            left = False
        _emit({"error": {"kind": exc.kind, "message": str(exc)}, "children_left": left})
        return 0
    finally:
        os.close(out)
    _emit({"pid": pid})
    _, status = os.waitpid(pid, 0)
    _emit({"exit": os.waitstatus_to_exitcode(status)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
