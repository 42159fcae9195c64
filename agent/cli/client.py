"""How the CLI reaches an agent: address from ``--agent`` / ``SHOAL_AGENT``, optional mTLS, and errors.

Failures become one line on stderr with the agent's own message (it is written for users) and an exit
status; an unreachable agent says where we looked and how to point elsewhere. The transport (Connect on a
local agent's HTTP socket, gRPC otherwise) is ``agent/cli/transport.py``; everything here and above works
on the lite messages of ``proto/agent/v1/agent_lite.py`` whichever it is.
"""

from __future__ import annotations

import os

from agent.cli.transport import AgentTransport, RpcFailure
from proto.agent.v1 import agent_lite as pb

DEFAULT_AGENT = "unix:///run/shoal/agent.sock"


class CliError(Exception):
    """A failure already phrased for the user; ``code`` is the process exit status."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Agent:
    """One agent's services, over one transport."""

    def __init__(self, address: str, transport: AgentTransport) -> None:
        self.address = address
        self.transport = transport
        self.containers = pb.ContainersStub(transport)
        self.images = pb.ImagesStub(transport)
        self.host = pb.HostStub(transport)
        self.system = pb.SystemStub(transport)

    @property
    def is_local(self) -> bool:
        return self.address.startswith("unix:")

    def close(self) -> None:
        self.transport.close()


def resolve_address(flag: str | None) -> str:
    address = flag or os.environ.get("SHOAL_AGENT") or DEFAULT_AGENT
    if address.startswith("/"):
        address = "unix://" + address
    return address


def connect(address: str, *, tls_dir: str | None = None) -> Agent:
    """No I/O yet: the transport connects on the first call."""
    return Agent(address, AgentTransport(address, tls_dir=tls_dir))


def describe_rpc_error(err: RpcFailure, address: str) -> str:
    if err.code == "UNAVAILABLE" and "shoal-error" not in err.metadata:
        return (f"cannot reach the agent at {address}: is shoal-agent running? "
                "(choose another with --agent ADDR or SHOAL_AGENT)")
    return err.message or err.code


class rpc_errors:  # a context manager used like a function (contextlib not imported: start-up cost)
    """``with rpc_errors(address):`` turns an ``RpcFailure`` into a ``CliError`` with ``code``."""

    def __init__(self, address: str, *, code: int = 1) -> None:
        self.address, self.code = address, code

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if isinstance(err, RpcFailure):
            raise CliError(describe_rpc_error(err, self.address), code=self.code) from None
