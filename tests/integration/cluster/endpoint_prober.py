"""A client of a service as a load balancer would be: it keeps the service's endpoints as ``shoal get
endpoints NAME`` lists them (refreshed every ``refresh`` seconds) and sends HTTP GETs to them in turn,
from inside a test host (its own thread joins the host's network namespace; the test process stays in
the root namespace), recording every answer and every failure.

A scheduler that stops a replica before its replacement serves, or a host removed while it still holds a
replica, shows up as a failure. A stopping replica leaves the endpoints before its container is told to
stop, and the test's replicas keep serving for a moment after SIGTERM (as a real server finishing its
connections does), so a client whose list is at most ``refresh`` seconds old never needs to fail.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.linux import namespaces


@dataclass(frozen=True)
class Probe:
    at: float  # time.monotonic()
    address: str
    host: str
    ok: bool
    detail: str  # the body's first line, or the error


@dataclass
class EndpointProber:
    netns: str
    endpoints: Callable[[], list[dict[str, Any]]]   # e.g. lambda: cluster.json("get", "endpoints", "web")
    refresh: float = 0.5
    pace: float = 0.05          # between two requests
    timeout: float = 3.0        # one request
    probes: list[Probe] = field(default_factory=list)
    _current: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the prober's own troubles (listing endpoints)

    def __enter__(self) -> EndpointProber:
        self._current = self.endpoints()
        self._threads = [threading.Thread(target=self._refresh, name="endpoints", daemon=True),
                         threading.Thread(target=self._probe, name="prober", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def failures(self) -> list[Probe]:
        with self._lock:
            return [p for p in self.probes if not p.ok]

    def served_by(self, *, since: float = 0.0) -> Counter[str]:
        """Successful answers per host id since ``since`` (time.monotonic())."""
        with self._lock:
            return Counter(p.host for p in self.probes if p.ok and p.at >= since)

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                listed = self.endpoints()
            except Exception as err:  # the CLI failed once: keep the old list, say so
                self.errors.append(str(err)[:300])
                continue
            with self._lock:
                self._current = listed

    def _probe(self) -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            namespaces.join(target, "net")  # this thread only: its sockets live in the test host
            try:
                turn = 0
                while not self._stop.wait(self.pace):
                    with self._lock:
                        current = list(self._current)
                    if not current:
                        continue
                    endpoint = current[turn % len(current)]
                    turn += 1
                    probe = self._get(endpoint)
                    with self._lock:
                        self.probes.append(probe)
            finally:
                namespaces.join(own, "net")
        finally:
            os.close(target)
            os.close(own)

    def _get(self, endpoint: dict[str, Any]) -> Probe:
        address = str(endpoint["address"])
        host, _, port = address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            body = response.read().decode(errors="replace").strip()
            ok = response.status == 200
            detail = body.splitlines()[0] if body else f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as err:
            ok, detail = False, f"{type(err).__name__}: {err}"
        finally:
            with contextlib.suppress(OSError):
                connection.close()
        return Probe(at=time.monotonic(), address=address, host=str(endpoint["host"]), ok=ok, detail=detail)


__all__ = ["EndpointProber", "Probe"]
