"""The tenant transaction's machinery: BEGIN with the tenant's context in one message, and no
reset work after a committed tenant transaction (Database.tenant_transaction uses both)."""

from __future__ import annotations

import weakref
from typing import Any

import asyncpg
import asyncpg.transaction
from asyncpg.transaction import TransactionState


class TenantTransaction(asyncpg.transaction.Transaction):  # type: ignore[misc]
    """A top-level transaction whose BEGIN carries the tenant context in the same message: one
    round trip instead of two on every tenant request. asyncpg's own Transaction does the rest
    (commit, rollback, savepoints nested inside)."""

    __slots__ = ("_prelude",)

    def __init__(self, conn: Any, prelude: str) -> None:
        super().__init__(conn, None, False, False)
        self._prelude = prelude

    async def start(self) -> None:
        conn = self._connection
        if conn._top_xact is not None or conn._protocol.is_in_transaction():
            raise asyncpg.InterfaceError("a tenant transaction cannot start inside another transaction")
        conn._top_xact = self
        try:
            await conn.execute(f"BEGIN; {self._prelude}")  # the simple protocol: both in one message
        except BaseException:
            self._state = TransactionState.FAILED  # type: ignore[misc]
            raise
        self._state = TransactionState.STARTED


# Connections whose last use was a committed tenant transaction. Everything such a transaction
# changes is transaction-local (SET LOCAL, the role, xact locks, ON COMMIT DELETE ROWS staging),
# so there is nothing for asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL)
# to undo: skipping it saves a round trip per request. Every other connection is reset as usual.
CLEAN_AFTER_COMMIT: weakref.WeakSet[Any] = weakref.WeakSet()


async def reset_connection(conn: Any) -> None:
    if conn in CLEAN_AFTER_COMMIT:
        CLEAN_AFTER_COMMIT.discard(conn)
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)
