"""The leader lease kept by a process of its own: ``ProcessKeepalive``, and the keeper it starts.

A thread of the scheduler's process (``ThreadedKeepalive``) still shares the GIL with the leader's main
loop, and at 2,000 hosts a new term's allocations made full garbage collections of 0.3-0.8 s every
second: no refresh could run, and terms were lost one after another, each costing a reconnect to every
host (docs/scaling.md). The keeper is a small process started with the scheduler that runs the same
rules (``keepalive.keep_term``) on its own interpreter, loop and etcd connection.

The two speak JSON lines over the keeper's stdin and stdout: ``{"keep": {term and settings}}`` starts
keeping a term, ``{"stop": epoch}`` stops it, ``{"alive": t}`` (every 0.25 s while a term is kept, from the
scheduler's event loop, ``t`` its monotonic time) says that loop still runs — a term whose scheduler has
said nothing for the hang limit ends and its lease is revoked (``scheduler.liveness``); the keeper
answers ``{"ended": epoch, "why": reason}`` once for each term, whether it ended by itself (the lease
expired, the key was replaced, refreshes failed, the scheduler hung) or was stopped. The keeper
(``python -m scheduler.keeper``) exits when its stdin closes, so a scheduler that dies, even SIGKILLed,
takes it along at once — and the keeper revokes the lease of a term it still kept, so another instance
leads without waiting out the TTL. If the keeper dies, the term it kept ends ("the lease keeper exited")
and the next term starts a new one.

Why keeping a lease for a leader whose process is stalled is safe is the same as for the thread
(``scheduler.keepalive``): every commit carries the term's epoch guard and every agent call its fence.
``clock`` must be ``time.monotonic``: the term's start is a monotonic time, the same in both processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from scheduler.election import ElectionSettings, Term
from scheduler.keepalive import STOP_WAIT_S, Clock, keep_term
from scheduler.liveness import LoopAlive
from scheduler.store.factory import open_store

log = logging.getLogger(__name__)

KEEPER_EXITED = "the lease keeper exited"
ALIVE_BUFFER = 4096  # bytes of unsent "alive" lines past which more are dropped
REVOKE_WAIT_S = 2.0


class ProcessKeepalive:
    """Terms kept by a keeper process: started by ``start`` (or the first term), serving every term, and
    started again for the next term if it died."""

    def __init__(self, etcd: str, prefix: str, *, python: str = sys.executable,
                 stop_wait_s: float = STOP_WAIT_S) -> None:
        self._argv = [python, "-m", "scheduler.keeper", "--etcd", etcd, "--prefix", prefix]
        self._stop_wait_s = stop_wait_s
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ended: dict[int, asyncio.Future[str]] = {}

    async def start(self) -> None:
        """Start the keeper now, before any term: a term's first refresh must not wait for a Python
        process to start and import (a second or more on a busy machine, of a 2 s TTL)."""
        await self._started()

    async def keep(self, term: Term, settings: ElectionSettings, *, clock: Clock) -> str:
        if clock is not time.monotonic:
            raise ValueError("a keeper process keeps time with time.monotonic only")
        proc = await self._started()
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._ended[term.epoch] = ended
        alive = LoopAlive(clock=clock, on_tick=lambda at: self._tell_alive(proc, at))
        try:
            await self._send(proc, {"keep": {"term": asdict(term), "settings": asdict(settings)}})
            alive.start()
            return await asyncio.shield(ended)
        finally:
            await alive.close()
            if not ended.done():  # cancelled: stop keeping, and wait until the keeper says so
                with contextlib.suppress(OSError, RuntimeError):
                    await self._send(proc, {"stop": term.epoch})
                await asyncio.wait({ended}, timeout=self._stop_wait_s)
                if not ended.done():
                    log.error("election: the keeper did not stop epoch %d within %g s", term.epoch,
                              self._stop_wait_s)
            self._ended.pop(term.epoch, None)

    async def close(self) -> None:
        """Ends the keeper (its stdin closes) and waits for it."""
        proc, reader = self._proc, self._reader
        self._proc = self._reader = None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(self._stop_wait_s):
                await proc.wait()
        except TimeoutError:
            log.error("election: the lease keeper did not exit within %g s; killing it", self._stop_wait_s)
            proc.kill()
            await proc.wait()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _started(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            # The keeper logs to the scheduler's stderr; its stdout is the protocol.
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self._reader = asyncio.create_task(self._read(self._proc), name="lease-keeper-reader")
        return self._proc

    @staticmethod
    def _tell_alive(proc: asyncio.subprocess.Process, at: float) -> None:
        """From the event loop, not waiting: a keeper that does not read (stopped, or gone) is not
        written to beyond what its pipe and a small buffer hold."""
        stdin = proc.stdin
        if stdin is None or stdin.is_closing() or stdin.transport.get_write_buffer_size() > ALIVE_BUFFER:
            return
        stdin.write(b'{"alive": %.3f}\n' % at)

    @staticmethod
    async def _send(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        await proc.stdin.drain()

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                answer = json.loads(line)
                ended = self._ended.get(int(answer["ended"]))
                if ended is not None and not ended.done():
                    ended.set_result(str(answer["why"]))
        finally:
            for ended in self._ended.values():  # whatever the keeper kept ends with it
                if not ended.done():
                    ended.set_result(KEEPER_EXITED)


# -- the keeper process ------------------------------------------------------------------------------------


class Keeper:
    """The process side: one task per term, on a store of its own per term."""

    def __init__(self, etcd: str, prefix: str, out: Any) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.out = out
        self.terms: dict[int, asyncio.Task[None]] = {}
        self.orphaned = False  # the scheduler is gone: revoke what is still kept
        self.alive_at = time.monotonic()  # the scheduler's loop last said it runs (its monotonic time)

    def handle(self, message: dict[str, Any]) -> None:
        if "alive" in message:
            self.alive_at = max(self.alive_at, float(message["alive"]))
        elif "keep" in message:
            term = Term(**message["keep"]["term"])
            settings = ElectionSettings(**message["keep"]["settings"])
            self.alive_at = max(self.alive_at, time.monotonic())  # it just spoke
            self.terms[term.epoch] = asyncio.create_task(self._keep(term, settings))
        elif "stop" in message:
            task = self.terms.get(int(message["stop"]))
            if task is not None:
                task.cancel()

    async def _keep(self, term: Term, settings: ElectionSettings) -> None:
        why = "stopped"
        try:
            store = await open_store(self.etcd, prefix=self.prefix)
            try:
                why = await keep_term(store, term, settings, clock=time.monotonic,
                                      alive=lambda: self.alive_at)
            except asyncio.CancelledError:
                if self.orphaned:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(REVOKE_WAIT_S):
                            await store.revoke_lease(term.lease_id)
                    log.info("lease keeper: the scheduler is gone; revoked the lease of epoch %d", term.epoch)
                raise
            finally:
                await store.close()
        except asyncio.CancelledError:
            why = "stopped"
        except Exception as err:  # the term ends, with the reason; the keeper goes on for the next one
            why = f"the lease keeper failed: {err}"
        finally:
            self.terms.pop(term.epoch, None)
            with contextlib.suppress(OSError):  # the scheduler is gone: nobody to tell
                self.out.write(json.dumps({"ended": term.epoch, "why": why}) + "\n")
                self.out.flush()

    async def close(self) -> None:
        self.orphaned = True
        for task in list(self.terms.values()):
            task.cancel()
        await asyncio.gather(*self.terms.values(), return_exceptions=True)


async def run(etcd: str, prefix: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    keeper = Keeper(etcd, prefix, sys.stdout)
    try:
        async for line in reader:  # ends when the scheduler closes the pipe, or dies
            keeper.handle(json.loads(line))
    finally:
        await keeper.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scheduler.keeper",
                                     description="keeps a shoal-scheduler's leader lease (started by it)")
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args(argv)
    # Ctrl-C or a SIGTERM to the scheduler's process group is the scheduler's to handle: it resigns,
    # then closes this process's stdin. A keeper that died first would end the term under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.etcd, args.prefix))


if __name__ == "__main__":
    main()


__all__ = ["KEEPER_EXITED", "ProcessKeepalive"]
