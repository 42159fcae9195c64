"""Running a command inside a running container: ``shoal exec`` and exec health probes.

The daemon never forks into a container itself: it spawns ``python -m agent.runtime.nsenter`` (which
joins the container's cgroup and namespaces, then drops to its credentials and capabilities) with a
clean environment and feeds it an ``ExecPlan`` on stdin. ``spawn`` starts that helper; ``stream_output``
turns its pipes into an ordered stream of chunks through a *bounded* queue, so a client that reads
slowly slows its own command (its pipe fills and it blocks on write), never the agent's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.errors import InvalidArgument
from agent.rootfs import users
from agent.runtime import plan as plans
from agent.runtime.helper_env import helper_environment
from agent.runtime.records import Prepared
from agent.runtime.spec import merge_env
from agent.streams import drain_until_done

# Chunks of up to 64 KiB waiting for the client: at most ~1 MiB per exec.
OUTPUT_QUEUE_CHUNKS = 16


def build_plan(prepared: Prepared, *, pid: int, argv: list[str], env: list[str], working_dir: str,
               user: str, cgroup_procs: tuple[str, ...], capabilities: tuple[str, ...]) -> plans.ExecPlan:
    """The exec plan for ``argv`` in the container whose pid 1 is ``pid`` (blocking: ``user`` is looked up
    in the container's passwd and group files as they are now, its writable layer over the image's, like
    ``docker exec -u``; what the container wrote there is resolved inside its root like the image is)."""
    if not argv:
        raise InvalidArgument("exec needs a command")
    if user:
        layers = [Path(prepared.upper_dir), *(Path(d) for d in prepared.lower_dirs)]
        creds = users.resolve_user(user, layers=layers)
        uid, gid, groups = creds.uid, creds.gid, creds.additional_gids
    else:
        uid, gid, groups = prepared.uid, prepared.gid, prepared.additional_gids
    return plans.ExecPlan(
        target_pid=pid, argv=tuple(argv), env=merge_env(prepared.env, tuple(env)),
        cwd=working_dir or prepared.working_dir, uid=uid, gid=gid, additional_gids=groups,
        cgroup_procs=cgroup_procs, capabilities=capabilities,
    )


def helper_argv(python: str) -> list[str]:
    """The exec helper's command line: ``-P`` imports nothing from its working directory, ``-s`` nothing
    from a user's site directory; only Shoal's code as the agent's interpreter finds it."""
    return [python, "-P", "-s", "-m", "agent.runtime.nsenter"]


async def spawn(exec_plan: plans.ExecPlan, *, python: str, merge_stderr: bool) -> asyncio.subprocess.Process:
    """Start the nsenter helper for ``exec_plan``: a new session, stdout piped, stderr piped or merged.

    The helper holds nothing of the agent's but its pipes: the helper environment (not the agent's,
    see ``helper_env``), the host's ``/`` as its working directory (not the agent's), no other
    descriptor (asyncio closes them).
    """
    proc = await asyncio.create_subprocess_exec(
        *helper_argv(python),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        start_new_session=True, env=helper_environment(), cwd="/",
    )
    assert proc.stdin
    try:
        proc.stdin.write(exec_plan.to_json().encode())
        await proc.stdin.drain()
        proc.stdin.close()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc


async def stream_output(proc: asyncio.subprocess.Process) -> AsyncIterator[tuple[str, bytes | int]]:
    """Yields ("stdout", bytes), ("stderr", bytes) in arrival order, then ("exit", code). Kills the
    command if the consumer stops early."""
    assert proc.stdout and proc.stderr
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=OUTPUT_QUEUE_CHUNKS)

    async def pump(stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(65536):
            await queue.put((name, chunk))

    pumps = [asyncio.create_task(pump(proc.stdout, "stdout")),
             asyncio.create_task(pump(proc.stderr, "stderr"))]
    try:
        async for chunk in drain_until_done(asyncio.gather(*pumps), queue):
            yield chunk
        code = await proc.wait()
        yield ("exit", code)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in pumps:
            task.cancel()


__all__ = ["OUTPUT_QUEUE_CHUNKS", "build_plan", "helper_argv", "spawn", "stream_output"]
