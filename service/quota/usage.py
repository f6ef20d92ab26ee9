"""Usage metering: counted in memory per request, flushed to the PostgreSQL outbox, reported to HiveHub.

What "nothing lost" means here. A request's usage is counted in this process's memory when it is
served, and written to the usage_outbox table every usage.flush_interval seconds and at graceful
shutdown (SIGTERM/SIGINT), so a restart loses nothing. A process that dies without shutting down
(SIGKILL, power loss) loses at most the last flush_interval seconds of *metered* usage; the data
itself is unaffected. Once in the outbox, a row is reported to HiveHub (at least once, with the
row id as its idempotency key) and marked sent only after HiveHub's 2xx: a hub outage or a crash
mid-report leaves the rows to the next report, and a report HiveHub saw twice carries the same
idempotency keys both times, so it can drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, get_args

import msgspec

from service.db import Database
from service.db.connections import service_connection
from service.metrics import USAGE_REPORTED, USAGE_UNREPORTED
from service.quota import store
from service.timerange import time_range

if TYPE_CHECKING:
    from service.hivehub.client import HiveHubClient

log = logging.getLogger("vectorhive.usage")

Metric = Literal[
    "requests",
    "vectors_written",
    "vectors_deleted",
    "searches",
    "vectors_imported",
    "texts_embedded",
    "embedding_tokens",
    "prompt_tokens",
    "completion_tokens",
]
METRICS: tuple[str, ...] = get_args(Metric)


class UsageMeter:
    """In-memory counters by (tenant, metric, operation); record() costs a dict update, no I/O."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._counts: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._since = datetime.now(UTC)
        self._lock = asyncio.Lock()
        self.last_flush_at: datetime | None = None
        self.last_error: str | None = None

    def record(self, tenant_id: str, metric: Metric, quantity: int = 1, operation: str = "") -> None:
        if quantity > 0:
            self._counts[(tenant_id, metric, operation)] += quantity

    async def flush(self) -> int:
        """Write what was counted since the last flush as outbox rows; on failure keep it for the next."""
        async with self._lock:
            if not self._counts:
                return 0
            counts, self._counts = self._counts, defaultdict(int)
            since, now = self._since, datetime.now(UTC)
            self._since = now
            rows = [(t, m, o, q) for (t, m, o), q in counts.items()]
            try:
                async with self.db.transaction() as conn:
                    await store.insert_usage(conn, rows, since, now)
            except BaseException as exc:  # cancelled too: what was taken out goes back
                self.last_error = f"{type(exc).__name__}: {exc}"
                for key, quantity in counts.items():
                    self._counts[key] += quantity
                self._since = since
                if not isinstance(exc, Exception):
                    raise
                log.warning("could not write usage to the outbox; will retry", exc_info=True)
                return 0
            self.last_flush_at, self.last_error = now, None
            return len(rows)


class UsageReporter:
    """Sends outbox rows to HiveHub in batches; any replica may run it (rows are claimed SKIP LOCKED)."""

    def __init__(self, db: Database, hub: HiveHubClient, interval: float, batch_size: int) -> None:
        self.db = db
        self.hub = hub
        self.interval = interval
        self.batch_size = batch_size
        self.last_report_at: datetime | None = None
        self.last_error: str | None = None

    async def report_once(self) -> int:
        """One batch: claim, send, mark sent after the hub's 2xx. Returns rows sent (0: nothing to do)."""
        from service.hivehub.client import HubRejected, HubUnavailable, UsageReport

        async with self.db.transaction() as conn:
            rows = await store.claim_unsent(conn, self.batch_size)
            if not rows:
                return 0
            reports = [
                UsageReport(
                    idempotency_key=str(r["id"]),
                    tenant_id=r["tenant_id"],
                    metric=r["metric"],
                    operation=r["operation"],
                    quantity=r["quantity"],
                    period_start=r["period_start"],
                    period_end=r["period_end"],
                )
                for r in rows
            ]
            try:
                await self.hub.report_usage(reports)
            except HubRejected as exc:
                # Some row of the batch is refused. Send them one by one, so that one bad row is
                # set aside (kept, with the hub's reason) instead of blocking every later report.
                self.last_error = str(exc)
                accepted = []
                for row, report in zip(rows, reports, strict=True):
                    try:
                        await self.hub.report_usage([report])
                    except HubRejected as single:
                        await store.mark_rejected(conn, row["id"], str(single))
                        log.error(
                            "HiveHub refused a usage report; set aside",
                            extra={"usage_id": str(row["id"]), "reason": str(single)},
                        )
                    else:
                        accepted.append(row["id"])
                await store.mark_sent(conn, accepted)
                USAGE_REPORTED.inc(len(accepted))
                return len(rows)
            except HubUnavailable as exc:
                self.last_error = str(exc)
                raise
            await store.mark_sent(conn, [r["id"] for r in rows])
        USAGE_REPORTED.inc(len(rows))
        self.last_report_at, self.last_error = datetime.now(UTC), None
        return len(rows)

    async def report_all(self) -> int:
        """Batches until the outbox is drained or the hub fails (the rest waits for the next round)."""
        from service.hivehub.client import HubUnavailable

        sent = 0
        try:
            # Bytes stored is a level, not a count: one snapshot per tenant per report interval.
            async with self.db.transaction() as conn:
                await store.snapshot_storage(conn, min_age_seconds=self.interval * 0.9)
        except Exception:
            log.warning("could not snapshot storage for the usage report", exc_info=True)
        try:
            while True:
                n = await self.report_once()
                sent += n
                if n < self.batch_size:
                    break
        except HubUnavailable:
            log.warning("usage report failed; the rows stay in the outbox for the next report")
        with contextlib.suppress(Exception):
            USAGE_UNREPORTED.set(await store.unsent_count(service_connection(self.db.pool)))
        return sent


# -- reading usage ------------------------------------------------------------------------------------


class UsageFigures(msgspec.Struct, kw_only=True):
    requests: int = 0
    requests_by_operation: dict[str, int] = msgspec.field(default_factory=dict)
    vectors_written: int = 0
    vectors_deleted: int = 0
    vectors_imported: int = 0
    searches: int = 0
    texts_embedded: int = 0  # texts and document chunks embedded by the server's models
    embedding_tokens: int = 0
    # Tokens of chat models: prompts read and completions generated (chat completions, RAG answers).
    prompt_tokens: int = 0
    completion_tokens: int = 0


class StorageFigures(msgspec.Struct, kw_only=True):
    collections: int = 0
    vectors: int = 0
    bytes: int = 0


class TenantUsage(msgspec.Struct, kw_only=True):
    tenant_id: str
    since: datetime
    until: datetime
    usage: UsageFigures
    storage: StorageFigures


class UsageService:
    def __init__(self, db: Database, meter: UsageMeter) -> None:
        self.db = db
        self.meter = meter

    async def usage(
        self,
        tenant_ids: list[str],
        *,
        since: datetime | None,
        until: datetime | None,
        scope: frozenset[str] | None = None,
    ) -> list[TenantUsage]:
        """scope: the asking key's collections; storage then counts only those."""
        start, end = time_range(since, until)
        await self.meter.flush()  # this replica's latest counts too
        async with self.db.pool.acquire() as pooled:
            conn = service_connection(pooled)
            rows = await store.usage_totals(conn, tenant_ids=tenant_ids, since=start, until=end)
            storage = await store.storage_by_tenant(
                conn, tenant_ids, sorted(scope) if scope is not None else None
            )
        figures = {t: UsageFigures() for t in tenant_ids}
        for r in rows:
            f = figures[r["tenant_id"]]
            if r["metric"] == "requests":
                f.requests += r["quantity"]
                op = r["operation"] or "other"
                f.requests_by_operation[op] = f.requests_by_operation.get(op, 0) + r["quantity"]
            elif r["metric"] in METRICS:
                setattr(f, r["metric"], getattr(f, r["metric"]) + r["quantity"])
        return [
            TenantUsage(
                tenant_id=t,
                since=start,
                until=end,
                usage=figures[t],
                storage=_storage(storage.get(t)),
            )
            for t in tenant_ids
        ]


def _storage(values: tuple[int, int, int] | None) -> StorageFigures:
    if values is None:
        return StorageFigures()
    return StorageFigures(collections=values[0], vectors=values[1], bytes=values[2])
