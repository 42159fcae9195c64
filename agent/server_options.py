"""The agent's gRPC server options: what it allows the scheduler's connections to do."""

from __future__ import annotations

# A scheduler may ping each agent it follows as often as every second (HTTP/2 keepalive,
# ``--agent-keepalive``): a dead machine or a cut network shows no error on an open stream, and an
# unanswered ping notices one within seconds whatever the pace of usage reports (docs/architecture.md).
# gRPC servers answer pings sent more often than every 5 minutes, with no data between them, by closing
# the connection ("too_many_pings"); the agent allows one every half second, and pings on a connection
# with no call open.
MIN_PING_INTERVAL_S = 0.5
SERVER_OPTIONS = (("grpc.http2.min_ping_interval_without_data_ms", int(MIN_PING_INTERVAL_S * 1000)),
                  ("grpc.keepalive_permit_without_calls", 1))
