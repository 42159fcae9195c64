"""The scheduler's exception tree.

Every failure a caller can cause or act on is one of these; ``scheduler.server`` is the only place that
maps them to gRPC status codes (and to the ``shoal-error`` trailing metadata naming the kind), with the
message unchanged: messages are written for the person at the terminal.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of all scheduler errors. ``str(err)`` is a message for a person."""


class NotFound(SchedulerError):
    """A service, host or replica the caller named does not exist."""


class InvalidArgument(SchedulerError):
    """The request is malformed: a bad spec (with path and line), a negative replica count."""


class Aborted(SchedulerError):
    """A compare-and-swap lost: the object changed since the caller read it (expected generation)."""


class FailedPrecondition(SchedulerError):
    """The request is well formed but the state forbids it (a service being deleted)."""


class Unavailable(SchedulerError):
    """etcd (or another dependency) cannot be reached; nothing was written, and a retry may succeed."""


class PermissionDenied(SchedulerError):
    """The caller's certificate role may not do this."""


class RevisionCompacted(SchedulerError):
    """A watch resumed from a revision etcd no longer keeps: list again, then watch from there."""


__all__ = [
    "Aborted", "FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied", "RevisionCompacted",
    "SchedulerError", "Unavailable",
]
