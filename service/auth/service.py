"""Key lifecycle (create, list, revoke, rotate) and authentication (key -> Principal)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from service.auth import store
from service.auth.cache import KeyCache
from service.auth.hivehub import HiveHubClient, HubUnavailable, KeyAnswer
from service.auth.keys import KeyKind, fingerprint, hash_secret, new_key, parse_key, verify_secret
from service.auth.models import (
    COLLECTION_NAME_RULE,
    ApiKey,
    CreatedApiKey,
    CreateKeyRequest,
    is_collection_name,
)
from service.auth.principal import Permission, Principal
from service.auth.proxies import ClientAddress
from service.auth.slots import PrioritySlots, SlotsBusy
from service.cluster import audit
from service.config import AuthSettings
from service.db import Database
from service.db.notify import AUTH_CHANNEL, notify
from service.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from service.metrics import AUTH_CACHE_HITS, AUTH_CACHE_MISSES, AUTH_FAILURES, AUTH_HASH_CHECKS
from service.pagination import Page, decode_cursor, page_of
from service.quota.limiter import Limiter
from service.quota.service import QuotaService
from service.tenants import store as tenant_store
from service.tenants.models import TENANT_ID_PATTERN

log = logging.getLogger("vectorhive.auth")

INVALID_KEY = "The API key is not valid."
_BAD_ID_MESSAGES = {
    "unknown": INVALID_KEY,
    "revoked": "The API key has been revoked.",
    "expired": "The API key has expired.",
}


def _created(key: ApiKey, token: str) -> CreatedApiKey:
    return CreatedApiKey(**{f: getattr(key, f) for f in ApiKey.__struct_fields__}, key=token)


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is None:
        return
    if expires_at.tzinfo is None:
        raise InvalidRequest(
            "expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z",
            errors=[{"field": "expires_at", "source": "body", "message": "time zone missing"}],
        )
    if expires_at <= datetime.now(UTC):
        raise InvalidRequest(
            "expires_at must be in the future",
            errors=[{"field": "expires_at", "source": "body", "message": "in the past"}],
        )


def _check_scope(scope: frozenset[str] | None, collections: list[str] | None) -> None:
    """A key limited to some collections manages only keys limited to (some of) the same ones."""
    if scope is None:
        return
    if collections is None or not set(collections) <= scope:
        raise Forbidden(
            "This key is limited to collections "
            f"{', '.join(sorted(scope))}; it can only manage keys limited to some of those.",
            code="insufficient_scope",
        )


class KeyService:
    def __init__(self, db: Database, cache: KeyCache | None = None) -> None:
        self.db = db
        self.cache = cache

    async def create(
        self,
        tenant_id: str | None,
        request: CreateKeyRequest,
        *,
        scope: frozenset[str] | None = None,
        actor: Principal | None = None,
    ) -> CreatedApiKey:
        """A tenant key (tenant_id set) or an operator key (tenant_id None; permission ignored).

        scope: the collections the creating key is limited to; the new key may not see more.
        """
        _check_expiry(request.expires_at)
        for i, name in enumerate(request.collections or []):
            if not is_collection_name(name):
                raise InvalidRequest(
                    f"collections[{i}]: '{name}' is not a collection name ({COLLECTION_NAME_RULE})",
                    errors=[{"field": f"collections[{i}]", "message": f"must be {COLLECTION_NAME_RULE}"}],
                )
        _check_scope(scope, request.collections)
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        token, parsed = new_key(kind)
        secret_hash = await asyncio.to_thread(hash_secret, parsed.secret)
        async with self.db.transaction() as conn:
            if tenant_id is not None and await tenant_store.get(conn, tenant_id) is None:
                raise NotFound(f"Tenant '{tenant_id}' does not exist.")
            key = await store.insert(
                conn,
                key_id=parsed.key_id,
                kind=kind,
                tenant_id=tenant_id,
                name=request.name,
                permission=request.permission if kind is KeyKind.TENANT else None,
                collections=sorted(set(request.collections)) if request.collections and tenant_id else None,
                secret_hash=secret_hash,
                expires_at=request.expires_at,
            )
            await audit.write(
                conn,
                action="key.create",
                tenant_id=tenant_id,
                actor=actor,
                target=key.key_id,
                details={"kind": kind.value, "permission": key.permission, "collections": key.collections},
            )
        log.info("api key created", extra={"key_id": key.key_id, "tenant_id": tenant_id, "kind": kind.value})
        return _created(key, token)

    async def list_page(
        self,
        tenant_id: str | None,
        *,
        cursor: str | None,
        limit: int,
        scope: frozenset[str] | None = None,
    ) -> Page[ApiKey]:
        """scope: the listing key's collections; it sees only keys limited to some of them (the
        keys it may manage), so other keys' collection names stay hidden from it."""
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        keys = await store.list_page(
            self.db.pool,
            tenant_id=tenant_id,
            kind=kind,
            after=decode_cursor(cursor),
            limit=limit + 1,
            within=sorted(scope) if scope is not None else None,
        )
        return page_of(keys, limit, lambda k: k.key_id)

    async def get(self, tenant_id: str | None, key_id: str, *, scope: frozenset[str] | None = None) -> ApiKey:
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        key = await store.get(self.db.pool, key_id, tenant_id=tenant_id, kind=kind)
        if key is None or (
            scope is not None and (key.collections is None or not set(key.collections) <= scope)
        ):
            raise NotFound(f"API key '{key_id}' does not exist.")
        return key

    async def revoke(
        self,
        tenant_id: str | None,
        key_id: str,
        *,
        any_tenant: bool = False,
        scope: frozenset[str] | None = None,
        actor: Principal | None = None,
    ) -> ApiKey:
        """Revoke a key of `tenant_id` (or any key at all, for the operator CLI with any_tenant)."""
        async with self.db.transaction() as conn:
            if not any_tenant:
                _check_scope(scope, (await self._get_locked(conn, tenant_id, key_id)).collections)
            key = await store.revoke(conn, key_id)
            if key is not None:
                # Every process on the database evicts the key when this commits.
                await notify(conn, AUTH_CHANNEL, f"key:{key_id}")
                await audit.write(
                    conn, action="key.revoke", tenant_id=key.tenant_id, actor=actor, target=key_id
                )
        if key is None:
            raise NotFound(f"API key '{key_id}' does not exist.")
        self._forget(key_id)
        log.info("api key revoked", extra={"key_id": key_id, "tenant_id": key.tenant_id})
        return key

    async def rotate(
        self,
        tenant_id: str,
        key_id: str,
        *,
        scope: frozenset[str] | None = None,
        actor: Principal | None = None,
    ) -> CreatedApiKey:
        """A new key with the same name, permission, scope and expiry; the old one is revoked at once."""
        token, parsed = new_key(KeyKind.TENANT)
        secret_hash = await asyncio.to_thread(hash_secret, parsed.secret)
        async with self.db.transaction() as conn:
            old = await self._get_locked(conn, tenant_id, key_id)
            _check_scope(scope, old.collections)
            if old.revoked_at is not None:
                raise Conflict(f"API key '{key_id}' is revoked; create a new key instead.")
            new = await store.insert(
                conn,
                key_id=parsed.key_id,
                kind=KeyKind.TENANT,
                tenant_id=tenant_id,
                name=old.name,
                permission=old.permission,
                collections=old.collections,
                secret_hash=secret_hash,
                expires_at=old.expires_at,
                rotated_from=old.key_id,
            )
            await store.revoke(conn, key_id)
            await notify(conn, AUTH_CHANNEL, f"key:{key_id}")
            await audit.write(
                conn,
                action="key.rotate",
                tenant_id=tenant_id,
                actor=actor,
                target=key_id,
                details={"new_key_id": new.key_id},
            )
        self._forget(key_id)
        log.info(
            "api key rotated", extra={"key_id": key_id, "new_key_id": new.key_id, "tenant_id": tenant_id}
        )
        return _created(new, token)

    async def _get_locked(self, conn: Any, tenant_id: str | None, key_id: str) -> ApiKey:
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        key = await store.get(conn, key_id, tenant_id=tenant_id, kind=kind, for_update=True)
        if key is None:
            raise NotFound(f"API key '{key_id}' does not exist.")
        return key

    def _forget(self, key_id: str) -> None:
        if self.cache is not None:
            self.cache.evict_key(key_id)


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
            await store.touch(self.db.pool, list(pending), list(pending.values()))
        except Exception:
            log.warning("could not record last_used_at; will retry", exc_info=True)
            for key_id, used in pending.items():
                self._pending.setdefault(key_id, used)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()


class KeyStatus(msgspec.Struct, kw_only=True):
    """What POST /api/v1/cluster/keys/validate tells an operator about a key: never its hash."""

    valid: bool
    status: str  # active | revoked | expired | unknown | malformed | tenant_suspended
    source: str | None = None  # local | hivehub
    kind: KeyKind | None = None
    key_id: str | None = None
    tenant_id: str | None = None
    permission: Permission | None = None
    collections: list[str] | None = None
    expires_at: datetime | None = None


class SessionTokens(Protocol):
    """Session tokens (service.sessions.verifier): every bearer path accepts them too."""

    def accepts(self, token: str) -> bool:
        """Whether the token has the form of a session token (cheap, no verification)."""

    async def authenticate(self, token: str) -> Principal:
        """A read-only principal limited to the session's collections, or Unauthorized."""

    async def note_use(self, principal: Principal, operation: str) -> None:
        """Count a use of a session token (max_queries, audit); raise when it is used up."""


class Authenticator:
    def __init__(
        self,
        db: Database,
        settings: AuthSettings,
        cache: KeyCache,
        recorder: LastUsedRecorder,
        *,
        hub: HiveHubClient | None = None,
        quotas: QuotaService | None = None,
        audit_buffer: audit.AuditBuffer | None = None,
        limiter: Limiter | None = None,
        trusted_proxies: Sequence[str] = (),
        sessions: SessionTokens | None = None,
    ) -> None:
        self.db = db
        # Whose address a request is from, for the per-address limit (service/auth/proxies.py).
        self.client_address = ClientAddress(trusted_proxies)
        self.settings = settings
        self.cache = cache
        self.sessions = sessions
        self.recorder = recorder
        self.hub = hub
        self.quotas = quotas
        self.audit = audit_buffer or audit.AuditBuffer()
        # Counts wrong secrets per key id and per client address (shared by replicas with Redis).
        self.limiter = limiter or Limiter("memory://")
        self._hash_slots = PrioritySlots(settings.max_concurrent_hash_checks, settings.max_queued_hash_checks)
        # Concurrent first uses of one key share one verification instead of queueing N argon2 runs.
        self._inflight: dict[bytes, asyncio.Future[Principal]] = {}
        # "key:<id>" / "address:<ip>" -> when a wrong secret last came from it (priority only).
        self._suspects: OrderedDict[str, float] = OrderedDict()
        # key id -> argon2 verifications running or waiting for it. A key has one secret and
        # concurrent first uses of one token share a verification, so a second one in flight means
        # different secrets at once: a flood, whose first wave has no failure on record yet.
        self._verifying: dict[str, int] = {}

    def default_principal(self) -> Principal:
        """Single-tenant mode without a key: the default tenant, with ADMIN permission."""
        return Principal(
            kind=KeyKind.TENANT,
            key_id=None,
            tenant_id=self.settings.default_tenant_id,
            permission=Permission.ADMIN,
        )

    async def authenticate(self, token: str, client: str | None = None) -> Principal:
        """token: the bearer key or session token; client: the caller's address (for the
        pre-authentication limits)."""
        if self.sessions is not None and self.sessions.accepts(token):
            return await self.sessions.authenticate(token)
        fp = fingerprint(token)
        principal = self.cache.get(fp)
        if principal is not None:
            AUTH_CACHE_HITS.inc()
            if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
                self.cache.evict_key(principal.key_id or "")
                AUTH_FAILURES.labels("expired").inc()
                raise Unauthorized("The API key has expired.")
            if principal.key_id is not None and principal.source == "local":
                self.recorder.note(principal.key_id)
            return principal
        AUTH_CACHE_MISSES.inc()
        if self.cache.is_known_bad(fp):
            AUTH_FAILURES.labels("invalid").inc()
            raise Unauthorized(INVALID_KEY)
        parsed = parse_key(token)
        if parsed is not None:
            # Before any database read or argon2 run: ids known to be bad.
            bad = self.cache.bad_key_id(parsed.key_id)
            if bad is not None:
                AUTH_FAILURES.labels("invalid" if bad == "unknown" else bad).inc()
                raise Unauthorized(_BAD_ID_MESSAGES[bad])

        inflight = self._inflight.get(fp)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[fp] = future
        reserved: str | None = None
        try:
            if parsed is not None:
                # Before any database read or argon2 run: the failure limits, counting secrets
                # for this key id that are being checked now (claimed here, with no await between
                # the check and the claim, so a wave of concurrent ones cannot all pass).
                self._claim_verification(parsed.key_id)
                reserved = parsed.key_id
                await self._check_failure_limits(parsed.key_id, client)
            principal = await self._verify(token, fp, client)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(principal)
            return principal
        finally:
            del self._inflight[fp]
            if reserved is not None:
                left = self._verifying.pop(reserved) - 1
                if left > 0:
                    self._verifying[reserved] = left

    def _claim_verification(self, key_id: str) -> None:
        per_key = self.settings.failed_verifications_per_key_per_minute
        running = self._verifying.get(key_id, 0)
        if per_key > 0 and running >= per_key:
            # As many other secrets as the per-key limit are being checked already: each may fail.
            AUTH_FAILURES.labels("rate_limited").inc()
            raise TooManyRequests(
                f"Too many authentication attempts for key id {key_id} at once; retry shortly. "
                "Keys already in use are not affected.",
                limit_name="auth_failures_per_key",
                scope="key",
                value=per_key,
                retry_after=1,
            )
        self._verifying[key_id] = running + 1

    def _fail(
        self, reason: str, message: str, *, key_id: str | None = None, tenant_id: str | None = None
    ) -> Unauthorized:
        AUTH_FAILURES.labels(reason).inc()
        self.audit.auth_failure(reason, key_id=key_id, tenant_id=tenant_id)
        return Unauthorized(message)

    def _failure_windows(self, key_id: str, client: str | None) -> list[tuple[str, int, str]]:
        """(counter name, limit per minute, limit name) of the windows that apply."""
        windows = []
        if self.settings.failed_verifications_per_key_per_minute > 0:
            windows.append(
                (
                    f"auth_failures_per_key:{key_id}",
                    self.settings.failed_verifications_per_key_per_minute,
                    "key",
                )
            )
        if client is not None and self.settings.failed_verifications_per_address_per_minute > 0:
            windows.append(
                (
                    f"auth_failures_per_address:{client}",
                    self.settings.failed_verifications_per_address_per_minute,
                    "address",
                )
            )
        return windows

    async def _check_failure_limits(self, key_id: str, client: str | None) -> None:
        for name, limit, scope in self._failure_windows(key_id, client):
            verdict = await self.limiter.full(name, limit)
            if verdict.allowed:
                continue
            AUTH_FAILURES.labels("rate_limited").inc()
            whom = f"key id {key_id}" if scope == "key" else "your address"
            raise TooManyRequests(
                f"Too many failed authentication attempts: {limit} wrong secrets per minute for "
                f"{whom}. Retry in {max(1, round(verdict.reset_in))} s; keys already in use are "
                "not affected.",
                limit_name=name.partition(":")[0],
                scope=scope,
                value=limit,
                retry_after=verdict.reset_in,
            )

    async def _count_failure(self, key_id: str, client: str | None) -> None:
        now = self.cache.now()
        self._suspects[f"key:{key_id}"] = now
        if client is not None:
            self._suspects[f"address:{client}"] = now
        while len(self._suspects) > self.cache.max_size:
            self._suspects.popitem(last=False)
        for name, limit, _ in self._failure_windows(key_id, client):
            await self.limiter.count(name, limit)

    def _is_suspect(self, key_id: str, client: str | None) -> bool:
        """A wrong secret for this key id, or from this address, in the last minute; or another
        secret for this key id being checked right now."""
        if self._verifying.get(key_id, 0) > 1:  # itself, and another
            return True
        now = self.cache.now()
        return any(
            now - self._suspects.get(subject, float("-inf")) < 60
            for subject in (f"key:{key_id}", f"address:{client}")
        )

    async def _verify(self, token: str, fp: bytes, client: str | None = None) -> Principal:
        parsed = parse_key(token)
        if parsed is None:
            if self.hub is not None:
                return await self._verify_with_hub(token, fp)
            raise self._fail(
                "malformed",
                "The API key is malformed: expected 'Authorization: Bearer vh_<key id>_<secret>'.",
            )
        read_at = self.cache.now()
        found = await store.for_auth(self.db.pool, parsed.key_id)
        if found is None and self.hub is not None and parsed.kind is KeyKind.TENANT:
            return await self._verify_with_hub(token, fp)
        if found is None:
            self.cache.put_bad_key_id(parsed.key_id, "unknown")
            raise self._fail("invalid", INVALID_KEY, key_id=parsed.key_id)
        if found.key.kind is not parsed.kind:
            # The id exists with the other prefix: only this exact token is known to be bad.
            self.cache.put_known_bad(fp)
            raise self._fail("invalid", INVALID_KEY, key_id=parsed.key_id)
        key = found.key
        # Revoked and expired keys are refused whatever the secret: no argon2 run for them.
        if key.revoked_at is not None:
            self.cache.put_bad_key_id(key.key_id, "revoked")
            raise self._fail(
                "revoked", _BAD_ID_MESSAGES["revoked"], key_id=key.key_id, tenant_id=key.tenant_id
            )
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            self.cache.put_bad_key_id(key.key_id, "expired")
            raise self._fail(
                "expired", _BAD_ID_MESSAGES["expired"], key_id=key.key_id, tenant_id=key.tenant_id
            )
        try:
            async with self._hash_slots.slot(suspect=self._is_suspect(key.key_id, client)):
                AUTH_HASH_CHECKS.inc()
                ok = await asyncio.to_thread(verify_secret, found.secret_hash, parsed.secret)
        except SlotsBusy:
            AUTH_FAILURES.labels("rate_limited").inc()
            raise TooManyRequests(
                "Too many failed authentication attempts are being checked; retry shortly.",
                limit_name="max_queued_hash_checks",
                scope="server",
                value=self.settings.max_queued_hash_checks,
                retry_after=1,
            ) from None
        if not ok:
            self.cache.put_known_bad(fp)
            # Recorded before authenticate() stops counting it as being checked: no gap.
            await self._count_failure(key.key_id, client)
            raise self._fail("invalid", INVALID_KEY, key_id=key.key_id, tenant_id=key.tenant_id)
        principal = Principal(
            kind=key.kind,
            key_id=key.key_id,
            tenant_id=key.tenant_id,
            permission=key.permission,
            collections=frozenset(key.collections) if key.collections is not None else None,
            tenant_active=found.tenant_active,
            expires_at=key.expires_at,
        )
        # Not cached if the key was revoked or its tenant suspended while argon2 ran.
        self.cache.put(fp, principal, read_at=read_at)
        await store.touch(self.db.pool, [key.key_id], [datetime.now(UTC)])
        return principal

    async def _ask_hub(self, token: str) -> KeyAnswer:
        assert self.hub is not None
        try:
            answer = await self.hub.validate_key(token)
        except HubUnavailable as exc:
            raise ServiceUnavailable(
                "The API key is not known here and HiveHub, which validates it, is unreachable; "
                "retry shortly.",
                code="hivehub_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        if answer.permission is not None:
            # The HiveHub seed spells the levels ADMIN, READ_WRITE, READ_ONLY, MCP: any case will do.
            answer.permission = answer.permission.lower()
        if answer.valid and (
            answer.tenant_id is None
            or not re.fullmatch(TENANT_ID_PATTERN, answer.tenant_id)
            or answer.permission not in {p.value for p in Permission}
        ):
            log.error("HiveHub validated a key with an unusable tenant id or permission")
            raise ServiceUnavailable(
                "HiveHub's answer about this key could not be used; retry later or contact the operator.",
                code="hivehub_unavailable",
                headers={"Retry-After": "30"},
            )
        return answer

    async def _verify_with_hub(self, token: str, fp: bytes) -> Principal:
        read_at = self.cache.now()
        answer = await self._ask_hub(token)
        hub_key_id = "hub_" + fp.hex()[:12]  # names the key in logs and audit; not secret
        if not answer.valid:
            self.cache.put_known_bad(fp)
            raise self._fail("invalid", INVALID_KEY, key_id=hub_key_id)
        assert answer.tenant_id is not None and answer.permission is not None
        if answer.expires_at is not None and answer.expires_at <= datetime.now(UTC):
            self.cache.put_known_bad(fp)
            raise self._fail(
                "expired", "The API key has expired.", key_id=hub_key_id, tenant_id=answer.tenant_id
            )
        active = await self._ensure_hub_tenant(answer.tenant_id, answer.tenant_name)
        if self.quotas is not None:
            self.quotas.set_hub_quotas(answer.tenant_id, answer.quotas)
        principal = Principal(
            kind=KeyKind.TENANT,
            key_id=hub_key_id,
            tenant_id=answer.tenant_id,
            permission=Permission(answer.permission),
            collections=frozenset(answer.collections) if answer.collections is not None else None,
            tenant_active=active,
            expires_at=answer.expires_at,
            source="hivehub",
        )
        self.cache.put(fp, principal, read_at=read_at)
        return principal

    async def _ensure_hub_tenant(self, tenant_id: str, name: str | None) -> bool:
        """A tenant first seen through HiveHub is created here (with its role); returns whether active."""
        async with self.db.transaction() as conn:
            created = await tenant_store.insert(conn, tenant_id, name or tenant_id, source="hivehub")
            if created is not None:
                await self.db.ensure_tenant_role(conn, tenant_id)
                log.info("tenant created from HiveHub", extra={"tenant_id": tenant_id})
                await audit.write(
                    conn,
                    action="tenant.create",
                    tenant_id=tenant_id,
                    actor=None,
                    details={"source": "hivehub"},
                )
                return True
            existing = await conn.fetchrow("SELECT status, source FROM tenants WHERE id = $1", tenant_id)
        if existing is not None and existing["source"] != "hivehub":
            # A local tenant (keys made with `vectorhive keys create`) with the id HiveHub gave its
            # customer: never hand one tenant's data to the other.
            log.error(
                "HiveHub validated a key for a tenant id that belongs to a local tenant; refused",
                extra={"tenant_id": tenant_id},
            )
            raise Forbidden(
                "This key's tenant, as HiveHub names it, is a different tenant on this server; the "
                "operator must resolve the conflict.",
                code="hivehub_tenant_conflict",
            )
        return existing is not None and existing["status"] == "active"

    async def inspect(self, token: str) -> KeyStatus:
        """A key's status for an operator, without caching or counting it as a use."""
        parsed = parse_key(token)
        found = await store.for_auth(self.db.pool, parsed.key_id) if parsed is not None else None
        if found is not None and parsed is not None and found.key.kind is parsed.kind:
            async with self._hash_slots.slot(suspect=False):  # operators only
                ok = await asyncio.to_thread(verify_secret, found.secret_hash, parsed.secret)
            if not ok:
                return KeyStatus(valid=False, status="unknown")
            key = found.key
            status = "active"
            if key.revoked_at is not None:
                status = "revoked"
            elif key.expires_at is not None and key.expires_at <= datetime.now(UTC):
                status = "expired"
            elif not found.tenant_active:
                status = "tenant_suspended"
            return KeyStatus(
                valid=status == "active",
                status=status,
                source="local",
                kind=key.kind,
                key_id=key.key_id,
                tenant_id=key.tenant_id,
                permission=key.permission,
                collections=key.collections,
                expires_at=key.expires_at,
            )
        if self.hub is not None and (parsed is None or parsed.kind is KeyKind.TENANT):
            answer = await self._ask_hub(token)
            if not answer.valid:
                return KeyStatus(valid=False, status="unknown", source="hivehub")
            expired = answer.expires_at is not None and answer.expires_at <= datetime.now(UTC)
            return KeyStatus(
                valid=not expired,
                status="expired" if expired else "active",
                source="hivehub",
                kind=KeyKind.TENANT,
                key_id="hub_" + fingerprint(token).hex()[:12],
                tenant_id=answer.tenant_id,
                permission=Permission(answer.permission) if answer.permission else None,
                collections=answer.collections,
                expires_at=answer.expires_at,
            )
        return KeyStatus(valid=False, status="malformed" if parsed is None else "unknown")
