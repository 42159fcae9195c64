"""Where the leader's lease is kept alive: on the main event loop, or on a thread of its own.

While an instance leads, ``Election`` hands the term to a ``KeepaliveRunner``, whose ``keep`` refreshes
the lease every ``refresh_every`` (refreshes in flight together when etcd is slow to answer), checks every
TTL/3 that the leader key is still the term's, watches the key, and returns why the term ended: the lease
expired or was revoked, the key was deleted or replaced, or no refresh sent within the last
``step_down_after`` was answered (``keep_term``, the rules themselves, are the same wherever they run).

* ``ThreadedKeepalive`` (the scheduler's, on etcd) runs ``keep_term`` on a thread with an asyncio loop and
  an etcd connection of its own (a second store opened from the same settings). The leader's main loop
  runs reconcile passes, one session per host, the API and the watches; a pass of 0.3 s there made the
  in-loop keepalive miss its 2 s TTL's refresh, and every lost term cost a snapshot, a reconnect to every
  host and another stall (docs/scaling.md, limit 1). On its own loop the keepalive needs the GIL for
  microseconds per refresh, so a leader keeps its term as long as its process lives and reaches etcd,
  however long its passes are. The loops meet only through thread-safe calls: each term is a coroutine
  handed to the thread's loop with ``run_coroutine_threadsafe``, whose end (why the term ended) comes back
  to the main loop's ``Election``, which then cancels the leading task; a term cancelled on the main loop
  is stopped on the thread's with ``call_soon_threadsafe``. The term's store is closed before ``keep``
  returns, either way; the thread and its loop serve every term of the process and end with ``close``.
* ``InLoopKeepalive`` runs ``keep_term`` on the caller's loop and store: for a store that cannot be
  opened again on another loop (the in-memory store of development and tests, whose state is its
  process's one object).

**Why a keepalive that outlives a stalled main loop is safe.** A term that ends while the main loop is
stalled is only *noticed* there when the loop runs again; meanwhile the lease may expire and another
instance lead. Nothing the stalled leader does then can take effect: every commit is a transaction
guarded by the term's epoch (the leader key's create revision, ``Term.guard``), which etcd refuses once the
key is gone or another term's, and every agent call carries the epoch as its fence, which an agent refuses
once a newer leader has spoken to it. The keepalive's promptness was never what kept two leaders apart —
the in-loop keepalive could not cancel a stalled leader either; running it elsewhere only stops a busy
leader from losing a term it still holds. It must not keep a term for a loop that never runs again, though:
``ThreadedKeepalive`` and the keeper process end the term, revoking the lease, once the main loop has been
silent for ``ElectionSettings.hang_limit_s`` (``keep_term``'s ``alive``; ``scheduler.liveness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from scheduler.cancellation import raise_if_cancelling
from scheduler.liveness import LoopAlive, hang_reason, hung_for
from scheduler.store import base
from scheduler.store.errors import LeaseExpired, StoreError
from scheduler.store.records import LeaderRecord

if TYPE_CHECKING:
    from scheduler.election import ElectionSettings, Term

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005  # see ThreadedKeepalive's thread start

Clock = Callable[[], float]
StoreOpener = Callable[[], Awaitable[base.Store]]

# How long a cancelled term's keepalive (or the thread, at ``close``) may take to end before the caller
# goes on without it (a bug: its calls are all bounded by the step-down time, closing its store by gRPC).
STOP_WAIT_S = 10.0


class KeepaliveRunner(Protocol):
    """Keeps a term's lease alive while the instance leads."""

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        """Returns why ``term`` ended (lease gone, key deleted or replaced, no refresh for
        ``settings.step_down_after``); raises if keeping failed in an unexpected way (the term ends too).
        Cancel it to stop keeping the lease (the caller then revokes it). Nothing it started for the term
        outlives it."""
        ...

    async def close(self) -> None:
        """Releases what the runner keeps between terms (at the process's end)."""
        ...


class InLoopKeepalive:
    """``keep_term`` on the caller's event loop and store."""

    def __init__(self, store: base.Store) -> None:
        self._store = store

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        return await keep_term(self._store, term, settings, clock=clock)

    async def close(self) -> None:
        pass  # nothing of its own: the store is the caller's


class ThreadedKeepalive:
    """``keep_term`` on a thread of its own, with its own event loop, and a store from ``open_store``
    (called on that loop once per term; the store is closed when the term ends). The thread starts with
    the first term and runs until ``close``: one loop for the process's life, because grpc.aio keeps every
    loop it has served and delivers late completions of a closed loop's calls to it as errors (seen with a
    loop per term)."""

    def __init__(self, open_store: StoreOpener, *, stop_wait_s: float = STOP_WAIT_S) -> None:
        self._open_store = open_store
        self._stop_wait_s = stop_wait_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exited: asyncio.Future[None] | None = None

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        loop = self._started()
        stop = asyncio.Event()  # used on the thread's loop only: set there through call_soon_threadsafe
        alive = LoopAlive(clock=clock)  # the main loop's last sign of life: a float the thread reads
        alive.start()
        keeping = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._keep(term, settings, clock, stop, lambda: alive.at), loop))
        try:
            return await asyncio.shield(keeping)
        finally:
            await alive.close()
            if not keeping.done():  # cancelled: stop keeping, and wait until its store is closed
                loop.call_soon_threadsafe(stop.set)
                await asyncio.wait({keeping}, timeout=self._stop_wait_s)
                if not keeping.done():
                    log.error("election: the keepalive of epoch %d did not end within %g s", term.epoch,
                              self._stop_wait_s)
                elif not keeping.cancelled():
                    keeping.exception()  # seen: its outcome no longer matters

    async def close(self) -> None:
        """Ends the thread and its loop (call when no term is kept any more: at the process's end)."""
        loop, thread, exited = self._loop, self._thread, self._exited
        self._loop = self._thread = self._exited = None
        if loop is None or thread is None or exited is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        try:
            async with asyncio.timeout(self._stop_wait_s):
                await asyncio.shield(exited)
        except TimeoutError:
            log.error("election: the keepalive thread did not end within %g s", self._stop_wait_s)
            return
        thread.join()  # it has left its loop: returns at once

    def _started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            main = asyncio.get_running_loop()
            exited: asyncio.Future[None] = main.create_future()

            def settle() -> None:
                if not exited.done():
                    exited.set_result(None)

            def on_exit() -> None:
                with contextlib.suppress(RuntimeError):  # the main loop is closed: nobody waits
                    main.call_soon_threadsafe(settle)

            # A refresh on the thread takes the GIL dozens of times (its loop, grpc's callbacks), and
            # while the main thread runs a long pass each take waits up to the switch interval (5 ms by
            # default): refreshes took 0.7 s and more and terms were lost. A shorter interval makes
            # the main thread hand over sooner; it costs nothing while no other thread wants the GIL.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_run_loop, args=(loop, on_exit), name="election-keepalive",
                                      daemon=True)  # never holds the process up if a stop hangs
            thread.start()
            self._loop, self._thread, self._exited = loop, thread, exited
        return self._loop

    async def _keep(self, term: Term, settings: ElectionSettings, clock: Clock, stop: asyncio.Event,
                    alive: Callable[[], float]) -> str:
        """On the thread: one term, on a store of its own, until it ends or ``stop`` is set."""
        if stop.is_set():
            return "stopped"
        store = await self._open_store()
        try:
            keeping = asyncio.create_task(keep_term(store, term, settings, clock=clock, alive=alive))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({keeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (keeping, stopping):
                    task.cancel()
                await asyncio.gather(keeping, stopping, return_exceptions=True)
            return "stopped" if keeping.cancelled() else keeping.result()
        finally:
            await store.close()


def _run_loop(loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        on_exit()


# -- the rules, wherever they run ------------------------------------------------------------------------


async def keep_term(store: base.Store, term: Term, settings: ElectionSettings, *, clock: Clock,
                    alive: Callable[[], float] | None = None) -> str:
    """Keeps the term alive; returns why it ended: the keepalive loop's verdict, or at once when a watch
    of the leader key sees it deleted or replaced (the keepalive would notice only at its next turn), or,
    given ``alive`` (when the leader's event loop last ran, on ``clock``), once that loop has been silent
    for ``settings.hang_limit_s`` — having revoked the lease, so that another instance leads at once."""
    loops = {asyncio.create_task(_keepalive(store, term, settings, clock)),
             asyncio.create_task(_check_holder(store, term, settings)),
             asyncio.create_task(_watch_key(store, term))}
    hung: asyncio.Task[str] | None = None
    if alive is not None and settings.hang_limit_s > 0:
        hung = asyncio.create_task(_hung(term, settings, alive, clock))
        loops.add(hung)
    try:
        while loops:
            done, loops = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: t is not hung):  # the hang first: its reason says more
                reason = task.result()
                if reason:
                    return reason
        return "keepalive stopped"  # not reached: the keepalive loop returns only with a reason
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if hung is not None and hung.done() and not hung.cancelled():
            await _revoke(store, term, settings)  # so that another instance leads without the TTL


async def _hung(term: Term, settings: ElectionSettings, alive: Callable[[], float], clock: Clock) -> str:
    """Why the term ends, once the leader's loop has shown no sign of life for the hang limit. Said here,
    on the keeper's side: the hung loop can log nothing."""
    silent = await hung_for(alive, settings.hang_limit_s, clock=clock)
    reason = hang_reason(silent, settings.hang_limit_s)
    log.error("election: epoch %d: %s", term.epoch, reason)
    return reason


async def _revoke(store: base.Store, term: Term, settings: ElectionSettings) -> None:
    """Bounded: a lease left behind expires by itself within the TTL."""
    try:
        async with asyncio.timeout(settings.ttl_s):
            await store.revoke_lease(term.lease_id)
    except (StoreError, TimeoutError) as err:
        raise_if_cancelling()
        log.warning("election: epoch %d: could not revoke the lease (it expires within %ss): %s", term.epoch,
                    settings.ttl_s, err or "timed out")


async def _watch_key(store: base.Store, term: Term) -> str:
    """Why the leader key stopped being ours, or "" when watching failed (the keepalive still checks)."""
    try:
        changes = store.watch(term.epoch, scope=store.schema.leader_range())
        async with contextlib.aclosing(changes):
            async for change in changes:
                if change.kind is base.ChangeKind.DELETE:
                    return "the leader key was deleted (lease expired or revoked)"
                if not isinstance(change.value, LeaderRecord) or change.value.epoch != term.epoch:
                    return "the leader key was replaced"
    except StoreError as err:
        raise_if_cancelling()
        log.info("election: watching the leader key failed (the keepalive still checks it): %s", err)
    return ""


async def _check_holder(store: base.Store, term: Term, settings: ElectionSettings) -> str:
    """Every refresh interval, that the leader key is still the term's (the watch's safety net); returns
    why it is not. A read that fails ends nothing: only refreshes prove the lease."""
    while True:
        await asyncio.sleep(settings.keepalive_interval)
        try:
            holder = await store.get(store.schema.leader())
        except StoreError as err:
            raise_if_cancelling()
            log.info("election: reading the leader key failed (the refreshes go on): %s", err)
            continue
        if holder is None:
            return "the leader key was deleted"
        if holder.epoch != term.epoch:
            return f"the leader key now belongs to epoch {holder.epoch}"


async def _keepalive(store: base.Store, term: Term, settings: ElectionSettings, clock: Clock) -> str:
    """Refreshes the lease every ``refresh_every``, without waiting for the refreshes before to be
    answered; returns why the term ended.

    A refresh answered proves the lease alive until at least its *sending* time plus the TTL; the term
    ends once the newest refresh answered was sent ``step_down_after`` ago. Refreshes waited for one at a
    time, every TTL/3, lost a term to any single answer slower than TTL/3 (a busy etcd's leader applies
    what it has committed before it renews a lease: renewals of 4-7 s at 5,000 hosts, docs/scaling.md).
    Sent every ``refresh_every`` and answered in order, they keep the newest proof at most one answer's
    time plus ``refresh_every`` old: a term survives answers of up to ``step_down_after - refresh_every``.
    A refresh sent late (the first of a term, or after the keepalive itself could not run) may still
    keep the term for one refresh interval past the step-down time, as long as the lease cannot have
    expired by then: if it succeeds, it proves the lease alive.
    """
    last_ok = term.started_at
    grace_until = 0.0
    in_flight: dict[asyncio.Task[int], float] = {}  # refresh -> when it was sent
    due = clock()
    sent_any = False
    quiet_until = 0.0  # failures are logged at most once a refresh interval
    try:
        while True:
            now = clock()
            if now >= due:
                if not sent_any or now - due > settings.refresh_every:  # the first, or sent late
                    grace_until = max(grace_until, min(now + settings.keepalive_interval,
                                                       last_ok + settings.ttl_s))
                sent_any = True
                refresh = asyncio.create_task(_refresh(store, term, settings))
                in_flight[refresh] = now
                due = now + settings.refresh_every
            deadline = max(last_ok + settings.step_down_after, grace_until)
            if now >= deadline:
                return (f"no keepalive succeeded for {now - last_ok:.1f}s: stepped down before the lease "
                        f"({settings.ttl_s}s) could expire")
            wait = max(min(due, deadline) - now, 0.0)
            if not in_flight:
                await asyncio.sleep(wait)
                continue
            done, _ = await asyncio.wait(in_flight, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for refresh in done:
                sent = in_flight.pop(refresh)
                try:
                    refresh.result()
                except LeaseExpired:
                    return "the lease expired or was revoked"
                except (StoreError, TimeoutError) as err:
                    raise_if_cancelling()
                    if clock() >= quiet_until:
                        quiet_until = clock() + settings.keepalive_interval
                        log.warning("election: keepalive failed after %.2fs (%.1fs since the last success, "
                                    "%d refreshes in flight): %s", clock() - sent, clock() - last_ok,
                                    len(in_flight), err or "timed out")
                else:
                    last_ok = max(last_ok, sent)
    finally:
        for refresh in in_flight:
            refresh.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)


async def _refresh(store: base.Store, term: Term, settings: ElectionSettings) -> int:
    """One refresh, given up once it could no longer prove anything (sent a TTL ago)."""
    async with asyncio.timeout(settings.ttl_s):
        return await store.refresh_lease(term.lease_id)


__all__ = ["STOP_WAIT_S", "InLoopKeepalive", "KeepaliveRunner", "StoreOpener", "ThreadedKeepalive",
           "keep_term"]
