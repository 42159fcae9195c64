"""The Connect protocol (connectrpc.com/docs/protocol) as both ends of Shoal use it: the agent's server
(``agent/connect.py``) and the CLI's client (``agent/cli/transport.py``).

Only what the two need, all pure and cheap to import (the CLI imports this on every start):
  * where the HTTP socket lives: beside each unix gRPC socket ``PATH``, at ``PATH.http``;
  * status codes: gRPC's names (what the rest of Shoal uses), Connect's names, and the HTTP statuses
    unary errors are sent with;
  * the 5-byte envelope of streaming messages (flags, big-endian length) and its flags.
Unary calls are ``POST /pkg.Service/Method`` with ``Content-Type: application/proto``; streams use
``application/connect+proto`` and end with an end-of-stream envelope whose JSON carries the error and the
trailing metadata. Compression and the JSON codec are not used by Shoal and are refused.
"""

from __future__ import annotations

HTTP_SUFFIX = ".http"
UNARY_CONTENT_TYPE = "application/proto"
STREAM_CONTENT_TYPE = "application/connect+proto"
ERROR_CONTENT_TYPE = "application/json"
PROTOCOL_VERSION = "1"

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
ENVELOPE_HEADER = 5
# gRPC's default limit on a received message; the same here so both transports accept the same calls.
MAX_MESSAGE_BYTES = 4 << 20

# gRPC status name → (Connect code, HTTP status of a unary error).
CODES: dict[str, tuple[str, int]] = {
    "CANCELLED": ("canceled", 499),
    "UNKNOWN": ("unknown", 500),
    "INVALID_ARGUMENT": ("invalid_argument", 400),
    "DEADLINE_EXCEEDED": ("deadline_exceeded", 504),
    "NOT_FOUND": ("not_found", 404),
    "ALREADY_EXISTS": ("already_exists", 409),
    "PERMISSION_DENIED": ("permission_denied", 403),
    "RESOURCE_EXHAUSTED": ("resource_exhausted", 429),
    "FAILED_PRECONDITION": ("failed_precondition", 400),
    "ABORTED": ("aborted", 409),
    "OUT_OF_RANGE": ("out_of_range", 400),
    "UNIMPLEMENTED": ("unimplemented", 501),
    "INTERNAL": ("internal", 500),
    "UNAVAILABLE": ("unavailable", 503),
    "DATA_LOSS": ("data_loss", 500),
    "UNAUTHENTICATED": ("unauthenticated", 401),
}
_FROM_CONNECT = {connect: name for name, (connect, _) in CODES.items()}
# The protocol's rule for an HTTP error that carries no Connect error body (a proxy, a crash).
_FROM_HTTP = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
              429: "UNAVAILABLE", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


def http_socket_path(grpc_socket: str) -> str:
    """The Connect socket that serves the same API as the unix gRPC socket ``grpc_socket``."""
    return grpc_socket + HTTP_SUFFIX


def code_from_connect(connect_code: str) -> str:
    """Connect's code name → gRPC's status name; an unknown name is UNKNOWN."""
    return _FROM_CONNECT.get(connect_code, "UNKNOWN")


def code_from_http_status(status: int) -> str:
    return _FROM_HTTP.get(status, "UNKNOWN")


def envelope(payload: bytes, *, flags: int = 0) -> bytes:
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def parse_envelope_header(header: bytes) -> tuple[int, int]:
    """(flags, payload length) of a 5-byte envelope header."""
    return header[0], int.from_bytes(header[1:5], "big")


def metadata_header_value(key: str, value: str | bytes) -> str:
    """A metadata value as an HTTP header value: ``-bin`` keys carry unpadded base64."""
    if key.endswith("-bin"):
        import base64

        raw = value if isinstance(value, bytes) else value.encode()
        return base64.b64encode(raw).decode().rstrip("=")
    return value.decode() if isinstance(value, bytes) else value
