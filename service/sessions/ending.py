"""Ending sessions: the one way a session ends (deleted, expired, failed to load), and the durable
sweep that any replica runs every sessions.sweep_interval_seconds: sessions whose time is up end,
S5-backed sessions are settled, uses counted in memory reach the database, old rows and keys go.
"""

from __future__ import annotations

import logging
from typing import Any

from service.audit import store as audit
from service.auth.keys import KeyKind
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.config import SessionsSettings
from service.db import Database, ServiceConnection
from service.db.connections import service_connection
from service.db.notify import notify
from service.imports.models import ImportStatus
from service.sessions import store
from service.sessions.opening import Opener
from service.sessions.s5 import S5Sessions
from service.sessions.signing import SESSION_CHANNEL, KeyRing
from service.sessions.verifier import SessionVerifier

log = logging.getLogger("vectorhive.sessions")

_BATCH = 500


async def announce_end(
    conn: ServiceConnection,
    session_id: str,
    tenant_id: str,
    action: str,
    actor: Principal | None,
    details: dict[str, Any],
) -> None:
    """In the transaction that ends a session: every process forgets its token at commit
    (NOTIFY), and the audit log says who ended it and why."""
    await notify(conn, SESSION_CHANNEL, f"session:{session_id}")
    await audit.write(
        conn, action=action, tenant_id=tenant_id, actor=actor, target=session_id, details=details
    )


class SessionSweep:
    def __init__(
        self,
        db: Database,
        settings: SessionsSettings,
        keyring: KeyRing,
        verifier: SessionVerifier,
        opener: Opener,
        s5: S5Sessions,
    ) -> None:
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.verifier = verifier
        self.opener = opener
        self.s5 = s5

    def forget(self, session_id: str) -> None:
        """After the commit that ended it: this process stops accepting the session's token at once."""
        self.verifier.evict(f"session:{session_id}")
        self.opener.forget(session_id)

    async def sweep(self) -> int:
        """End sessions whose time is up, record uses, prune old rows and keys; returns how many ended."""
        ended = 0
        while True:
            async with self.db.transaction() as conn:
                rows = await store.expire_due(conn, _BATCH)
                for row in rows:
                    await announce_end(
                        conn,
                        row.id,
                        row.tenant_id,
                        "session.expire",
                        None,
                        {"queries_used": row.queries_used, "expired_at": row.expires_at.isoformat()},
                    )
            for row in rows:
                self.forget(row.id)
            ended += len(rows)
            if len(rows) < _BATCH:
                break
        await self._check_s5_sessions()
        await self.flush_uses()
        async with self.db.transaction() as conn:
            await store.prune_ended(conn, self.settings.retention_days)
        await self.keyring.prune()
        await self.keyring.rotate_if_old()
        return ended

    async def _check_s5_sessions(self) -> None:
        """End S5-backed sessions whose import failed; drop the collections of ended ones."""
        for row in await store.s5_to_check(service_connection(self.db.pool), 200):
            try:
                if row.ended_at is None:
                    load = await self.s5.load(row)
                    if load is None or load.status not in (ImportStatus.ERROR, ImportStatus.CANCELLED):
                        continue
                    async with self.db.transaction() as conn:
                        ended = await store.end(conn, row.tenant_id, row.id, "failed")
                        if ended is None:
                            continue
                        await announce_end(
                            conn,
                            row.id,
                            row.tenant_id,
                            "session.fail",
                            None,
                            {"error": load.error.code if load.error else load.status.value},
                        )
                    self.forget(row.id)
                    row = ended
                await self.s5.drop(row)
            except Exception:
                log.warning("could not settle an S5-backed session; will retry", exc_info=True)

    async def flush_uses(self) -> None:
        """Uses counted in memory (SessionVerifier) reach the database and the audit log."""
        unlimited, uses = self.verifier.take_uses()
        if not unlimited and not uses:
            return
        try:
            async with self.db.transaction() as conn:
                if unlimited:
                    await store.add_queries(conn, unlimited)
                for (tenant_id, session_id, parent), count in uses.items():
                    await audit.write(
                        conn,
                        action="session.use",
                        tenant_id=tenant_id,
                        actor=TenantPrincipal(
                            kind=KeyKind.TENANT,
                            key_id=parent,
                            tenant_id=tenant_id,
                            permission=Permission.READ_ONLY,
                        ),
                        target=session_id,
                        details={"queries": count},
                    )
        except Exception:
            self.verifier.give_back(unlimited, uses)  # counted at the next sweep rather than lost
            raise
