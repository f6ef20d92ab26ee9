"""After a database restart the import runner takes a new lease at once, so imports accepted
right after it do not carry a dead runner id (which the runner's own sweep would end)."""

from __future__ import annotations

import asyncio
import time

from litestar import Litestar

from service.db import Database
from service.imports.lease import LEASE_CLASS


async def lease_holders(db: Database, runner_id: int) -> int:
    count: int = await db.pool.fetchval(
        """SELECT count(*) FROM pg_locks
           WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND granted""",
        LEASE_CLASS,
        runner_id,
    )
    return count


async def test_a_lost_lease_is_replaced_at_once(app: Litestar, client: object, db: Database) -> None:
    runner = app.state.import_runner
    old = runner.runner_id
    assert await lease_holders(db, old) == 1
    # What a database restart does to the lease connection.
    await db.pool.execute(
        """SELECT pg_terminate_backend(pid) FROM pg_locks
           WHERE locktype = 'advisory' AND classid = $1 AND objid = $2""",
        LEASE_CLASS,
        old,
    )
    deadline = time.monotonic() + 10  # the sweep, the only other way back, runs every 30 s
    while runner.runner_id == old or await lease_holders(db, runner.runner_id) != 1:
        assert time.monotonic() < deadline, "the runner kept its dead lease"
        await asyncio.sleep(0.05)
    assert await lease_holders(db, old) == 0
