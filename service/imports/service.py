"""The rules of the imports API: who may import where, and what an import looks like to its tenant."""

from __future__ import annotations

import uuid
from datetime import datetime

from service.auth.models import COLLECTION_NAME_RULE, is_collection_name
from service.auth.principal import TenantPrincipal
from service.collections import store as collection_store
from service.config import S5Settings
from service.db import Database
from service.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from service.imports import store
from service.imports.formats import ImportFailure, parse_encryption_key
from service.imports.models import (
    Import,
    ImportAccepted,
    ImportPage,
    ImportProblem,
    ImportRequest,
    ImportStatus,
)
from service.imports.portal import checked_path
from service.imports.runner import ImportRunner
from service.pagination import decode_cursor, invalid_cursor, split_page

ACTIVE_LIMIT_LOCK = 0x766A  # advisory lock class for counting a tenant's active imports


def _field(field: str, message: str, *, source: str = "body") -> InvalidRequest:
    return InvalidRequest.field(field, message, f"{field}: {message}", source=source)


def _to_model(row: store.ImportRow) -> Import:
    duration = None
    if row.started_at is not None and row.finished_at is not None:
        duration = round((row.finished_at - row.started_at).total_seconds() * 1000, 3)
    return Import(
        import_id=str(row.id),
        collection=row.collection,
        source=row.source,
        manifest_path=row.manifest_path,
        status=row.status,
        chunks_done=row.chunks_done,
        chunks_total=row.chunks_total,
        vectors_loaded=row.vectors_loaded,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=duration,
        cached=row.cached,
        error=ImportProblem(code=row.error_code, message=row.error_message or "") if row.error_code else None,
    )


def _cursor_key(row: store.ImportRow) -> str:
    return f"{row.created_at.isoformat()}|{row.id}"


def _parse_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    decoded = decode_cursor(cursor)
    if decoded is None:
        return None
    try:
        stamp, _, ident = decoded.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except ValueError:
        raise invalid_cursor() from None


class ImportService:
    def __init__(self, db: Database, settings: S5Settings, runner: ImportRunner) -> None:
        self.db = db
        self.settings = settings
        self.runner = runner

    async def submit(
        self, principal: TenantPrincipal, collection: str, request: ImportRequest
    ) -> ImportAccepted:
        if self.settings.portal_url is None:
            raise ServiceUnavailable(
                "Imports from S5 are not configured on this server (the operator sets s5.portal_url).",
                code="imports_not_configured",
            )
        if not is_collection_name(collection):
            raise _field("name", f"must be {COLLECTION_NAME_RULE}", source="path")
        if not principal.may_see_collection(collection):
            raise NotFound(f"Collection '{collection}' does not exist.")
        try:
            checked_path(request.manifest_path)
        except ImportFailure as failure:
            raise _field("manifest_path", failure.message) from None
        key = None
        if request.encryption_key is not None:
            try:
                key = parse_encryption_key(request.encryption_key)
            except ValueError as exc:  # the message describes the format, never the value
                raise _field("encryption_key", str(exc)) from None
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            existing = await collection_store.get(conn, collection)
            if existing is None and not request.create_collection:
                raise NotFound(
                    f"Collection '{collection}' does not exist; create it first, or send "
                    "create_collection: true to create it from the manifest."
                )
            # Serialised per tenant (a transaction-scoped advisory lock), so that the count holds.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", ACTIVE_LIMIT_LOCK, principal.tenant_id
            )
            active = await store.count_active(conn, principal.tenant_id)
            if active >= self.settings.max_active_imports_per_tenant:
                raise Conflict(
                    f"This tenant already has {active} imports pending or loading (at most "
                    f"{self.settings.max_active_imports_per_tenant}); wait for one to finish or cancel one.",
                    code="too_many_active_imports",
                )
            row = await store.insert(
                conn,
                tenant_id=principal.tenant_id,
                collection=collection,
                collection_id=existing.id if existing else None,
                manifest_path=request.manifest_path,
                user_address=request.user_address,
                create_collection=request.create_collection,
                runner=await self.runner.lease_id(),
            )
        self.runner.submit(row, key)
        return ImportAccepted(import_id=str(row.id), status=ImportStatus.PENDING)

    async def _find(self, principal: TenantPrincipal, import_id: str) -> store.ImportRow:
        try:
            ident = uuid.UUID(import_id)
        except ValueError:
            ident = None
        row = None
        if ident is not None:
            async with self.db.tenant_transaction(principal.tenant_id) as conn:
                row = await store.get(conn, ident)
        if row is None or not principal.may_see_collection(row.collection):
            raise NotFound(f"Import '{import_id}' does not exist.")
        return row

    async def get(self, principal: TenantPrincipal, import_id: str) -> Import:
        return _to_model(await self._find(principal, import_id))

    async def list_page(self, principal: TenantPrincipal, *, cursor: str | None, limit: int) -> ImportPage:
        after = _parse_cursor(cursor)
        only = sorted(principal.collections) if principal.collections is not None else None
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            rows = await store.list_page(conn, after=after, limit=limit + 1, only=only)
        rows, next_cursor = split_page(rows, limit, _cursor_key)
        return ImportPage(items=[_to_model(r) for r in rows], next_cursor=next_cursor)

    async def cancel(self, principal: TenantPrincipal, import_id: str) -> Import:
        row = await self._find(principal, import_id)
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cancelled = await store.cancel(conn, row.id)
            current = cancelled or await store.get(conn, row.id)
        if cancelled is None:
            assert current is not None
            raise Conflict(
                f"Import '{import_id}' has already ended ({current.status}); there is nothing to cancel.",
                code="import_finished",
            )
        self.runner.cancel_local(row.id)
        return _to_model(cancelled)
