"""Pages of a listing: opaque continuation tokens and a page cut by count and by encoded size.

``ListContainers`` pages the Kubernetes way: a page ends after ``page_size`` items or before the one that
would take it past a byte budget (so it always fits a client's 4 MiB message limit), and its token names
the last item's position in a total order, not an offset, so containers created or removed while a
client pages make it neither skip nor repeat the others. The token also carries the event sequence and
epoch of the first page, which every later page repeats: a client watching from them after the last page
misses nothing that changed while it paged. The token is opaque to clients (base64 of JSON) and checked
on the way in; a malformed one is ``InvalidArgument``. Pure: the server converts and measures items.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from agent.errors import InvalidArgument

T = TypeVar("T")
Position = tuple[float, str]  # (created_at, id): the listing's total order


@dataclass(frozen=True)
class Cursor:
    after: Position
    event_sequence: int
    event_epoch: str


def encode(cursor: Cursor) -> str:
    raw = json.dumps([cursor.after[0], cursor.after[1], cursor.event_sequence, cursor.event_epoch],
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(token: str) -> Cursor:
    try:
        created, ident, sequence, epoch = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not (isinstance(created, int | float) and isinstance(ident, str) and isinstance(sequence, int)
                and isinstance(epoch, str)):
            raise ValueError("wrong types")
        return Cursor(after=(float(created), ident), event_sequence=sequence, event_epoch=epoch)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidArgument("invalid page token: pass the next_page_token of the previous page "
                              "unchanged, or none for the first page") from None


def take_page(items: Iterable[T], *, size_of: Callable[[T], int], page_size: int,
              budget: int) -> tuple[list[T], bool]:
    """The first items that fit (at least one, whatever its size) and whether any are left.

    ``page_size`` 0 means no count limit; ``items`` is consumed lazily, so converting or measuring one
    costs nothing for the items after the page."""
    page: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if page and (used + size > budget or (page_size and len(page) >= page_size)):
            return page, True
        page.append(item)
        used += size
    return page, False


__all__ = ["Cursor", "Position", "decode", "encode", "take_page"]
