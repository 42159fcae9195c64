"""Cancelling blocking image work from outside: the caller went away, the agent is stopping, a deadline
passed, or a sibling layer of the same pull failed.

Pulls run in worker threads that block in socket reads, so cancellation cannot be an exception thrown
into them. An ``Abort`` is set once, with a reason, and the work both polls it (between chunks, between
retries) and subscribes to it (``listen``) to interrupt a read that is blocked right now — the registry
client shuts down the response's socket, which wakes the reading thread at once. ``scope()`` derives a
child that is set whenever its parent is (agent stopping → every pull → every blob), and can also be set
on its own (one blob's deadline) without touching the parent. Listeners are removed when their ``with``
block ends, so a long-lived parent (the puller's own, set on shutdown) does not accumulate them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from agent.errors import Unavailable


class Aborted(Unavailable):
    """Image work stopped because its ``Abort`` was set; the message says why (caller gone, agent
    stopping, deadline). Retrying later may succeed, so it is an ``Unavailable``."""


class Abort:
    """A one-shot, thread-safe cancellation signal carrying the reason it was set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._reason = ""
        self._listeners: dict[int, Callable[[str], None]] = {}
        self._next = 0

    def set(self, reason: str) -> None:
        """Sets the signal (the first reason wins) and calls every current listener with the reason."""
        with self._lock:
            if self._event.is_set():
                return
            self._reason = reason
            self._event.set()
            listeners = list(self._listeners.values())
        for listener in listeners:
            listener(reason)

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        return self._event.wait(timeout)

    def check(self, what: str) -> None:
        """Raises ``Aborted`` naming ``what`` and the reason, if set."""
        if self._event.is_set():
            raise Aborted(f"{what}: {self._reason}")

    @contextlib.contextmanager
    def listen(self, listener: Callable[[str], None]) -> Iterator[None]:
        """Calls ``listener(reason)`` when the signal is set while inside the block (at once if it is
        already set). The listener runs in the setting thread: keep it short and non-blocking."""
        with self._lock:
            key = self._next
            self._next += 1
            already = self._event.is_set()
            if not already:
                self._listeners[key] = listener
        if already:
            listener(self._reason)
        try:
            yield
        finally:
            with self._lock:
                self._listeners.pop(key, None)

    @contextlib.contextmanager
    def scope(self) -> Iterator[Abort]:
        """A child signal, set when this one is (with the same reason) while the block runs."""
        child = Abort()
        with self.listen(child.set):
            yield child


def never() -> Abort:
    """A signal nobody sets, for callers that cannot be cancelled."""
    return Abort()
