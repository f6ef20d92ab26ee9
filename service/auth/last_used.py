"""Keys' last_used_at, recorded in batches."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from service.auth import store
from service.db import Database
from service.db.connections import service_connection

log = logging.getLogger("vectorhive.auth")


class LastUsedRecorder:
    """Batches last_used_at updates for cached hits, so that a hit costs no database write."""

    def __init__(self, db: Database, interval: float = 30.0) -> None:
        self.db = db
        self.interval = interval
        self._pending: dict[str, datetime] = {}

    def note(self, key_id: str) -> None:
        self._pending[key_id] = datetime.now(UTC)

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await store.touch(service_connection(self.db.pool), list(pending), list(pending.values()))
        except Exception:
            log.warning("could not record last_used_at; will retry", exc_info=True)
            for key_id, used in pending.items():
                self._pending.setdefault(key_id, used)
