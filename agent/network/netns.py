"""Persistent network namespaces made by a thread of the agent, without forking.

A network namespace is a property of a *thread* (task), not of the process: ``unshare(CLONE_NEWNET)``
moves only the calling thread, so a worker thread of the multi-threaded agent can enter a new namespace,
pin it by bind-mounting ``/proc/thread-self/ns/net`` onto a file (what ``ip netns add`` does under
/run/netns; ours live under the agent's own root so agents never collide), configure it with sockets
created while inside (a socket stays in the namespace it was created in), and ``setns`` back.

Every such operation runs in a *fresh* thread (``in_fresh_thread``), never in a pooled one: if returning
to the agent's namespace ever failed, the only thread left in the wrong namespace is one that is about to
exit, so no later work in the agent can run in a container's namespace by accident.

A namespace lives as long as the bind mount or any process in it; ``remove`` unmounts and unlinks and is
idempotent, so it also cleans up after a half-finished ``create``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.linux import syscalls

T = TypeVar("T")

_SELF_NET = "/proc/thread-self/ns/net"


def in_fresh_thread(fn: Callable[[], T], *, name: str) -> concurrent.futures.Future[T]:
    """Run ``fn`` in a new thread that ends with it; the future carries its result or exception.

    Wrap with ``asyncio.wrap_future`` to await it without tying up an executor thread.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def create(path: Path, configure: Callable[[int], T]) -> T:
    """Make a new network namespace pinned at ``path`` and run ``configure(host_ns_fd)`` inside it.

    Call only from a thread of its own (``in_fresh_thread``). ``host_ns_fd`` is the caller's original
    namespace, e.g. for placing one end of a veth pair there. The thread is back in its original
    namespace when this returns; on any failure, the namespace file is gone too.
    """
    host_fd = os.open(_SELF_NET, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        try:
            _pin(path)
            return configure(host_fd)
        except BaseException:
            syscalls.setns(host_fd, syscalls.CLONE_NEWNET, what="network namespace (back to the agent's)")
            remove(path)
            raise
        finally:
            # A second setns after the failure path's is harmless; it must never be skipped.
            syscalls.setns(host_fd, syscalls.CLONE_NEWNET, what="network namespace (back to the agent's)")
    finally:
        os.close(host_fd)


def enter(path: Path, fn: Callable[[], T]) -> T:
    """Run ``fn`` with the calling thread inside the namespace pinned at ``path``, then come back.

    Call only from a thread of its own (``in_fresh_thread``).
    """
    host_fd = os.open(_SELF_NET, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with syscalls.described(f"open network namespace {path}"):
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(target, syscalls.CLONE_NEWNET, what=f"network namespace {path}")
        finally:
            os.close(target)
        try:
            return fn()
        finally:
            syscalls.setns(host_fd, syscalls.CLONE_NEWNET, what="network namespace (back to the agent's)")
    finally:
        os.close(host_fd)


def _pin(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        remove(path)  # a leftover of a crashed attempt: never bind over a live namespace silently
    with syscalls.described(f"create {path}"):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    syscalls.mount(_SELF_NET, str(path), None, syscalls.MS_BIND, what=f"bind network namespace on {path}")


def remove(path: Path) -> bool:
    """Unpin and delete the namespace file at ``path``; ``False`` if there was nothing to remove.

    The kernel destroys the namespace (and the veth ends in it) once no process is left in it.
    """
    found = False
    try:
        syscalls.umount2(str(path), syscalls.MNT_DETACH)
        found = True
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point
            raise
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        found = True
    return found


def is_pinned(path: Path) -> bool:
    """Whether ``path`` is a bind-mounted namespace (an nsfs file, not the empty file under it)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False
