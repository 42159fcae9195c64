"""Health probes that touch the system: an exec'd command, a TCP connect, an HTTP GET.

TCP and HTTP probes connect to 127.0.0.1 *inside the container's network namespace*, so they work for a
``--network none`` container whose loopback nothing outside can reach. A socket belongs to the network
namespace it was created in, and ``setns`` moves only the calling thread; so a short-lived thread of its
own joins the container's namespace, creates the socket, and goes back (if going back failed the thread
would otherwise be left in the wrong namespace; a throwaway thread takes that risk with it instead of a
pooled one). Deadlines use ``asyncio.timeout`` rather than ``wait_for``, which on 3.11 can swallow a
cancellation. The connect, request and reply then run on the event loop with that socket. Each probe
returns ``(ok, output)`` and never raises for a failing target; output is what a user needs to see why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from concurrent.futures import Future

from agent.linux import namespaces
from agent.runtime.health import OUTPUT_MAX, ProbeOutcome


def _socket_in_netns(pid: int) -> socket.socket:
    """A non-blocking TCP socket created inside ``pid``'s network namespace (see module docstring)."""
    done: Future[socket.socket] = Future()

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(namespaces.path_of(pid, "net"), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    namespaces.join(target, "net")
                    try:
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    finally:
                        namespaces.join(own, "net")
                finally:
                    os.close(target)
            finally:
                os.close(own)
            sock.setblocking(False)
            done.set_result(sock)
        except BaseException as exc:  # handed to the caller
            done.set_exception(exc)

    thread = threading.Thread(target=work, name=f"netns-socket-{pid}", daemon=True)
    thread.start()
    thread.join()
    return done.result()


async def _connect(*, pid: int | None, port: int) -> socket.socket:
    if pid is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
    else:
        sock = await asyncio.to_thread(_socket_in_netns, pid)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno:
        # asyncio's sock_connect puts "Connect call failed (addr)" in strerror; the errno says why.
        return os.strerror(err.errno)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


async def tcp_probe(*, pid: int | None, port: int, timeout: float) -> ProbeOutcome:
    """Healthy if something accepts a connection on 127.0.0.1:PORT in the netns of ``pid`` (None: ours)."""
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(pid=pid, port=port)
    except TimeoutError:
        return False, f"connect to port {port} timed out after {timeout:g}s"
    except OSError as err:
        return False, f"connect to port {port}: {_describe(err)}"
    sock.close()
    return True, f"port {port} accepted a connection"


async def http_probe(*, pid: int | None, port: int, path: str, timeout: float) -> ProbeOutcome:
    """Healthy on a 2xx or 3xx answer to ``GET path`` at 127.0.0.1:PORT in the netns of ``pid``."""
    try:
        async with asyncio.timeout(timeout):
            return await _http_get(pid=pid, port=port, path=path)
    except TimeoutError:
        return False, f"GET {path} on port {port} timed out after {timeout:g}s"
    except (OSError, ValueError, asyncio.IncompleteReadError) as err:
        return False, f"GET {path} on port {port}: {_describe(err)}"


async def _http_get(*, pid: int | None, port: int, path: str) -> ProbeOutcome:
    sock = await _connect(pid=pid, port=port)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        # HTTP/1.0 + Connection: close keeps the exchange simple: the server closes after the reply.
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost:{port}\r\nUser-Agent: shoal-health\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = (await reader.readline()).decode(errors="replace").strip()
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"GET {path}: not an HTTP answer: {status_line[:200]!r}"
        code = int(parts[1])
        return 200 <= code < 400, f"GET {path}: {status_line}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def exec_probe(proc: asyncio.subprocess.Process, *, timeout: float) -> ProbeOutcome:
    """Collect an exec'd probe's output; healthy on exit 0. On timeout its process group is killed.

    ``proc`` must have been started with stdout piped, stderr merged into it and a new session (so
    the group holds the exec helper and the command it runs in the container).
    """
    stdout = proc.stdout
    assert stdout is not None

    async def collect() -> tuple[bytes, int]:
        kept = bytearray()
        while chunk := await stdout.read(65536):
            kept += chunk[: max(0, OUTPUT_MAX - len(kept))]
        return bytes(kept), await proc.wait()

    try:
        async with asyncio.timeout(timeout):
            output, code = await collect()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"health check command timed out after {timeout:g}s"
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = output.decode(errors="replace")
    if code != 0:
        return False, text or f"exit code {code}"
    return True, text


__all__ = ["exec_probe", "http_probe", "tcp_probe"]
