"""Listing pages (issue 12, finding 7): cut by count and by bytes, resumable by opaque tokens."""

from __future__ import annotations

import base64

import pytest

from agent import paging
from agent.errors import InvalidArgument


def test_a_page_stops_at_its_size_or_before_the_item_that_would_pass_the_budget() -> None:
    assert paging.take_page(range(10), size_of=lambda _: 1, page_size=3, budget=100) == ([0, 1, 2], True)
    assert paging.take_page(range(10), size_of=lambda _: 40, page_size=0, budget=100) == ([0, 1], True)
    assert paging.take_page(range(3), size_of=lambda _: 1, page_size=3, budget=100) == ([0, 1, 2], False)
    assert paging.take_page([], size_of=lambda _: 1, page_size=0, budget=1) == ([], False)


def test_one_item_always_fits_whatever_its_size() -> None:
    assert paging.take_page(range(2), size_of=lambda _: 500, page_size=0, budget=100) == ([0], True)


def test_items_after_the_page_are_not_measured() -> None:
    measured: list[int] = []

    def size(item: int) -> int:
        measured.append(item)
        return 1

    paging.take_page(iter(range(1000)), size_of=size, page_size=2, budget=100)
    assert measured == [0, 1, 2]


def test_tokens_round_trip_and_carry_the_first_pages_sequence() -> None:
    cursor = paging.Cursor(after=(1712345678.123456, "abc"), event_sequence=42, event_epoch="e1")
    assert paging.decode(paging.encode(cursor)) == cursor


@pytest.mark.parametrize("token", [
    "garbage!", base64.urlsafe_b64encode(b"[1, 2]").decode(),
    base64.urlsafe_b64encode(b'["x", "id", 1, "e"]').decode(), base64.urlsafe_b64encode(b"\xff").decode(),
])
def test_a_token_that_was_not_ours_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid page token"):
        paging.decode(token)
