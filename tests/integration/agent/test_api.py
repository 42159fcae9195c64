"""The gRPC API as the scheduler will use it: idempotent create, labels, filters, streams, status codes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import pytest

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.integration.agent.conftest import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


@pytest.fixture
def stub(agent: AgentProcess) -> Iterator[pb_grpc.ContainersStub]:
    with grpc.insecure_channel(agent.address) as channel:
        yield pb_grpc.ContainersStub(channel)


def _spec(*command: str, **labels: str) -> pb.ContainerSpec:
    return pb.ContainerSpec(image=IMAGE, command=list(command), labels=labels)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return]


def test_create_is_idempotent_on_a_caller_chosen_id(stub: pb_grpc.ContainersStub) -> None:
    request = pb.CreateContainerRequest(id="web-replica-1", spec=_spec("sleep", "300", app="web"))
    first = stub.CreateContainer(request)
    again = stub.CreateContainer(request)
    assert first.id == again.id == "web-replica-1"
    assert first.created_at == again.created_at
    different = pb.CreateContainerRequest(id="web-replica-1", spec=_spec("sleep", "1", app="web"))
    assert _code(lambda: stub.CreateContainer(different)) == grpc.StatusCode.ALREADY_EXISTS
    stub.StartContainer(pb.StartContainerRequest(id="web-replica-1"))
    started = stub.StartContainer(pb.StartContainerRequest(id="web-replica-1"))
    assert started.state == pb.CONTAINER_STATE_RUNNING
    stub.RemoveContainer(pb.RemoveContainerRequest(id="web-replica-1", force=True))


def test_list_filters_by_labels_name_and_state(stub: pb_grpc.ContainersStub) -> None:
    for cid, app in (("f-a", "web"), ("f-b", "web"), ("f-c", "db")):
        stub.CreateContainer(pb.CreateContainerRequest(id=cid, name=cid, spec=_spec("sleep", "300", app=app)))
    stub.StartContainer(pb.StartContainerRequest(id="f-a"))

    def ids(**kw: object) -> set[str]:
        return {c.id for c in stub.ListContainers(pb.ListContainersRequest(**kw)).containers} & {
            "f-a", "f-b", "f-c"}

    assert ids() == {"f-a"}  # running only by default
    assert ids(all=True, labels={"app": "web"}) == {"f-a", "f-b"}
    assert ids(all=True, labels={"app": "db"}) == {"f-c"}
    assert ids(all=True, name="f-b") == {"f-b"}
    assert ids(states=[pb.CONTAINER_STATE_CREATED]) == {"f-b", "f-c"}
    for cid in ("f-a", "f-b", "f-c"):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))


def test_wait_and_log_streams(stub: pb_grpc.ContainersStub) -> None:
    stub.CreateContainer(pb.CreateContainerRequest(id="streamer", spec=_spec(
        "sh", "-c", "echo one; echo two >&2; exit 4")))
    stub.StartContainer(pb.StartContainerRequest(id="streamer"))
    done = stub.WaitContainer(pb.ContainerRef(id="streamer"))
    assert (done.exit_code, done.reason) == (4, "Error")
    entries = list(stub.ContainerLogs(pb.ContainerLogsRequest(id="streamer", follow=True)))
    assert [(e.stream, e.line) for e in entries] == [
        (pb.LOG_STREAM_STDOUT, b"one"), (pb.LOG_STREAM_STDERR, b"two")]
    assert all(e.time.seconds > 0 for e in entries)
    stub.RemoveContainer(pb.RemoveContainerRequest(id="streamer"))


def test_exec_stream_carries_output_then_exit_code(stub: pb_grpc.ContainersStub) -> None:
    stub.CreateContainer(pb.CreateContainerRequest(id="exec-api", spec=_spec("sleep", "300")))
    stub.StartContainer(pb.StartContainerRequest(id="exec-api"))
    out = list(stub.Exec(pb.ExecRequest(id="exec-api", command=["sh", "-c", "echo hi; exit 3"])))
    assert out[-1].WhichOneof("payload") == "exit_code" and out[-1].exit_code == 3
    assert b"".join(o.stdout for o in out) == b"hi\n"
    stub.RemoveContainer(pb.RemoveContainerRequest(id="exec-api", force=True))


def test_status_codes(stub: pb_grpc.ContainersStub) -> None:
    assert _code(lambda: stub.GetContainer(pb.ContainerRef(id="nope"))) == grpc.StatusCode.NOT_FOUND
    bad_image = pb.CreateContainerRequest(spec=pb.ContainerSpec(image="no/such:img", command=["true"]))
    assert _code(lambda: stub.CreateContainer(bad_image)) == grpc.StatusCode.NOT_FOUND
    bad_id = pb.CreateContainerRequest(id="../etc", spec=_spec("true"))
    assert _code(lambda: stub.CreateContainer(bad_id)) == grpc.StatusCode.INVALID_ARGUMENT
    negative = pb.CreateContainerRequest(spec=pb.ContainerSpec(
        image=IMAGE, command=["true"], resources=pb.Resources(memory_bytes=-1)))
    assert _code(lambda: stub.CreateContainer(negative)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_signal = pb.KillContainerRequest(id="x", signal="SIGNOPE")
    stub.CreateContainer(pb.CreateContainerRequest(id="codes", spec=_spec("sleep", "300")))
    assert _code(lambda: stub.KillContainer(bad_signal)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: stub.KillContainer(pb.KillContainerRequest(id="codes", signal="KILL"))) == \
        grpc.StatusCode.FAILED_PRECONDITION  # not running
    stub.StartContainer(pb.StartContainerRequest(id="codes"))
    assert _code(lambda: stub.KillContainer(pb.KillContainerRequest(id="codes", signal="SIGNOPE"))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.RemoveContainer(pb.RemoveContainerRequest(id="codes"))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    missing = pb.CreateContainerRequest(id="codes-missing", spec=_spec("/no/such/bin"))
    stub.CreateContainer(missing)
    with pytest.raises(grpc.RpcError) as info:
        stub.StartContainer(pb.StartContainerRequest(id="codes-missing"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata())["shoal-launch-kind"] == "not-found"
    ctr = stub.GetContainer(pb.ContainerRef(id="codes-missing"))
    assert (ctr.state, ctr.exit_code, ctr.reason) == (pb.CONTAINER_STATE_EXITED, 127, "StartFailed")
    for cid in ("codes", "codes-missing"):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_fencing_refuses_a_deposed_leaders_late_calls(stub: pb_grpc.ContainersStub) -> None:
    old, new = pb.Fence(owner="scheduler", epoch=3), pb.Fence(owner="scheduler", epoch=4)
    created = stub.CreateContainer(pb.CreateContainerRequest(id="fenced", spec=_spec("sleep", "300"),
                                                             start=True, fence=old))
    assert (created.created_by.owner, created.created_by.epoch) == ("scheduler", 3)
    stub.StopContainer(pb.StopContainerRequest(id="fenced", timeout_seconds=1, fence=new))
    for late in (lambda: stub.StartContainer(pb.StartContainerRequest(id="fenced", fence=old)),
                 lambda: stub.KillContainer(pb.KillContainerRequest(id="fenced", fence=old)),
                 lambda: stub.RemoveContainer(pb.RemoveContainerRequest(id="fenced", force=True, fence=old)),
                 lambda: stub.CreateContainer(pb.CreateContainerRequest(id="other", spec=_spec("true"),
                                                                        fence=old))):
        err = _error(late)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(err.trailing_metadata())["shoal-error"] == "StaleEpoch"
    assert stub.GetContainer(pb.ContainerRef(id="fenced")).state == pb.CONTAINER_STATE_EXITED
    stub.RemoveContainer(pb.RemoveContainerRequest(id="fenced", fence=new))


def test_create_containers_answers_each_item_as_its_own_create_would(stub: pb_grpc.ContainersStub) -> None:
    # An owner of its own: fences are per owner, and the agent is shared with the other tests.
    fence, stale = pb.Fence(owner="batch-test", epoch=2), pb.Fence(owner="batch-test", epoch=1)
    items = [
        pb.CreateContainerRequest(id="batch-a", name="batch-a", spec=_spec("sleep", "300", app="b"),
                                  start=True, fence=fence),
        pb.CreateContainerRequest(id="../etc", spec=_spec("true"), start=True, fence=fence),
        pb.CreateContainerRequest(id="batch-b", spec=_spec("sleep", "300", app="b"), start=True, fence=fence),
        pb.CreateContainerRequest(id="batch-c", spec=_spec("/no/such/command"), start=True, fence=fence),
        pb.CreateContainerRequest(id="batch-d", spec=_spec("true"), start=True, fence=stale),
    ]
    results = stub.CreateContainers(pb.CreateContainersRequest(containers=items)).results
    assert [r.HasField("container") for r in results] == [True, False, True, False, False]
    assert [r.container.id for r in results if r.HasField("container")] == ["batch-a", "batch-b"]
    assert all(r.container.state == pb.CONTAINER_STATE_RUNNING for r in results if r.HasField("container"))
    invalid, failed_start, late = results[1].error, results[3].error, results[4].error
    assert (invalid.code, invalid.metadata["shoal-error"]) == ("INVALID_ARGUMENT", "InvalidArgument")
    # As CreateContainer(start=true): the start failure is the error, and the container stays, exited.
    assert failed_start.code == "FAILED_PRECONDITION"
    assert failed_start.metadata["shoal-launch-kind"] == "not-found"
    assert stub.GetContainer(pb.ContainerRef(id="batch-c")).state == pb.CONTAINER_STATE_EXITED
    assert (late.code, late.metadata["shoal-error"]) == ("FAILED_PRECONDITION", "StaleEpoch")
    assert _code(lambda: stub.GetContainer(pb.ContainerRef(id="batch-d"))) == grpc.StatusCode.NOT_FOUND
    # Idempotent like CreateContainer: the same batch again creates nothing new.
    again = stub.CreateContainers(pb.CreateContainersRequest(containers=[items[0], items[2]])).results
    assert [r.container.created_at for r in again] == [results[0].container.created_at,
                                                       results[2].container.created_at]
    too_many = pb.CreateContainersRequest(containers=[items[0]] * 257)
    assert _code(lambda: stub.CreateContainers(too_many)) == grpc.StatusCode.INVALID_ARGUMENT
    for cid in ("batch-a", "batch-b", "batch-c"):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True, fence=fence))


def test_list_then_watch_from_its_sequence_misses_nothing(stub: pb_grpc.ContainersStub) -> None:
    listing = stub.ListContainers(pb.ListContainersRequest(all=True))
    assert listing.event_epoch
    stub.CreateContainer(pb.CreateContainerRequest(id="watched", spec=_spec("true"), start=True))
    stub.WaitContainer(pb.ContainerRef(id="watched"))
    stream = stub.WatchEvents(pb.WatchEventsRequest(after_sequence=listing.event_sequence,
                                                    epoch=listing.event_epoch, labels={}))
    seen = []
    for event in stream:
        assert event.epoch == listing.event_epoch
        if event.container_id == "watched":
            seen.append(event.type)
        if event.type == pb.EVENT_TYPE_EXITED and event.container_id == "watched":
            break
    stream.cancel()
    assert seen == [pb.EVENT_TYPE_CREATED, pb.EVENT_TYPE_STARTED, pb.EVENT_TYPE_EXITED]
    stub.RemoveContainer(pb.RemoveContainerRequest(id="watched"))


def test_events_carry_their_container_when_asked(stub: pb_grpc.ContainersStub) -> None:
    """``with_container``: each event brings the container as it is when sent (no GetContainer per
    event); a removed container's events carry none; without the flag no event carries one."""
    listing = stub.ListContainers(pb.ListContainersRequest(all=True))
    stub.CreateContainer(pb.CreateContainerRequest(id="carried", spec=_spec("true"), start=True))
    stub.WaitContainer(pb.ContainerRef(id="carried"))
    stub.RemoveContainer(pb.RemoveContainerRequest(id="carried"))

    def events(with_container: bool) -> list[pb.Event]:
        stream = stub.WatchEvents(pb.WatchEventsRequest(
            after_sequence=listing.event_sequence, epoch=listing.event_epoch, with_container=with_container))
        seen = []
        for event in stream:  # bounded: the history holds the removal, and the loop ends there
            if event.container_id == "carried":
                seen.append(event)
            if event.type == pb.EVENT_TYPE_REMOVED and event.container_id == "carried":
                break
        stream.cancel()
        return seen

    plain = events(False)
    assert [e.type for e in plain][-1] == pb.EVENT_TYPE_REMOVED
    assert not any(e.HasField("container") for e in plain)
    # Replayed after the removal: the container is gone, so no event carries it.
    assert not any(e.HasField("container") for e in events(True))

    live = stub.ListContainers(pb.ListContainersRequest(all=True))
    stub.CreateContainer(pb.CreateContainerRequest(id="carried2", spec=_spec("sleep", "30"), start=True))
    stream = stub.WatchEvents(pb.WatchEventsRequest(
        after_sequence=live.event_sequence, epoch=live.event_epoch, with_container=True))
    try:
        for event in stream:  # bounded: CREATED then STARTED come from the replayed history
            if event.container_id == "carried2" and event.type == pb.EVENT_TYPE_STARTED:
                assert event.container.id == "carried2"
                assert event.container.state == pb.CONTAINER_STATE_RUNNING
                assert event.container.spec.command[:1] == ["sleep"]
                break
    finally:
        stream.cancel()
        stub.RemoveContainer(pb.RemoveContainerRequest(id="carried2", force=True))


def test_resuming_a_lost_history_is_out_of_range_with_what_to_do(stub: pb_grpc.ContainersStub) -> None:
    epoch = stub.ListContainers(pb.ListContainersRequest()).event_epoch
    err = _error(lambda: list(stub.WatchEvents(pb.WatchEventsRequest(after_sequence=1, epoch="0" * 16))))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    trailing = dict(err.trailing_metadata())
    assert trailing["shoal-error"] == "HistoryTruncated" and trailing["shoal-event-epoch"] == epoch
    assert int(trailing["shoal-oldest-sequence"]) >= 1


def test_remove_with_missing_ok_is_idempotent(stub: pb_grpc.ContainersStub) -> None:
    stub.CreateContainer(pb.CreateContainerRequest(id="twice", spec=_spec("true")))
    first = stub.RemoveContainer(pb.RemoveContainerRequest(id="twice", missing_ok=True))
    again = stub.RemoveContainer(pb.RemoveContainerRequest(id="twice", missing_ok=True))
    assert (first.id, first.already_removed) == ("twice", False)
    assert (again.id, again.already_removed) == ("twice", True)
    assert _code(lambda: stub.RemoveContainer(pb.RemoveContainerRequest(id="twice"))) == \
        grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("resources", "message"), [
    (pb.Resources(memory_bytes=1), "too small: the minimum is 6M"),
    (pb.Resources(memory_bytes=64 << 20, memory_request_bytes=65 << 20), "exceeds the memory limit"),
    (pb.Resources(cpu_millis=1), "the minimum is 10m"),
])
def test_resources_no_container_could_run_with_are_refused(stub: pb_grpc.ContainersStub,
                                                           resources: pb.Resources, message: str) -> None:
    err = _error(lambda: stub.CreateContainer(pb.CreateContainerRequest(
        spec=pb.ContainerSpec(image=IMAGE, command=["true"], resources=resources))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (err.details() or "")


def test_committed_counts_requests_of_created_containers_too(agent: AgentProcess,
                                                           stub: pb_grpc.ContainersStub) -> None:
    with grpc.insecure_channel(agent.address) as channel:
        usage = pb_grpc.HostStub(channel).WatchUsage(pb.WatchUsageRequest())

        def fresh() -> pb.HostInfo:
            """The host as sampled after this call (the stream starts with the latest, maybe older one)."""
            start = next(usage).sequence
            while (snapshot := next(usage)).sequence <= start + 1:
                pass
            return snapshot.host

        before = fresh()
        stub.CreateContainer(pb.CreateContainerRequest(id="reserved", spec=pb.ContainerSpec(
            image=IMAGE, command=["sleep", "300"],
            resources=pb.Resources(memory_bytes=256 << 20, memory_request_bytes=64 << 20, cpu_millis=500))))
        after = fresh()
        usage.cancel()
        assert after.containers == before.containers + 1
        assert after.memory_committed_bytes - before.memory_committed_bytes == 64 << 20
        assert after.cpu_committed_millis - before.cpu_committed_millis == 500
        assert after.memory_limits_bytes - before.memory_limits_bytes == 256 << 20
        stub.RemoveContainer(pb.RemoveContainerRequest(id="reserved"))


def test_usage_at_an_interval_skips_the_samples_in_between(agent: AgentProcess) -> None:
    # The agent samples once a second; a scheduler with thousands of hosts asks for fewer reports.
    with grpc.insecure_channel(agent.address) as channel:
        host = pb_grpc.HostStub(channel)
        usage = host.WatchUsage(pb.WatchUsageRequest(interval_seconds=2.0))
        times = [next(usage).time.ToNanoseconds() / 1e9 for _ in range(4)]
        usage.cancel()
        # At most one snapshot per 2 s of sample time, within half a sample (1 s here): never the next
        # sample, a second later, as without an interval.
        assert all(b - a >= 1.5 for a, b in itertools.pairwise(times)), times
        refused = host.WatchUsage(pb.WatchUsageRequest(interval_seconds=-1))
        assert _code(lambda: next(refused)) == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_host_streams_events_and_usage_on_one_stream(agent: AgentProcess,
                                                          stub: pb_grpc.ContainersStub) -> None:
    """What the scheduler follows of a host: the events after a listing, each with its container, and a
    usage snapshot at once and then once a sample, interleaved on one stream."""
    listing = stub.ListContainers(pb.ListContainersRequest(all=True))
    with grpc.insecure_channel(agent.address) as channel:
        host = pb_grpc.HostStub(channel)
        updates = host.WatchHost(pb.WatchHostRequest(
            events=pb.WatchEventsRequest(after_sequence=listing.event_sequence, epoch=listing.event_epoch,
                                         with_container=True),
            usage=pb.WatchUsageRequest()))
        first = next(updates)
        stub.CreateContainer(pb.CreateContainerRequest(id="followed", spec=_spec("sleep", "300"), start=True))
        kinds: list[str | None] = []
        started: pb.Event | None = None
        reported = False
        try:
            # Bounded: STARTED comes at once, and within a sample or two a report with the container.
            for update in itertools.islice(updates, 20):
                kinds.append(update.WhichOneof("update"))
                if update.HasField("event") and update.event.type == pb.EVENT_TYPE_STARTED:
                    started = update.event
                elif update.HasField("usage") and any(c.id == "followed" for c in update.usage.containers):
                    reported = True
                    break
        finally:
            updates.cancel()
            stub.RemoveContainer(pb.RemoveContainerRequest(id="followed", force=True))
        refused = host.WatchHost(pb.WatchHostRequest(usage=pb.WatchUsageRequest(interval_seconds=-1)))
        assert _code(lambda: next(refused)) == grpc.StatusCode.INVALID_ARGUMENT
        lost = _error(lambda: list(host.WatchHost(pb.WatchHostRequest(
            events=pb.WatchEventsRequest(after_sequence=1, epoch="0" * 16)))))
    assert first.WhichOneof("update") == "usage" and first.usage.host.host_id
    assert started is not None and started.container_id == "followed"
    assert started.container.state == pb.CONTAINER_STATE_RUNNING
    assert reported and kinds.index("event") < len(kinds) - 1
    assert lost.code() == grpc.StatusCode.OUT_OF_RANGE
    assert dict(lost.trailing_metadata())["shoal-error"] == "HistoryTruncated"


def test_watch_host_sends_waiting_events_together_when_asked(agent: AgentProcess,
                                                             stub: pb_grpc.ContainersStub) -> None:
    """With ``batch_events`` the events already waiting go as one ``HostUpdate.events`` (here the three
    CREATED events a follower resuming after the listing finds kept), in order and with their
    containers; without it, as before, one message per event."""
    listing = stub.ListContainers(pb.ListContainersRequest(all=True))
    ids = [f"batched-{i}" for i in range(3)]
    for cid in ids:
        stub.CreateContainer(pb.CreateContainerRequest(id=cid, spec=_spec("sleep", "300")))
    try:
        with grpc.insecure_channel(agent.address) as channel:
            host = pb_grpc.HostStub(channel)
            updates: dict[bool, list[pb.HostUpdate]] = {}
            for batched in (True, False):
                stream = host.WatchHost(pb.WatchHostRequest(
                    events=pb.WatchEventsRequest(after_sequence=listing.event_sequence,
                                                 epoch=listing.event_epoch, with_container=True),
                    usage=pb.WatchUsageRequest(interval_seconds=60), batch_events=batched))
                # Bounded: a usage report, then the replay (one batch, or three events), in some order.
                got = [next(stream) for _ in range(2 if batched else 4)]
                stream.cancel()
                updates[batched] = [u for u in got if not u.HasField("usage")]
    finally:
        for cid in ids:
            stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))
    (batch,) = updates[True]
    assert batch.WhichOneof("update") == "events"
    assert [e.container_id for e in batch.events.events] == ids
    events = batch.events.events
    assert all(e.type == pb.EVENT_TYPE_CREATED and e.container.id == e.container_id for e in events)
    sequences = [e.sequence for e in events]
    assert sequences == list(range(listing.event_sequence + 1, listing.event_sequence + 4))
    assert [u.WhichOneof("update") for u in updates[False]] == ["event"] * 3
    assert [u.event.sequence for u in updates[False]] == sequences


def test_host_identity_capacity_and_conditions(agent: AgentProcess) -> None:
    import os
    import platform
    import shutil

    with grpc.insecure_channel(agent.address) as channel:
        info = pb_grpc.HostStub(channel).GetHost(pb.GetHostRequest())
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert info.boot_id == f.read().strip()
    assert info.os == "linux" and info.architecture == {"x86_64": "amd64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine())
    assert info.cpu_allocatable_millis == len(os.sched_getaffinity(0)) * 1000
    total, _, _ = shutil.disk_usage(agent.root)
    assert info.disk_total_bytes == total and 0 < info.disk_free_bytes <= total
    kinds = {c.type for c in info.conditions}
    assert kinds <= {"MemoryPressure", "DiskPressure"}  # no SupervisorDown on a healthy agent
