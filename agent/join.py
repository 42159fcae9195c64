"""Joining a cluster: the agent registers its host with a scheduler and keeps the registration current.

``shoal-agent serve --join SCHEDULER[,SCHEDULER…] --advertise HOST:PORT`` runs ``Joiner.run`` as a task.
It calls ``Registration.RegisterHost`` with this host's ``HostInfo`` (stable host id, labels, capacity,
allocatable, committed, conditions), the address the scheduler reaches the agent's API at, and the
``/metrics`` address for Prometheus discovery; then again every ``refresh_seconds`` the scheduler asks
for, so capacity and labels stay current and an agent restarted with the same root is the same host
again (the host id lives in the root). Calls use the agent's certificate (role "agent"), over mTLS.

Failures never stop the agent: a scheduler that does not answer is retried with capped backoff, the next
address of ``--join`` first. Containers keep running whatever happens here — unless
``--stop-replicas-after`` is set: every success is reported to ``on_contact``, and ``agent.self_fence``
stops the scheduler-managed replicas after too long without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from proto.agent.v1 import agent_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc

log = logging.getLogger(__name__)

RETRY_INITIAL = 0.5
RETRY_CAP = 10.0
CALL_TIMEOUT = 10.0
DEFAULT_REFRESH = 10.0


@dataclass(frozen=True)
class JoinSettings:
    schedulers: tuple[str, ...]   # HOST:PORT of each scheduler instance
    advertise: str                # where the scheduler reaches this agent's API
    metrics_address: str = ""
    tls_dir: Path | None = None   # ca.pem, agent.pem, agent-key.pem; None: plain TCP (tests)
    # Register at least this often whatever the scheduler asks (0: as it asks). Self-fencing counts
    # from the last registration, and a large fleet is asked to refresh only every minute or so.
    max_refresh: float = 0.0


class Joiner:
    def __init__(self, settings: JoinSettings, *, host_info: Callable[[], pb.HostInfo],
                 on_contact: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._host_info = host_info
        self._on_contact = on_contact  # called after every successful registration (self-fencing's clock)
        self.registered = asyncio.Event()  # set after the first successful registration
        self.last_error = ""

    def _channel(self, address: str) -> grpc.aio.Channel:
        tls = self.settings.tls_dir
        if tls is None:
            return grpc.aio.insecure_channel(address)
        creds = grpc.ssl_channel_credentials(
            root_certificates=(tls / "ca.pem").read_bytes(), private_key=(tls / "agent-key.pem").read_bytes(),
            certificate_chain=(tls / "agent.pem").read_bytes())
        return grpc.aio.secure_channel(address, creds)

    async def run(self) -> None:
        """Register, then keep registering, until cancelled."""
        delay = RETRY_INITIAL
        schedulers: Sequence[str] = self.settings.schedulers
        turn = 0
        while True:
            address = schedulers[turn % len(schedulers)]
            try:
                refresh = await self._register(address)
            except (grpc.aio.AioRpcError, OSError) as err:
                detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
                if detail != self.last_error:
                    log.warning("cannot register with the scheduler at %s: %s", address, detail)
                self.last_error = detail or "unreachable"
                turn += 1  # the next scheduler first
                await asyncio.sleep(delay)
                delay = min(RETRY_CAP, delay * 2)
                continue
            if self.last_error or not self.registered.is_set():
                log.info("registered with the scheduler at %s as %s", address, self.settings.advertise)
            self.last_error = ""
            self.registered.set()
            if self._on_contact is not None:
                self._on_contact()
            delay = RETRY_INITIAL
            if self.settings.max_refresh > 0:
                refresh = min(refresh, self.settings.max_refresh)
            await asyncio.sleep(refresh)

    async def _register(self, address: str) -> float:
        request = spb.RegisterHostRequest(info=self._host_info(), address=self.settings.advertise,
                                          metrics_address=self.settings.metrics_address)
        channel = self._channel(address)
        try:
            reply = await spb_grpc.RegistrationStub(channel).RegisterHost(request, timeout=CALL_TIMEOUT)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return reply.refresh_seconds if reply.refresh_seconds > 0 else DEFAULT_REFRESH


__all__ = ["JoinSettings", "Joiner"]
