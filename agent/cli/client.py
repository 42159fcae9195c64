"""How the CLI reaches an agent: address from ``--agent`` / ``SHOAL_AGENT``, optional mTLS, and errors.

gRPC failures become one line on stderr with the agent's own message (it is written for users) and an
exit status; an unreachable agent says where we looked and how to point elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from proto.agent.v1 import agent_pb2_grpc as pb_grpc

DEFAULT_AGENT = "unix:///run/shoal/agent.sock"


class CliError(Exception):
    """A failure already phrased for the user; ``code`` is the process exit status."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Agent:
    address: str
    channel: grpc.Channel
    containers: pb_grpc.ContainersStub
    images: pb_grpc.ImagesStub

    @property
    def is_local(self) -> bool:
        return self.address.startswith("unix:")


def resolve_address(flag: str | None) -> str:
    address = flag or os.environ.get("SHOAL_AGENT") or DEFAULT_AGENT
    if address.startswith("/"):
        address = "unix://" + address
    return address


def connect(address: str, *, tls_dir: Path | None = None) -> Agent:
    if address.startswith("unix:") or tls_dir is None:
        channel = grpc.insecure_channel(address)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(tls_dir / "ca.pem").read_bytes(),
            private_key=(tls_dir / "client-key.pem").read_bytes(),
            certificate_chain=(tls_dir / "client.pem").read_bytes(),
        )
        channel = grpc.secure_channel(address, creds)
    return Agent(address=address, channel=channel, containers=pb_grpc.ContainersStub(channel),
                 images=pb_grpc.ImagesStub(channel))


def describe_rpc_error(err: grpc.RpcError, address: str) -> str:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    trailing = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
    if code == grpc.StatusCode.UNAVAILABLE and "shoal-error" not in trailing:
        return (f"cannot reach the agent at {address}: is shoal-agent running? "
                "(choose another with --agent ADDR or SHOAL_AGENT)")
    return details or str(code)


@contextmanager
def rpc_errors(address: str, *, code: int = 1) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as err:
        raise CliError(describe_rpc_error(err, address), code=code) from None

