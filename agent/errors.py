"""Shoal agent's exception tree.

Every failure a user can cause or act on is one of these; the gRPC servicer is the only place that maps
them to status codes (NotFound → NOT_FOUND, InvalidArgument → INVALID_ARGUMENT, ...). Messages are written
for the person at the terminal: say what was wrong and, where it helps, what to do.
"""

from __future__ import annotations

# How much of a caller's value an error message repeats: a 100 kB name echoed back whole would not fit
# in the status trailer (gRPC's metadata limit is 8 KiB) and nobody reads it anyway.
QUOTE_MAX = 80


def quoted(value: str, *, limit: int = QUOTE_MAX) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with its full length said."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


class ShoalError(Exception):
    """Base of all agent errors. ``str(err)`` is a one-line message for the user."""


class NotFound(ShoalError):
    """An image, container or file named by the caller does not exist."""


class InvalidArgument(ShoalError):
    """The request itself is malformed: a bad limit, a bad reference, an image with no command."""


class AlreadyExists(ShoalError):
    """An id or name is taken by something different from what was asked for."""


class FailedPrecondition(ShoalError):
    """The request is well formed but the current state forbids it (image in use, container running)."""


class StaleEpoch(FailedPrecondition):
    """A fenced request carried an epoch older than one this agent already saw from the same owner: a
    newer controller (leader) exists, and the late request of a deposed one must not act."""


class OutOfRange(ShoalError):
    """A position the caller resumed from (an event sequence) is outside what is kept."""


class PermissionDenied(ShoalError):
    """The caller's identity (its certificate's role, or its transport) may not do this."""


class HostileArchive(InvalidArgument):
    """An image archive tried to escape the store, fake a whiteout or otherwise lie; nothing was kept."""


class DigestMismatch(InvalidArgument):
    """A blob or layer did not hash to the digest its manifest or config promised."""


class ResourceExhausted(ShoalError):
    """The host ran out of something: disk space while unpacking, memory, pids."""


class LaunchError(ShoalError):
    """A container process could not be set up or exec'd.

    ``kind`` says which: ``"not-found"`` (the command does not exist in the image, exit 127),
    ``"not-executable"`` (exit 126) or ``"setup"`` (namespaces, mounts, cgroups, credentials).
    """

    def __init__(self, message: str, *, kind: str = "setup") -> None:
        super().__init__(message)
        self.kind = kind


class Unavailable(ShoalError):
    """A remote service (an image registry) could not be reached or kept failing after bounded retries;
    or a part of the agent itself is restarting. Retrying later may succeed."""


class SupervisorUnavailable(Unavailable):
    """The process that parents containers is not reachable right now (the agent is reconnecting to it or
    starting a new one); nothing was done, and the request can be retried."""


class Unauthenticated(ShoalError):
    """A registry wants credentials Shoal does not have, or refused the ones it has. Never holds a secret."""
