"""A cancellation that surfaced as another error must still end the task.

A retry loop (``except StoreError: sleep; try again``) that is cancelled while a call is in flight can
see the cancellation come back as that call's error — a cancelled gRPC call mapped to a store error — and
the CancelledError itself is then gone: the loop would retry for ever, and a shutdown waiting for the task
would wait for ever (a scheduler ignoring SIGTERM). ``raise_if_cancelling()`` in such an ``except`` puts
the cancellation back: the task asked to stop stops.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


__all__ = ["raise_if_cancelling"]
