"""Opaque keyset cursors: base64url of the last key of the previous page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

import msgspec

from service.errors import InvalidRequest

T = TypeVar("T")

Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    next_cursor: str | None = msgspec.field(default=None)


def encode_cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        decoded = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        if not decoded:
            raise ValueError("empty cursor")
        return decoded
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest(
            "cursor is not one this service issued; pass next_cursor from the previous page",
            errors=[{"field": "cursor", "source": "query", "message": "invalid cursor"}],
        ) from None


def page_of(rows: list[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """Build a page from up to limit+1 rows fetched after the cursor (the extra row means 'more')."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=encode_cursor(key(rows[-1])) if more else None)
