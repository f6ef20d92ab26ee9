"""Authentication: a bearer key or session token -> the Principal it stands for.

Local keys are checked here (argon2, behind failure limits and a bounded queue of hash checks);
keys this server does not know go to HiveHub in cluster mode (service.auth.hub_keys), session
tokens to the session verifier.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from service.audit.service import AuditBuffer
from service.auth import store
from service.auth.cache import KeyCache
from service.auth.failures import BAD_ID_MESSAGES, INVALID_KEY, refused
from service.auth.hub_keys import HubKeys
from service.auth.keys import KeyKind, fingerprint, parse_key, verify_secret
from service.auth.last_used import LastUsedRecorder
from service.auth.models import KeyStatus
from service.auth.principal import Permission, Principal
from service.auth.proxies import ClientAddress
from service.auth.slots import PrioritySlots, SlotsBusy
from service.config import AuthSettings
from service.db import Database
from service.db.connections import service_connection
from service.errors import TooManyRequests, Unauthorized
from service.hivehub.client import HiveHubClient
from service.metrics import AUTH_CACHE_HITS, AUTH_CACHE_MISSES, AUTH_FAILURES, AUTH_HASH_CHECKS
from service.quota.limiter import Limiter
from service.quota.service import QuotaService


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
        audit_buffer: AuditBuffer | None = None,
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
        self.audit = audit_buffer or AuditBuffer(db)
        # Keys this server does not know are HiveHub's to validate (cluster mode).
        self.hub = HubKeys(db, hub, cache, self.audit, quotas) if hub is not None else None
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
                raise Unauthorized(BAD_ID_MESSAGES[bad])

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
                return await self.hub.verify(token, fp)
            raise refused(
                self.audit,
                "malformed",
                "The API key is malformed: expected 'Authorization: Bearer vh_<key id>_<secret>'.",
            )
        read_at = self.cache.now()
        found = await store.for_auth(service_connection(self.db.pool), parsed.key_id)
        if found is None and self.hub is not None and parsed.kind is KeyKind.TENANT:
            return await self.hub.verify(token, fp)
        if found is None:
            self.cache.put_bad_key_id(parsed.key_id, "unknown")
            raise refused(self.audit, "invalid", INVALID_KEY, key_id=parsed.key_id)
        if found.key.kind is not parsed.kind:
            # The id exists with the other prefix: only this exact token is known to be bad.
            self.cache.put_known_bad(fp)
            raise refused(self.audit, "invalid", INVALID_KEY, key_id=parsed.key_id)
        key = found.key
        # Revoked and expired keys are refused whatever the secret: no argon2 run for them.
        if key.revoked_at is not None:
            self.cache.put_bad_key_id(key.key_id, "revoked")
            raise refused(
                self.audit, "revoked", BAD_ID_MESSAGES["revoked"], key_id=key.key_id, tenant_id=key.tenant_id
            )
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            self.cache.put_bad_key_id(key.key_id, "expired")
            raise refused(
                self.audit, "expired", BAD_ID_MESSAGES["expired"], key_id=key.key_id, tenant_id=key.tenant_id
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
            raise refused(self.audit, "invalid", INVALID_KEY, key_id=key.key_id, tenant_id=key.tenant_id)
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
        await store.touch(service_connection(self.db.pool), [key.key_id], [datetime.now(UTC)])
        return principal

    async def inspect(self, token: str) -> KeyStatus:
        """A key's status for an operator, without caching or counting it as a use."""
        parsed = parse_key(token)
        found = (
            await store.for_auth(service_connection(self.db.pool), parsed.key_id)
            if parsed is not None
            else None
        )
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
            return await self.hub.inspect(token)
        return KeyStatus(valid=False, status="malformed" if parsed is None else "unknown")
