"""``EtcdStore``: the ``Store`` contract on etcd v3, through aetcd's channel and generated stubs.

aetcd's high-level calls leave out what the contract needs — reads at a fixed revision with a page limit,
transactions whose failure branch reads the keys back, bounded timeouts, a watch that resumes — so this
module uses aetcd for the connection and speaks etcd's gRPC API (``aetcd.rpc``) itself:

* One channel over every endpoint (``scheduler.store.endpoints``) with gRPC's ``round_robin`` policy,
  reconnect back-off capped at 1 s (gRPC's default grows to 120 s, far longer than a member's restart)
  and keepalive pings, so a dead member drops out and a returning one is used again.
* Every unary call has a per-attempt timeout (``request_timeout_s``) and is retried on transient failures
  (unreachable, deadline, leader change) until ``retry_deadline_s``; then ``StoreUnavailable`` names the
  endpoints and the last error. Retrying a commit is safe because it is a compare-and-swap: an attempt
  that was applied makes the retry fail its comparisons, and the failure branch's reads show the keys
  holding exactly our bytes, which ``txn.explain_failure`` recognises as success.
* Snapshots and lists read in pages of ``page_size`` keys, every page at the first page's revision (one
  consistent view, however large); a compaction in between restarts the read.
* A watch is its own gRPC stream (``hasleader`` metadata: a member that loses its raft leader ends the
  stream, so the watch moves to one that has one) and is re-created from the last revision delivered + 1
  whenever the stream breaks; etcd sends a revision's events together, so resuming there neither skips nor
  repeats any. History compacted away raises ``Compacted``; failing to re-create it for ``watch_retry_s``
  raises ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from scheduler.store import endpoints as endpoints_mod
from scheduler.store import raw, txn
from scheduler.store.base import (
    MAX_TXN_OPS,
    Change,
    ChangeKind,
    Committed,
    Landed,
    LeaderGuard,
    Lease,
    Listing,
    Op,
    Snapshot,
)
from scheduler.store.echoes import Echoes
from scheduler.store.errors import Compacted, LeaseExpired, StoreError, StoreUnavailable
from scheduler.store.keys import DEFAULT_PREFIX, KeyRange, KeyRef, KeySchema, R
from scheduler.store.raw import RawKV
from scheduler.store.records import LeaderRecord, encode

T = TypeVar("T")

_TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
})
# etcd reports some passing conditions with other codes (3.4 maps most to UNAVAILABLE, not all).
# And gRPC core reports a stream cut by a member dying mid-call as INTERNAL ("Internal error from Core",
# RST_STREAM): a transport failure, not etcd's answer, so it is retried (a watch resumes where it was).
# A member without quorum fails a linearizable read with UNKNOWN "context deadline exceeded".
_TRANSIENT_DETAILS = ("leader changed", "no leader", "timed out", "too many requests", "raft: stopped",
                      "context deadline exceeded",
                      "server stopped", "not capable", "Internal error from Core", "RST_STREAM",
                      "Socket closed", "Connection reset")
_COMPACTED_DETAIL = "required revision has been compacted"
_TOO_MANY_OPS = "too many operations in txn request"  # etcd's answer past its --max-txn-ops
_LEASE_NOT_FOUND = "requested lease not found"
_WATCH_METADATA = (("hasleader", "true"),)
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 0.5


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: str                   # the --etcd flag: http://HOST:PORT[,http://HOST:PORT...]
    prefix: str = DEFAULT_PREFIX
    request_timeout_s: float = 2.0   # one attempt of one call
    retry_deadline_s: float = 5.0    # all attempts of one call
    watch_retry_s: float = 10.0      # a watch failing to resume this long raises StoreUnavailable
    page_size: int = 1000            # keys per range request of a snapshot or list
    max_txn_ops: int = MAX_TXN_OPS   # etcd's --max-txn-ops

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0 or self.retry_deadline_s < self.request_timeout_s:
            raise ValueError("etcd timeouts: need 0 < request_timeout_s <= retry_deadline_s")
        if self.page_size < 1:
            raise ValueError("etcd page_size must be at least 1")


def _channel_options() -> dict[str, Any]:
    return {
        "grpc.lb_policy_name": "round_robin",
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.min_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
        # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.max_receive_message_length": 64 * 1024 * 1024,
    }


def _is_transient(err: grpc.aio.AioRpcError) -> bool:
    details = err.details() or ""
    return err.code() in _TRANSIENT_CODES or any(d in details for d in _TRANSIENT_DETAILS)


def _maybe_applied(err: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call may have reached etcd (a connection never made cannot have)."""
    details = (err.details() or "").lower()
    return not (err.code() is grpc.StatusCode.UNAVAILABLE
                and ("failed to connect" in details or "connection refused" in details))


def _kv(kv: Any) -> RawKV:
    return RawKV(kv.key.decode(errors="replace"), kv.value, kv.create_revision, kv.mod_revision, kv.lease)


@dataclass
class EtcdStats:
    """Counters for the scheduler's metrics (and for tests that want to see a failover happen)."""

    calls: int = 0           # unary calls, each counted once however often it was attempted
    retries: int = 0         # attempts after a transient failure
    watch_resumes: int = 0   # watch streams re-created after breaking


class EtcdStore:
    """The etcd-backed ``Store`` (see the module docstring). Open with ``await EtcdStore.open(settings)``."""

    def __init__(self, settings: EtcdSettings, client: aetcd.Client, target: str) -> None:
        self._settings = settings
        self._schema = KeySchema(settings.prefix)
        self._client = client
        self._target = target
        self._kv = client.kvstub
        self._lease = client.leasestub
        self._watch = rpc.WatchStub(client.channel)
        self._closed = False
        self._gate = txn.Gate()  # commits one after the other go ahead of pipelined ones
        self._echoes = Echoes()  # its own writes, not decoded again when its watch echoes them
        self.stats = EtcdStats()

    @classmethod
    async def open(cls, settings: EtcdSettings,
                   resolver: endpoints_mod.Resolver = endpoints_mod.resolve_with_getaddrinfo) -> EtcdStore:
        """A store on ``settings.endpoints``. Nothing is sent yet: an unreachable etcd shows on the first
        call (as ``StoreUnavailable``), not here."""
        endpoints = endpoints_mod.resolve(endpoints_mod.parse_endpoints(settings.endpoints), resolver)
        target = endpoints_mod.grpc_target(endpoints)
        # aetcd joins host and port into the target: split ours at its last colon.
        host, _, port = target.rpartition(":")
        client = aetcd.Client(host=host, port=int(port), options=_channel_options())
        await client.connect()
        return cls(settings, client, target)

    @property
    def schema(self) -> KeySchema:
        return self._schema

    @property
    def target(self) -> str:
        return self._target

    async def close(self) -> None:
        self._closed = True
        await self._client.close()

    # -- calls with bounded retries --------------------------------------------------------------------

    def _unavailable(self, what: str, err: BaseException | None, elapsed: float) -> StoreUnavailable:
        last = ""
        if isinstance(err, grpc.aio.AioRpcError):
            last = f" (last error: {err.code().name}: {err.details()})"
        elif err is not None:
            last = f" (last error: {err})"
        return StoreUnavailable(f"etcd at {self._settings.endpoints} unreachable: {what} failed for "
                                f"{elapsed:.1f}s{last}")

    async def _call(self, what: str, attempt: Callable[[float], Awaitable[T]],
                    on_error: Callable[[grpc.aio.AioRpcError], None] | None = None) -> T:
        """``attempt(timeout)`` until it succeeds, fails for good, or the retry deadline passes."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._settings.retry_deadline_s
        delay = _BACKOFF_FIRST_S
        self.stats.calls += 1
        while True:
            if self._closed:
                raise StoreUnavailable(f"the etcd store is closed ({what})")
            timeout = min(self._settings.request_timeout_s, deadline - loop.time())
            try:
                return await attempt(max(timeout, 0.001))
            except grpc.aio.AioRpcError as err:
                if on_error is not None:
                    on_error(err)
                if not _is_transient(err) or self._closed:
                    raise self._refused(what, err) from None
                if loop.time() + delay >= deadline:
                    raise self._unavailable(what, err, loop.time() - started) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
            self.stats.retries += 1

    def _refused(self, what: str, err: grpc.aio.AioRpcError) -> StoreError:
        if self._closed:
            return StoreUnavailable(f"the etcd store is closed ({what})")
        details = err.details() or ""
        if _LEASE_NOT_FOUND in details:
            return LeaseExpired(f"{what}: the lease expired or was revoked")
        return StoreError(f"etcd refused {what}: {err.code().name}: {details}")

    # -- reads -----------------------------------------------------------------------------------------

    async def _range(self, what: str, start: str, end: str) -> tuple[int, list[RawKV]]:
        """Every key in [start, end) at one revision, page by page; restarts if that revision is compacted
        meanwhile."""
        for _ in range(5):
            try:
                return await self._range_once(what, start.encode(), end.encode())
            except _RevisionCompacted:
                continue
        raise StoreUnavailable(f"{what}: etcd compacted the revision being read five times in a row")

    async def _range_once(self, what: str, start: bytes, end: bytes) -> tuple[int, list[RawKV]]:
        revision = 0
        out: list[RawKV] = []
        key = start
        while True:
            request = rpc.RangeRequest(key=key, range_end=end, limit=self._settings.page_size,
                                       revision=revision)

            async def attempt(timeout: float, request: Any = request) -> Any:
                return await self._kv.Range(request, timeout=timeout)

            try:
                response = await self._call(what, attempt)
            except StoreError as err:
                if revision and _COMPACTED_DETAIL in str(err):
                    raise _RevisionCompacted from None
                raise
            revision = revision or response.header.revision
            out.extend(_kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return revision, out
            key = response.kvs[-1].key + b"\x00"

    async def snapshot(self) -> Snapshot:
        everything = self._schema.everything()
        revision, kvs = await self._range("snapshot", everything.start, everything.end)
        return raw.build_snapshot(self._schema, revision, kvs)

    async def get(self, ref: KeyRef[R]) -> R | None:
        request = rpc.RangeRequest(key=ref.key.encode())
        response = await self._call(f"get {ref.key}", lambda t: self._kv.Range(request, timeout=t))
        if not response.kvs:
            return None
        return raw.decode(ref.record_type, _kv(response.kvs[0]))

    async def list(self, key_range: KeyRange[R]) -> Listing[R]:
        revision, kvs = await self._range(f"list {key_range.start}", key_range.start, key_range.end)
        return raw.build_listing(key_range.record_type, revision, kvs)

    async def current_revision(self) -> int:
        request = rpc.RangeRequest(key=self._schema.leader().key.encode(), count_only=True)
        response = await self._call("read the revision", lambda t: self._kv.Range(request, timeout=t))
        revision: int = response.header.revision
        return revision

    # -- writes ----------------------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op], *, guard: LeaderGuard | None = None,
                     in_flight: int = 1, on_landed: Landed | None = None) -> Committed:
        committed = await txn.commit_batch(ops, self._execute, schema=self._schema, guard=guard,
                                           max_txn_ops=self._settings.max_txn_ops, in_flight=in_flight,
                                           gate=self._gate, on_landed=on_landed, echoes=self._echoes)
        return committed

    async def _execute(self, plan: txn.TxnPlan) -> int:
        request = _txn_request(plan)
        attempts = 0
        maybe_applied = False

        def note(err: grpc.aio.AioRpcError) -> None:
            nonlocal maybe_applied
            maybe_applied = maybe_applied or _maybe_applied(err)

        async def attempt(timeout: float) -> Any:
            nonlocal attempts
            attempts += 1
            return await self._kv.Txn(request, timeout=timeout)

        try:
            response = await self._call(f"commit of {len(plan.writes)} writes", attempt, note)
        except StoreUnavailable as err:
            if not maybe_applied:
                raise
            raise StoreUnavailable(f"{err}; the transaction may or may not have been applied: read again",
                                   outcome_unknown=True) from None
        if response.succeeded:
            revision: int = response.header.revision
            return revision
        result = txn.explain_failure(plan, _txn_outcome(plan, response), retried=attempts > 1)
        if isinstance(result, int):
            return result
        raise result

    async def check_txn_ops(self) -> None:
        """Raise ``StoreError`` if etcd refuses a transaction of ``max_txn_ops`` operations (its own
        ``--max-txn-ops`` is lower): asked once at startup, so a mismatch is said then, not as every pass
        failing. A read-only transaction of comparisons on a key that is never written: it changes nothing."""
        request = rpc.TxnRequest()
        probe = (self._settings.prefix + "txn-ops-probe").encode()
        for _ in range(self._settings.max_txn_ops):
            compare = request.compare.add()
            compare.key, compare.target, compare.result = probe, rpc.Compare.VERSION, rpc.Compare.EQUAL
        try:
            await self._call("a transaction-size check", lambda t: self._kv.Txn(request, timeout=t))
        except StoreError as err:
            if _TOO_MANY_OPS in str(err):
                raise StoreError(f"etcd at {self._settings.endpoints} allows fewer than "
                                 f"{self._settings.max_txn_ops} operations in a transaction: set the "
                                 "scheduler's --etcd-max-txn-ops to etcd's --max-txn-ops (128 by "
                                 "default)") from None
            raise

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision)
        try:
            await self._call(f"compact at {revision}", lambda t: self._kv.Compact(request, timeout=t))
        except StoreError as err:
            if _COMPACTED_DETAIL not in str(err):
                raise

    # -- watch -----------------------------------------------------------------------------------------

    async def watch(self, after_revision: int, *,
                    scope: KeyRange[Any] | None = None) -> AsyncGenerator[Change, None]:
        everything = self._schema.everything()
        start, end = (scope.start, scope.end) if scope is not None else (everything.start, everything.end)
        loop = asyncio.get_running_loop()
        last = after_revision
        failing_since: float | None = None
        delay = _BACKOFF_FIRST_S
        last_error: BaseException | None = None
        while True:
            if self._closed:
                raise StoreUnavailable("the etcd store is closed (watch)")
            call = self._watch.Watch(metadata=_WATCH_METADATA)
            try:
                create = rpc.WatchCreateRequest(key=start.encode(), range_end=end.encode(),
                                                start_revision=last + 1)
                await call.write(rpc.WatchRequest(create_request=create))
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    if response.compact_revision:
                        raise Compacted(last + 1, response.compact_revision)
                    if response.canceled:
                        last_error = StoreError(f"watch canceled by etcd: {response.cancel_reason}")
                        break
                    if response.created:
                        failing_since, delay = None, _BACKOFF_FIRST_S
                    for event in response.events:
                        kind = ChangeKind.DELETE if event.type == rpc.Event.DELETE else ChangeKind.PUT
                        kv = _kv(event.kv)
                        last = kv.mod_revision
                        change = raw.change_from(self._schema, kind, kv, self._echoes)
                        if change is not None:
                            yield change
            except grpc.aio.AioRpcError as err:
                if not _is_transient(err) or self._closed:
                    raise self._refused("watch", err) from None
                last_error = err
            finally:
                call.cancel()
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= self._settings.watch_retry_s:
                raise self._unavailable(f"resuming the watch after revision {last}", last_error,
                                        now - failing_since)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
            self.stats.watch_resumes += 1

    # -- leases and the leader key ---------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        request = rpc.LeaseGrantRequest(TTL=ttl_s)
        response = await self._call("grant a lease", lambda t: self._lease.LeaseGrant(request, timeout=t))
        if response.error:
            raise StoreError(f"etcd refused a lease of {ttl_s}s: {response.error}")
        return Lease(response.ID, response.TTL)

    async def refresh_lease(self, lease_id: int) -> int:
        async def attempt(timeout: float) -> int:
            call = self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=timeout)
            try:
                async for reply in call:
                    ttl: int = reply.TTL
                    return ttl
                return 0
            finally:
                call.cancel()

        ttl = await self._call("refresh the lease", attempt)
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseExpired):
            await self._call("revoke the lease", lambda t: self._lease.LeaseRevoke(request, timeout=t))

    async def campaign(self, record: LeaderRecord, *, lease_id: int) -> LeaderRecord:
        key = self._schema.leader().key.encode()
        value = encode(dataclasses.replace(record, revision=0))
        request = rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                                 create_revision=0)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease_id)),
                     rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        response = await self._call("campaign", lambda t: self._kv.Txn(request, timeout=t))
        kvs = response.responses[-1].response_range.kvs
        if not kvs:  # both branches read the key after the comparison, in the same transaction
            raise StoreError("campaign: the leader key vanished inside a transaction (a bug)")
        return raw.decode(LeaderRecord, _kv(kvs[0]))


class _RevisionCompacted(Exception):
    """A page of a paginated read hit a compacted revision (internal: the read restarts)."""


def _txn_request(plan: txn.TxnPlan) -> Any:
    # Filled in place with add(): building each message with its constructor costs twice as much.
    request = rpc.TxnRequest()
    for w in plan.writes:
        key = w.key.encode()
        compare = request.compare.add()
        compare.key, compare.target, compare.result = key, rpc.Compare.MOD, rpc.Compare.EQUAL
        compare.mod_revision = w.expected
        if w.value is None:
            request.success.add().request_delete_range.key = key
        else:
            put = request.success.add().request_put
            put.key, put.value = key, w.value
            if w.lease:
                put.lease = w.lease
        request.failure.add().request_range.key = key
    if plan.guard is not None:
        leader = plan.leader_key.encode()
        compare = request.compare.add()
        compare.key, compare.target, compare.result = leader, rpc.Compare.CREATE, rpc.Compare.EQUAL
        compare.create_revision = plan.guard.epoch
        request.failure.add().request_range.key = leader
    return request


def _txn_outcome(plan: txn.TxnPlan, response: Any) -> txn.TxnOutcome:
    reads = [r.response_range.kvs for r in response.responses]
    current = {w.key: (_kv(kvs[0]) if kvs else None) for w, kvs in zip(plan.writes, reads, strict=False)}
    leader = None
    if plan.guard is not None and reads[len(plan.writes):]:
        kvs = reads[len(plan.writes)]
        leader = _kv(kvs[0]) if kvs else None
    return txn.TxnOutcome(False, response.header.revision, current, leader)


__all__ = ["EtcdSettings", "EtcdStats", "EtcdStore"]
