"""How the exit status of a process we do not parent is pieced together, with fake probes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from agent.runtime.supervisor.exitstatus import exit_status


def sequence(*values: int | bool | None) -> Callable[[int], object]:
    answers: Iterator[int | bool | None] = iter(values)
    return lambda _: next(answers)


def test_a_reaped_process_status_comes_from_the_kernel() -> None:
    assert exit_status(10, 3, reaped=lambda _: 9, zombie=lambda _: None, unreaped=lambda _: False) == 9


def test_a_zombie_status_counts_only_if_the_process_was_still_unreaped_after_reading_it() -> None:
    assert exit_status(10, 3, reaped=lambda _: None, zombie=lambda _: 7 << 8,
                       unreaped=lambda _: True) == 7 << 8


def test_reaped_between_the_two_reads_is_caught_by_the_second_round() -> None:
    # Round 1: not reaped yet, zombie read, but reaped before the check; round 2: the kernel has it.
    status = exit_status(10, 3, reaped=sequence(None, 7 << 8), zombie=sequence(7 << 8),  # type: ignore[arg-type]
                         unreaped=sequence(False, False))  # type: ignore[arg-type]
    assert status == 7 << 8


def test_a_stale_zombie_with_a_recycled_pid_is_never_believed() -> None:
    # Our process was reaped; /proc/PID now shows another process's zombie; the kernel keeps nothing.
    assert exit_status(10, 3, reaped=lambda _: None, zombie=lambda _: 1 << 8,
                       unreaped=lambda _: False) is None
