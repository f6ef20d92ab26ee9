"""Reading the audit log (a page of events), and the buffer of authentication failures."""

from __future__ import annotations

import logging
import re
from collections import deque

from service.audit import store
from service.audit.models import AuditEvent, AuditPage
from service.db import Database
from service.pagination import decode_cursor, encode_cursor, invalid_cursor
from service.timerange import parse_time

log = logging.getLogger("vectorhive.audit")

_MAX_BUFFERED = 10_000


class AuditBuffer:
    """Authentication failures happen on the request path and can come in floods: they are kept
    in memory (the oldest dropped beyond 10,000 pending) and written in batches with the usage flush."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: deque[tuple[str | None, str | None, str]] = deque(maxlen=_MAX_BUFFERED)

    def auth_failure(self, reason: str, *, key_id: str | None, tenant_id: str | None) -> None:
        self._pending.append((tenant_id, key_id, reason))

    async def flush(self) -> None:
        if not self._pending:
            return
        items = list(self._pending)
        self._pending.clear()
        try:
            async with self.db.transaction() as conn:
                await store.write_auth_failures(conn, items)
        except Exception:
            log.warning("could not write authentication failures to the audit log", exc_info=True)
            self._pending.extendleft(reversed(items))


class AuditService:
    def __init__(self, db: Database, buffer: AuditBuffer) -> None:
        self.db = db
        self.buffer = buffer

    async def page(
        self,
        *,
        tenant_id: str | None,
        only_tenant: bool,
        action: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        cursor: str | None,
        scope: frozenset[str] | None = None,
    ) -> AuditPage:
        """Newest first. only_tenant: exactly this tenant's events (a tenant ADMIN's view);
        scope: the asking key's collections; events whose details name others (or all) are left out."""
        raw = decode_cursor(cursor)
        # ASCII digits only ('²'.isdigit() is true, int('²') fails), and within PostgreSQL's bigint.
        if raw is not None and not (re.fullmatch(r"[0-9]{1,19}", raw) and int(raw) < 2**63):
            raise invalid_cursor()
        start, end = parse_time("since", since), parse_time("until", until)
        await self.buffer.flush()  # this replica's latest too
        async with self.db.transaction() as conn:
            events = await store.list_events(
                conn,
                tenant_id=tenant_id,
                only_tenant=only_tenant,
                action=action,
                since=start,
                until=end,
                before_id=int(raw) if raw is not None else None,
                limit=limit + 1,
            )
        more = len(events) > limit
        events = events[:limit]
        cursor_out = encode_cursor(str(events[-1].id)) if more else None
        if scope is not None:
            # The cursor still follows the unfiltered events, so a page may hold fewer than `limit`.
            events = [e for e in events if _within_scope(e, scope)]
        return AuditPage(items=events, next_cursor=cursor_out)


def _within_scope(event: AuditEvent, scope: frozenset[str]) -> bool:
    if "collections" not in event.details:
        return True
    named = event.details["collections"]
    return isinstance(named, list) and set(named) <= scope
