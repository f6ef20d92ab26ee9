"""Time ranges of the reading routes (usage, audit): the since/until query parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar.params import QueryParameter

from service.errors import InvalidRequest

Since = Annotated[
    str | None,
    QueryParameter(
        description="From this time: RFC 3339 with a zone, e.g. 2026-11-01T00:00:00Z (default: 30 days "
        "before until)",
        max_length=64,
    ),
]
Until = Annotated[
    str | None,
    QueryParameter(description="Before this time: RFC 3339 with a zone (default: now)", max_length=64),
]


def parse_time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with a zone, or a 400 naming the parameter."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidRequest.field(
            name,
            "not an RFC 3339 time with a zone",
            f"{name} must be an RFC 3339 time with a zone, e.g. 2026-11-01T00:00:00Z",
            source="query",
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is past the year 9999 in UTC
        raise InvalidRequest.field(
            name, "out of range", f"{name} is outside the years 1 to 9999 in UTC", source="query"
        ) from None


def time_range(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """Defaults: the last 30 days, up to now. Naive times are refused (which zone would they be?)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest.field(
                name,
                "time zone missing",
                f"{name} needs a time zone, e.g. 2026-11-01T00:00:00Z",
                source="query",
            )
    end = until or datetime.now(UTC) + timedelta(seconds=1)
    try:
        start = since or end - timedelta(days=30)
    except OverflowError:  # until in the first 30 days of year 1: the range starts at the earliest time
        start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise InvalidRequest.field("since", "after until", "since must be before until", source="query")
    return start, end
