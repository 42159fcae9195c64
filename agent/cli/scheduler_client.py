"""How the cluster verbs reach a scheduler: ``--scheduler`` / ``SHOAL_SCHEDULER``, failover, errors.

Every scheduler instance serves the whole API (one of them leads, but any answers), so the address may be
a comma-separated list: calls go to the first that answers, and move on to the next when one cannot be
reached: refused, timed out, or gone in the middle of a call. "Cannot be reached" is UNAVAILABLE without
the ``shoal-error`` metadata a scheduler puts on its own errors; a scheduler that answers UNAVAILABLE
itself (etcd is down) has been reached, and its message is the one to show.

A TCP address is checked with a plain connect first (bounded by ``CONNECT_TIMEOUT``): a dead address
costs that at most, not gRPC's reconnect backoff, and it is recognised without importing grpc. The calls
themselves use ``agent/cli/transport.py`` as the agent verbs do: Connect on a unix socket when the
scheduler has an HTTP socket beside it, else gRPC (mTLS with ``--tls-dir``).
"""

from __future__ import annotations

import _socket
import os

from agent.cli.client import CliError
from agent.cli.transport import AgentTransport, RpcFailure, unix_path
from proto.scheduler.v1 import scheduler_lite as spb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    from agent.protolite import Message, Method, Stream

    Req = TypeVar("Req", bound=Message)
    Resp = TypeVar("Resp", bound=Message)
    T = TypeVar("T")

ENV = "SHOAL_SCHEDULER"
DEFAULT_SCHEDULER = "127.0.0.1:7400"
CONNECT_TIMEOUT = 5.0  # seconds for a TCP connect before trying the next address
# Set on the failure that ends a call when no address could be reached, so the message says so.
UNREACHABLE = "shoal-cli-unreachable"


def resolve_addresses(flag: str | None) -> list[str]:
    raw = flag or os.environ.get(ENV) or DEFAULT_SCHEDULER
    addresses = []
    for part in raw.split(","):
        address = part.strip()
        if address.startswith("/"):
            address = "unix://" + address
        if address:
            addresses.append(address)
    if not addresses:
        raise CliError(f"no scheduler address in {raw!r}: use --scheduler HOST:PORT[,HOST:PORT...]")
    return addresses


def is_unreachable(err: RpcFailure) -> bool:
    return err.code == "UNAVAILABLE" and "shoal-error" not in err.metadata


def _split_host_port(address: str) -> tuple[str, int] | None:
    text = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _tcp_reachable(address: str) -> None:
    """Returns if something accepts TCP connections at ``address``; else ``RpcFailure`` UNAVAILABLE."""
    parts = _split_host_port(address)
    if parts is None:
        return  # not HOST:PORT: let gRPC judge (and word) it
    host, port = parts
    try:
        candidates = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
    except OSError as err:
        raise RpcFailure("UNAVAILABLE", f"cannot resolve {host!r}: {err.strerror or err}") from None
    last: OSError | None = None
    for family, kind, proto, _, where in candidates:
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(where)
            return
        except TimeoutError:
            last = TimeoutError(f"no answer in {CONNECT_TIMEOUT:g}s")
        except OSError as err:
            last = err
        finally:
            sock.close()
    reason = (last.strerror or str(last)) if last is not None else "no address"
    raise RpcFailure("UNAVAILABLE", reason.lower() if reason else "unreachable")


class SchedulerConnection:
    """A protolite transport over several scheduler addresses, with failover (see the module doc)."""

    def __init__(self, addresses: list[str], *, tls_dir: str | None = None, timeout: float | None = None
                 ) -> None:
        self.addresses = addresses
        self.tls_dir = tls_dir
        # Seconds each unary call may wait for its answer before the next address is tried (None: no
        # limit); read when an address's transport is made. A scheduler that accepts connections but
        # does not answer (its process starting, or frozen) then counts as unreachable.
        self.timeout = timeout
        self._index = 0
        self._transports: dict[str, AgentTransport] = {}
        self._checked: set[str] = set()
        # A TCP address accepted the connection, yet the call could not be made: without --tls-dir that
        # is most likely the scheduler's mTLS refusing us, which the message should say.
        self.refused_plain_tcp = False
        # Some address accepted TCP but no call got through (TLS refused us, most likely): retrying the
        # same command will not help, so that is not EXIT_UNAVAILABLE.
        self.call_refused = False

    @property
    def address(self) -> str:
        """The address in use (the one the last call reached)."""
        return self.addresses[self._index]

    def _transport(self, address: str) -> AgentTransport:
        transport = self._transports.get(address)
        if transport is None:
            if unix_path(address) is None and address not in self._checked:
                _tcp_reachable(address)
                self._checked.add(address)
            transport = AgentTransport(address, tls_dir=self.tls_dir, timeout=self.timeout)
            self._transports[address] = transport
        return transport

    def give_up_on_current(self) -> None:
        """Drop the address in use (it failed mid-stream): the next call starts with the next one."""
        address = self.address
        transport = self._transports.pop(address, None)
        self._checked.discard(address)
        if transport is not None:
            transport.close()
        self._index = (self._index + 1) % len(self.addresses)

    def _with_failover(self, call: Callable[[AgentTransport], T]) -> T:
        failures: list[str] = []
        for _ in range(len(self.addresses)):
            address = self.address
            try:
                return call(self._transport(address))
            except RpcFailure as err:
                if not is_unreachable(err):
                    raise
                failures.append(f"{address} ({err.message or err.code})")
                if address in self._checked:
                    self.call_refused = True
                    self.refused_plain_tcp = self.tls_dir is None
                self.give_up_on_current()
        raise RpcFailure("UNAVAILABLE", ", ".join(failures), {UNREACHABLE: "1"})

    # -- the protolite Transport protocol -------------------------------------------------------------------

    def unary(self, method: Method[Req, Resp], request: Req) -> Resp:
        return self._with_failover(lambda t: t.unary(method, request))

    def unary_nowait(self, method: Method[Req, Resp], request: Req) -> None:
        self._with_failover(lambda t: t.unary_nowait(method, request))

    def server_stream(self, method: Method[Req, Resp], request: Req) -> Stream[Resp]:
        return _FailoverStream(self, method, request)

    def stream_stream(self, method: Method[Req, Resp], requests: Iterable[Req]) -> Stream[Resp]:
        return self._with_failover(lambda t: t.stream_stream(method, requests))

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()


class _FailoverStream:
    """A server stream that moves to the next address if it fails before its first message (a stream's
    errors, connection ones included, only show when it is read)."""

    def __init__(self, conn: SchedulerConnection, method: Method[Any, Any], request: Message) -> None:
        self._conn = conn
        self._method = method
        self._request = request
        self._stream: Stream[Any] | None = None
        self._first: Any = None

    def _open(self, transport: AgentTransport) -> Stream[Any]:
        stream = transport.server_stream(self._method, self._request)
        try:
            self._first = next(stream)
        except StopIteration:
            self._first = StopIteration
        return stream

    def __iter__(self) -> _FailoverStream:
        return self

    def __next__(self) -> Any:
        if self._stream is None:
            self._stream = self._conn._with_failover(self._open)
        if self._first is not None:
            first, self._first = self._first, None
            if first is StopIteration:
                raise StopIteration
            return first
        return next(self._stream)

    def cancel(self) -> None:
        if self._stream is not None:
            self._stream.cancel()


def describe_failure(err: RpcFailure, conn: SchedulerConnection) -> str:
    """One line for the terminal: the scheduler's own message, or where we looked when none answered."""
    if is_unreachable(err):
        where = err.message if UNREACHABLE in err.metadata else f"{conn.address} ({err.message or err.code})"
        hint = "choose another with --scheduler ADDR or SHOAL_SCHEDULER"
        if conn.refused_plain_tcp:
            hint += "; a scheduler on TCP requires mTLS: --tls-dir DIR"
        return f"cannot reach the scheduler at {where} ({hint})"
    return err.message or err.code


# sysexits' EX_UNAVAILABLE: no scheduler answered, or the one that did has no etcd quorum. Nothing was done;
# a script may retry the same command (every other failure exits 1: retrying would fail the same way).
EXIT_UNAVAILABLE = 69


class scheduler_errors:  # a context manager used like a function (contextlib not imported: start-up cost)
    """``with scheduler_errors(conn):`` turns an ``RpcFailure`` into a ``CliError``."""

    def __init__(self, conn: SchedulerConnection, *, code: int = 1) -> None:
        self.conn, self.code = conn, code

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if isinstance(err, RpcFailure):
            retry = err.code == "UNAVAILABLE" and not (is_unreachable(err) and self.conn.call_refused)
            code = EXIT_UNAVAILABLE if retry else self.code
            raise CliError(describe_failure(err, self.conn), code=code) from None


class Scheduler:
    """The scheduler's API (lite stub) over a failover connection."""

    def __init__(self, conn: SchedulerConnection) -> None:
        self.conn = conn
        self.api = spb.SchedulerStub(conn)

    def close(self) -> None:
        self.conn.close()


def connect_scheduler(flag: str | None, *, tls_dir: str | None = None, timeout: float | None = None
                      ) -> Scheduler:
    """No I/O yet: the first call connects. ``timeout``: see ``SchedulerConnection.timeout``."""
    return Scheduler(SchedulerConnection(resolve_addresses(flag), tls_dir=tls_dir, timeout=timeout))


__all__ = ["CONNECT_TIMEOUT", "ENV", "EXIT_UNAVAILABLE", "Scheduler", "SchedulerConnection",
           "connect_scheduler", "describe_failure", "is_unreachable", "resolve_addresses", "scheduler_errors"]
