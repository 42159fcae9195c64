from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.errors import InvalidArgument
from agent.runtime.events import Event, EventLog, EventType, HistoryTruncated, WatcherTooSlow
from agent.runtime.health import HealthStatus

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def add(log: EventLog, n: int = 1, *, labels: dict[str, str] | None = None,
        type: EventType = EventType.STARTED) -> list[Event]:
    return [log.append(type, container_id=f"c{log.last_sequence + 1}", container_name="web",
                       labels=labels) for _ in range(n)]


async def take(stream: AsyncIterator[Event], n: int) -> list[Event]:
    return [await anext(stream) for _ in range(n)]


def test_sequences_increase_by_one() -> None:
    log = EventLog(None)
    assert [e.sequence for e in add(log, 3)] == [1, 2, 3]


def test_replay_after_a_sequence_then_live() -> None:
    async def scenario() -> list[int]:
        log = EventLog(None)
        add(log, 5)
        stream = log.subscribe(after_sequence=2)
        replayed = await take(stream, 3)
        add(log, 2)
        live = await take(stream, 2)
        await stream.aclose()
        return [e.sequence for e in replayed + live]

    assert run(scenario()) == [3, 4, 5, 6, 7]


def test_without_a_sequence_only_new_events() -> None:
    async def scenario() -> list[int]:
        log = EventLog(None)
        add(log, 5)
        stream = log.subscribe()
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        add(log, 1)
        first = await pending
        await stream.aclose()
        return [first.sequence]

    assert run(scenario()) == [6]


def test_events_appended_during_replay_are_neither_lost_nor_doubled() -> None:
    async def scenario() -> list[int]:
        log = EventLog(None)
        add(log, 3)
        stream = log.subscribe(after_sequence=0)
        got = [await anext(stream)]
        add(log, 2)  # while the watcher is still replaying
        got += await take(stream, 4)
        await stream.aclose()
        return [e.sequence for e in got]

    assert run(scenario()) == [1, 2, 3, 4, 5]


def test_label_filter() -> None:
    async def scenario() -> list[str]:
        log = EventLog(None)
        add(log, labels={"app": "web", "tier": "front"})
        add(log, labels={"app": "db"})
        add(log)
        add(log, labels={"app": "web"})
        stream = log.subscribe(after_sequence=0, labels={"app": "web"})
        got = await take(stream, 2)
        await stream.aclose()
        return [e.container_id for e in got]

    assert run(scenario()) == ["c1", "c4"]


def test_history_and_counter_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    add(log, 3)
    log.append(EventType.EXITED, container_id="x", container_name="n", labels={"a": "b"}, exit_code=3,
               reason="Error", health=HealthStatus.UNHEALTHY, restart_count=2, message="m")
    log.close()

    again = EventLog(path)
    assert again.last_sequence == 4
    assert again.history()[-1] == Event(
        sequence=4, time=again.history()[-1].time, type=EventType.EXITED, container_id="x",
        container_name="n", labels={"a": "b"}, exit_code=3, reason="Error", health=HealthStatus.UNHEALTHY,
        restart_count=2, message="m")

    async def resume() -> list[int]:
        stream = again.subscribe(after_sequence=2)
        got = await take(stream, 2)
        add(again, 1)
        got += await take(stream, 1)
        await stream.aclose()
        return [e.sequence for e in got]

    assert run(resume()) == [3, 4, 5]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    add(log, 2)
    log.close()
    with open(path, "a") as f:
        f.write('{"sequence":3,"ti')  # the agent was killed mid-write
    again = EventLog(path)
    assert again.last_sequence == 2
    assert add(again)[0].sequence == 3


def test_file_is_compacted_to_the_kept_history(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, capacity=10)
    add(log, 45)
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) < 20
    again = EventLog(path, capacity=10)
    assert [e.sequence for e in again.history()] == list(range(36, 46))


def test_resuming_from_before_the_history_is_an_error_that_says_what_to_do() -> None:
    async def scenario() -> None:
        log = EventLog(None, capacity=5)
        add(log, 12)  # keeps 8..12
        with pytest.raises(HistoryTruncated, match=r"oldest kept is 8.*from 7"):
            await anext(log.subscribe(after_sequence=3))
        stream = log.subscribe(after_sequence=7)  # exactly at the edge: nothing missing
        assert (await anext(stream)).sequence == 8
        await stream.aclose()
        everything = log.subscribe(after_sequence=0)  # 0: "all you still have"
        assert (await anext(everything)).sequence == 8
        await everything.aclose()

    run(scenario())


def test_a_sequence_from_the_future_is_refused() -> None:
    async def scenario() -> None:
        log = EventLog(None)
        add(log, 2)
        with pytest.raises(InvalidArgument, match="beyond the last event"):
            await anext(log.subscribe(after_sequence=9))

    run(scenario())


def test_a_slow_watcher_is_cut_off_and_resumes_without_a_gap() -> None:
    async def scenario() -> tuple[list[int], int, list[int]]:
        log = EventLog(None, queue_size=4)
        slow = log.subscribe(after_sequence=0)
        fast = log.subscribe(after_sequence=0)
        add(log, 1)
        assert (await anext(slow)).sequence == 1
        assert (await anext(fast)).sequence == 1
        fast_got = []
        for _ in range(10):  # the slow watcher is not reading: its queue (4) overflows
            add(log, 1)
            fast_got.append((await anext(fast)).sequence)  # one that keeps up is not affected
        await fast.aclose()
        got: list[int] = []
        with pytest.raises(WatcherTooSlow) as err:
            while True:
                got.append((await anext(slow)).sequence)
        resumed = log.subscribe(after_sequence=err.value.last_sequence)
        rest = [e.sequence for e in await take(resumed, 11 - err.value.last_sequence)]
        await resumed.aclose()
        assert f"after_sequence={err.value.last_sequence}" in str(err.value)
        return got, err.value.last_sequence, rest + fast_got

    got, last, rest = run(scenario())
    assert got == [2, 3, 4, 5] and last == 5
    assert rest[:6] == [6, 7, 8, 9, 10, 11]
    assert rest[6:] == list(range(2, 12))


def test_closed_watchers_are_forgotten() -> None:
    async def scenario() -> int:
        log = EventLog(None)
        stream = log.subscribe(after_sequence=0)
        add(log)
        await anext(stream)
        await stream.aclose()
        return len(log._watchers)

    assert run(scenario()) == 0


def _sequences(batches: list[list[Event]]) -> list[list[int]]:
    return [[e.sequence for e in batch] for batch in batches]


def test_batches_hold_what_was_waiting_and_never_wait_to_fill() -> None:
    async def scenario() -> list[list[list[int]]]:
        log = EventLog(None)
        add(log, 5)
        stream = log.batches(after_sequence=1, most=3)
        replayed = [await anext(stream), await anext(stream)]  # the replay, at most 3 to a list
        add(log, 4)  # appended together (one host call creating four containers)
        together = [await anext(stream), await anext(stream)]
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the watcher waits for the next event
        add(log, 1)
        alone = [await pending]  # handed out at once, not held back for two more
        await stream.aclose()
        return [_sequences(replayed), _sequences(together), _sequences(alone)]

    replayed, together, alone = run(scenario())
    assert replayed == [[2, 3, 4], [5]]
    assert together == [[6, 7, 8], [9]]
    assert alone == [[10]]


def test_batches_filter_by_labels_and_resume_after_a_slow_cut_without_a_gap() -> None:
    async def scenario() -> tuple[list[list[int]], int, list[list[int]]]:
        log = EventLog(None, queue_size=4)
        stream = log.batches(after_sequence=0, labels={"app": "web"}, most=64)
        add(log, 1, labels={"app": "web"})
        first = [await anext(stream)]
        add(log, 2, labels={"app": "db"})
        add(log, 1, labels={"app": "web"})
        first.append(await anext(stream))  # the db events are skipped, not sent as an empty list
        add(log, 6, labels={"app": "web"})  # more than the watcher's queue (4): it overflows
        with pytest.raises(WatcherTooSlow) as err:
            while True:
                first.append(await anext(stream))
        resumed = log.batches(after_sequence=err.value.last_sequence, labels={"app": "web"})
        rest = [await anext(resumed)]
        await resumed.aclose()
        return _sequences(first), err.value.last_sequence, _sequences(rest)

    first, last, rest = run(scenario())
    assert first == [[1], [4], [5, 6, 7, 8]]
    assert last == 8 and rest == [[9, 10]]


def test_a_batch_holds_at_least_one_event() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="at least one event"):
            await anext(EventLog(None).batches(most=0))

    run(scenario())
