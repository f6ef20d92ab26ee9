"""Pages of a listing: the one generic page type, its query parameters, and opaque keyset
cursors (base64url of the last key of the previous page)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

from service.errors import InvalidRequest

T = TypeVar("T")

# The query parameters of every paged listing.
PageLimit = Annotated[int, QueryParameter(ge=1, le=1000, description="Items per page")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    next_cursor: str | None = msgspec.field(default=None)


def encode_cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode().rstrip("=")


def invalid_cursor() -> InvalidRequest:
    """The one answer to a cursor that does not decode to a key of the listing it was given to."""
    return InvalidRequest.field(
        "cursor",
        "invalid cursor",
        "cursor is not one this service issued; pass next_cursor from the previous page",
        source="query",
    )


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        decoded = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        if not decoded:
            raise ValueError("empty cursor")
        return decoded
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_cursor() from None


def split_page(rows: list[T], limit: int, key: Callable[[T], str]) -> tuple[list[T], str | None]:
    """Up to limit+1 rows fetched after the cursor -> (this page's rows, next_cursor or None).

    The extra row only says that there is more."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(key(rows[-1]))


def page_of(rows: list[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    items, next_cursor = split_page(rows, limit, key)
    return Page(items=items, next_cursor=next_cursor)
