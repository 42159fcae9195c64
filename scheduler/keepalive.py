"""Where the leader's lease is kept alive: on the main event loop, or on a thread of its own.

While an instance leads, ``Election`` hands the term to a ``KeepaliveRunner``, whose ``keep`` refreshes
the lease every TTL/3, checks that the leader key is still the term's, watches the key, and returns why
the term ended: the lease expired or was revoked, the key was deleted or replaced, or no refresh
succeeded for ``step_down_after`` (``keep_term``, the rules themselves, are the same wherever they run).

* ``ThreadedKeepalive`` (the scheduler's, on etcd) runs ``keep_term`` on a thread with an asyncio loop and
  an etcd connection of its own (a second store opened from the same settings). The leader's main loop
  runs reconcile passes, one session per host, the API and the watches; a pass of 0.3 s there made the
  in-loop keepalive miss its 2 s TTL's refresh, and every lost term cost a snapshot, a reconnect to every
  host and another stall (docs/scaling.md, limit 1). On its own loop the keepalive needs the GIL for
  microseconds per refresh, so a leader keeps its term as long as its process lives and reaches etcd,
  however long its passes are. The loops meet only through thread-safe calls: the thread reports the end
  of the term with ``call_soon_threadsafe`` on the main loop (whose ``Election`` then cancels the leading
  task), and the main loop stops the thread with ``call_soon_threadsafe`` on the thread's loop; the thread
  closes its store and ends before ``keep`` returns, whether the term ended or ``keep`` was cancelled.
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
leader from losing a term it still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from scheduler.cancellation import raise_if_cancelling
from scheduler.store import base
from scheduler.store.errors import LeaseExpired, StoreError
from scheduler.store.records import LeaderRecord

if TYPE_CHECKING:
    from scheduler.election import ElectionSettings, Term

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
StoreOpener = Callable[[], Awaitable[base.Store]]

# How long ending the keepalive thread may take before ``keep`` goes on without it (a bug: the thread's
# calls are all bounded by the step-down time, and closing its store by gRPC's own shutdown).
STOP_WAIT_S = 10.0


class KeepaliveRunner(Protocol):
    """Keeps a term's lease alive while the instance leads."""

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        """Returns why ``term`` ended (lease gone, key deleted or replaced, no refresh for
        ``settings.step_down_after``); raises if keeping failed in an unexpected way (the term ends too).
        Cancel it to stop keeping the lease (the caller then revokes it). Nothing it started outlives it."""
        ...


class InLoopKeepalive:
    """``keep_term`` on the caller's event loop and store."""

    def __init__(self, store: base.Store) -> None:
        self._store = store

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        return await keep_term(self._store, term, settings, clock=clock)


class ThreadedKeepalive:
    """``keep_term`` on a thread of its own, with its own event loop and a store from ``open_store``
    (called on that loop, once per term; the store is closed when the term ends)."""

    def __init__(self, open_store: StoreOpener, *, stop_wait_s: float = STOP_WAIT_S) -> None:
        self._open_store = open_store
        self._stop_wait_s = stop_wait_s

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        worker = _KeepaliveThread(self._open_store, term, settings, clock)
        worker.start()
        try:
            return await worker.ended
        finally:
            await worker.stop(self._stop_wait_s)


class _KeepaliveThread:
    """One term's keepalive thread: ``ended`` (on the main loop) gets the term's end, ``stop`` ends it."""

    def __init__(self, open_store: StoreOpener, term: Term, settings: ElectionSettings,
                 clock: Clock) -> None:
        self._open_store = open_store
        self._term = term
        self._settings = settings
        self._clock = clock
        self._main = asyncio.get_running_loop()
        self.ended: asyncio.Future[str] = self._main.create_future()
        self._exited: asyncio.Future[None] = self._main.create_future()
        # Set by the thread once its loop runs; the lock orders that against a stop asked for meanwhile.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"election-keepalive-{term.epoch}",
                                        daemon=True)  # never holds the process up if a stop hangs

    def start(self) -> None:
        self._thread.start()

    async def stop(self, wait_s: float) -> None:
        """Asks the thread to end and waits (without blocking the main loop) until it has."""
        with self._lock:
            self._stopping = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed: the thread is ending
                loop.call_soon_threadsafe(stop.set)
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.shield(self._exited)
        except TimeoutError:
            log.error("election: the keepalive thread of epoch %d did not end within %g s",
                      self._term.epoch, wait_s)
            return
        self._thread.join()  # it has left its loop: this returns at once

    # -- on the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._keep())
        except BaseException as err:  # the thread's loop itself failed: the term cannot be kept
            self._report(self.ended, error=err)
        finally:
            self._report(self._exited)

    async def _keep(self) -> None:
        stop = asyncio.Event()
        with self._lock:
            if self._stopping:
                return
            self._loop, self._stop = asyncio.get_running_loop(), stop
        store: base.Store | None = None
        try:
            store = await self._open_store()
            keeping = asyncio.create_task(keep_term(store, self._term, self._settings, clock=self._clock))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({keeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (keeping, stopping):
                    task.cancel()
                await asyncio.gather(keeping, stopping, return_exceptions=True)
            if not keeping.cancelled():
                error = keeping.exception()
                if error is None:
                    self._report(self.ended, keeping.result())
                else:
                    self._report(self.ended, error=error)
        except Exception as err:  # opening the store failed: the term ends, saying why
            self._report(self.ended, error=err)
        finally:
            if store is not None:
                await store.close()

    def _report(self, future: asyncio.Future[T], value: T | None = None, *,
                error: BaseException | None = None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the main loop is closed: nobody waits any more
            self._main.call_soon_threadsafe(settle)


# -- the rules, wherever they run ------------------------------------------------------------------------


class _Deposed(Exception):
    """The leader key is gone or belongs to another term."""


async def keep_term(store: base.Store, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
    """Keeps the term alive; returns why it ended: the keepalive loop's verdict, or at once when a watch
    of the leader key sees it deleted or replaced (the keepalive would notice only at its next turn)."""
    loops = {asyncio.create_task(_keepalive(store, term, settings, clock)),
             asyncio.create_task(_watch_key(store, term))}
    try:
        while loops:
            done, loops = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                reason = task.result()
                if reason:
                    return reason
        return "keepalive stopped"  # not reached: the keepalive loop returns only with a reason
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


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


async def _keepalive(store: base.Store, term: Term, settings: ElectionSettings, clock: Clock) -> str:
    """Refreshes the lease every TTL/3; returns why the term ended."""
    last_ok = term.started_at
    while True:
        sent = clock()
        remaining = last_ok + settings.step_down_after - sent
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                await store.refresh_lease(term.lease_id)
                holder = await store.get(store.schema.leader())
                if holder is None or holder.epoch != term.epoch:
                    raise _Deposed("the leader key was deleted" if holder is None else
                                   f"the leader key now belongs to epoch {holder.epoch}")
            last_ok = sent
        except LeaseExpired:
            return "the lease expired or was revoked"
        except _Deposed as err:
            return str(err)
        except (StoreError, TimeoutError) as err:
            raise_if_cancelling()
            log.warning("election: keepalive failed: %s", err or "timed out")
        now = clock()
        if now - last_ok >= settings.step_down_after:
            return (f"no keepalive succeeded for {now - last_ok:.1f}s: stepped down before the lease "
                    f"({settings.ttl_s}s) could expire")
        next_at = min(sent + settings.keepalive_interval, last_ok + settings.step_down_after)
        await asyncio.sleep(max(next_at - now, 0.0))


__all__ = ["STOP_WAIT_S", "InLoopKeepalive", "KeepaliveRunner", "StoreOpener", "ThreadedKeepalive",
           "keep_term"]
