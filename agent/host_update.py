"""What one ``WatchHost`` message carries: an event, a batch of events, or a usage snapshot.

The agent's ``HostService`` sends these (the host simulator makes the same messages as bytes:
``bench.sim.watch_host``).
A client that sets ``WatchHostRequest.batch_events`` gets the events that were waiting together as one
``HostUpdate.events``; one that does not (a scheduler from before the field) gets one message per event.
"""

from __future__ import annotations

from agent.runtime.events import DEFAULT_BATCH
from proto.agent.v1 import agent_pb2 as pb

EVENT_BATCH = DEFAULT_BATCH  # events to one HostUpdate.events at most


def host_update(which: int, item: object, *, batched: bool) -> pb.HostUpdate:
    """The message for what ``interleave`` handed out of its two sources: ``which`` 0 is a list of events
    (one event unless ``batched``), 1 a usage snapshot."""
    if which == 1:
        assert isinstance(item, pb.UsageSnapshot)
        return pb.HostUpdate(usage=item)
    assert isinstance(item, list)
    if batched:
        return pb.HostUpdate(events=pb.EventBatch(events=item))
    (event,) = item
    return pb.HostUpdate(event=event)


__all__ = ["EVENT_BATCH", "host_update"]
