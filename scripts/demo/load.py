"""The demo's load generator: HTTP clients on the client host, sending to a service's endpoints.

It behaves like a load balancer in front of the service: it keeps the endpoints as the scheduler lists
them (``ListEndpoints``, refreshed every ``REFRESH`` seconds) and sends each request to the next one in
turn; a request that fails (refused, timed out, a non-2xx answer) is tried once more on an endpoint of
another host, as Envoy's or HAProxy's retry-on-connect-failure does. What the client saw is counted per
second: ``ok`` (first try), ``retried`` (answered on the retry) and ``failed`` (failed twice: the error a
user would have seen). Two open-loop *streams* run at rates the story sets (requests per second, paced by
a ticket clock, not by answers): ``base`` on the static page and ``burst`` on ``/cgi-bin/work``, which
burns about ``BURN_MS`` of cpu in the replica (so load shows up as cpu, and cpu drives the autoscaler).

The worker threads join the client host's network namespace (only their own thread: this process stays
in the machine's namespace), so every request crosses the demo's switch, as a remote client's would.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.linux import namespaces

REFRESH = 0.5
WORKERS = 24
TIMEOUT = 2.0
BURN_MS = 20  # what one /cgi-bin/work request costs the replica (the image's script)
PATHS = {"base": "/", "burst": "/cgi-bin/work"}


@dataclass(frozen=True)
class Endpoint:
    address: str  # HOST:PORT
    host: str     # host id


@dataclass
class Second:
    """What one second of requests came to."""

    ok: int = 0
    retried: int = 0
    failed: int = 0


@dataclass
class Failure:
    at: float
    path: str
    detail: str


@dataclass
class LoadGenerator:
    netns: str
    endpoints: Callable[[], list[Endpoint]]
    started: float = field(default_factory=time.monotonic)
    seconds: dict[int, Second] = field(default_factory=dict)
    failures: deque[Failure] = field(default_factory=lambda: deque(maxlen=200))
    errors: list[str] = field(default_factory=list)  # the generator's own troubles (listing endpoints)
    _rates: dict[str, float] = field(default_factory=lambda: {"base": 0.0, "burst": 0.0})
    _current: list[Endpoint] = field(default_factory=list)
    _turn: int = 0
    _tickets: queue.Queue[str] = field(default_factory=lambda: queue.Queue(maxsize=500))
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> LoadGenerator:
        with contextlib.suppress(Exception):
            self._current = self.endpoints()
        self._threads = [threading.Thread(target=self._refresh, name="load-endpoints", daemon=True),
                         threading.Thread(target=self._clock, name="load-clock", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
                          for i in range(WORKERS)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT * 2 + 1)
        self._threads = []

    def close(self) -> list[str]:
        self.stop()
        return []

    def set_rate(self, stream: str, per_second: float) -> None:
        with self._lock:
            self._rates[stream] = per_second

    def rate(self, stream: str) -> float:
        with self._lock:
            return self._rates[stream]

    # -- what the client saw -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.started

    def totals(self, since: float = 0.0, until: float | None = None) -> Second:
        """Requests whose second falls in [since, until) (seconds since the generator started)."""
        end = until if until is not None else float("inf")
        total = Second()
        with self._lock:
            for second, counts in self.seconds.items():
                if since <= second < end:
                    total.ok += counts.ok
                    total.retried += counts.retried
                    total.failed += counts.failed
        return total

    def answered_per_second(self) -> float:
        """Requests answered during the last whole second."""
        last = self.totals(int(self.now()) - 1, int(self.now()))
        return float(last.ok + last.retried)

    # -- threads -------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                listed = self.endpoints()
            except Exception as err:  # a scheduler failing over: keep the last list, as a balancer does
                if len(self.errors) < 50:
                    self.errors.append(str(err)[:200])
                continue
            with self._lock:
                self._current = listed

    def _clock(self) -> None:
        owed = {"base": 0.0, "burst": 0.0}
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            with self._lock:
                rates = dict(self._rates)
            for stream, rate in rates.items():
                owed[stream] = min(owed[stream] + rate * (now - last), max(rate, 1.0))
                while owed[stream] >= 1:
                    owed[stream] -= 1
                    with contextlib.suppress(queue.Full):  # the workers cannot keep up: shed, not queue
                        self._tickets.put_nowait(stream)
            last = now

    def _worker(self) -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            namespaces.join(target, "net")  # this thread only
            try:
                while not self._stop.is_set():
                    try:
                        stream = self._tickets.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    self._request(PATHS[stream])
            finally:
                namespaces.join(own, "net")
        finally:
            os.close(target)
            os.close(own)

    def _pick(self, avoid_host: str | None) -> Endpoint | None:
        with self._lock:
            candidates = [e for e in self._current if e.host != avoid_host] or list(self._current)
            if not candidates:
                return None
            self._turn += 1
            return candidates[self._turn % len(candidates)]

    def _request(self, path: str) -> None:
        first = self._pick(None)
        if first is None:
            self._count("failed", path, "no endpoint listed")
            return
        error = _get(first.address, path)
        if error is None:
            self._count("ok")
            return
        second = self._pick(first.host)
        retry_error = _get(second.address, path) if second is not None else "no other endpoint"
        if retry_error is None:
            self._count("retried")
        else:
            self._count("failed", path, f"{first.address}: {error}; retry: {retry_error}")

    def _count(self, outcome: str, path: str = "", detail: str = "") -> None:
        at = self.now()
        with self._lock:
            second = self.seconds.setdefault(int(at), Second())
            setattr(second, outcome, getattr(second, outcome) + 1)
            if outcome == "failed":
                self.failures.append(Failure(at=at, path=path, detail=detail))


def _get(address: str, path: str) -> str | None:
    """None when answered 2xx, else what went wrong."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except (OSError, http.client.HTTPException) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        with contextlib.suppress(OSError):
            connection.close()


__all__ = ["BURN_MS", "Endpoint", "Failure", "LoadGenerator", "Second"]
