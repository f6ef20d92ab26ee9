"""The Ed25519 keys that sign delegation and session tokens: kept in PostgreSQL, sealed, rotated.

Every process holds the public keys that still verify (reloaded when a kid it has not seen turns
up, at most once a second, and when another process rotates: channel vectorhive_sessions,
payload "keys") and the newest current key it can unseal, which it signs with. Rotation retires
the current keys: they stop signing at once but keep verifying until every token they signed has
expired (verify_until), so rotating never invalidates a token in use.

A process that cannot unseal any current key (its secret differs from the one the keys were
sealed with) makes a key of its own without retiring the others, and says so in the log: tokens
stay verifiable everywhere (public keys are not sealed), but replicas should share the secret.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.config import SessionsSettings
from service.db import Database, ServiceConnection
from service.db.connections import service_connection
from service.db.notify import notify
from service.errors import ServiceUnavailable
from service.sessions import store
from service.sessions.tokens import jwk, new_kid, public_bytes, seal, sealing_key, unseal

log = logging.getLogger("vectorhive.sessions.keys")

SESSION_CHANNEL = "vectorhive_sessions"  # "session:<id>" | "keys"
_ROTATION_LOCK = "vectorhive:session-signing-keys"


def load_secret(settings: SessionsSettings) -> str:
    """The configured secret, or the one kept in signing_key_secret_file (made once, mode 0600)."""
    if settings.signing_key_secret is not None:
        return settings.signing_key_secret
    path = Path(settings.signing_key_secret_file)
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process on this folder made it first
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret + "\n")
    log.warning(
        "no sessions.signing_key_secret configured: made one in %s; replicas must share one secret",
        path,
    )
    return secret


class KeyRing:
    def __init__(self, db: Database, settings: SessionsSettings) -> None:
        self.db = db
        self.settings = settings
        self._aead: AESGCM | None = None
        self._public: dict[str, Ed25519PublicKey] = {}
        self._signing: tuple[str, Ed25519PrivateKey, datetime] | None = None
        self._last_reload = float("-inf")
        self._reloading: asyncio.Lock | None = None
        # The public JWKS (anyone may ask): read at most once a second, and afresh after a rotation.
        self._jwks: tuple[float, list[dict[str, Any]]] | None = None

    @property
    def max_token_lifetime(self) -> float:
        """The longest any token signed now can still be valid for."""
        return float(max(self.settings.max_ttl_seconds, self.settings.delegation_max_ttl_seconds)) + 60

    def _sealer(self) -> AESGCM:
        if self._aead is None:
            self._aead = sealing_key(load_secret(self.settings))
        return self._aead

    async def start(self) -> None:
        self._sealer()
        await self.reload()
        if self._signing is None:
            await self._create(retire_others=False)

    async def reload(self) -> None:
        rows = await store.usable_keys(service_connection(self.db.pool))
        aead = self._sealer()
        public: dict[str, Ed25519PublicKey] = {}
        signing = None
        for row in rows:  # newest first
            public[row.kid] = Ed25519PublicKey.from_public_bytes(bytes(row.public_key))
            if signing is None and row.retired_at is None:
                private = unseal(aead, row.kid, bytes(row.private_sealed))
                if private is not None:
                    signing = (row.kid, private, row.created_at)
        self._public, self._signing = public, signing
        self._last_reload = time.monotonic()
        self._jwks = None  # keys changed or may have: the next JWKS request reads them

    def on_notification(self, payload: str) -> None:
        if payload == "keys":
            # Another process rotated: forget when we last read, so the next use reloads.
            self._last_reload = float("-inf")
            self._jwks = None
            asyncio.get_running_loop().create_task(self._safe_reload())

    async def _safe_reload(self) -> None:
        try:
            await self.reload()
        except Exception:
            log.warning("could not reload the session signing keys", exc_info=True)

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        return self._public.get(kid)

    async def find_public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The key for kid; an unknown kid rereads the table at most once a second (a flood of
        made-up kids costs one query a second, a key rotated in by another replica is found)."""
        key = self._public.get(kid)
        if key is not None:
            return key
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            if kid not in self._public and time.monotonic() - self._last_reload >= 1.0:
                await self.reload()
        return self._public.get(kid)

    def current(self) -> tuple[str, Ed25519PrivateKey] | None:
        """The key this process signs with now, if it has one in memory."""
        return (self._signing[0], self._signing[1]) if self._signing is not None else None

    async def signer(self) -> tuple[str, Ed25519PrivateKey]:
        if self._signing is None:
            await self.reload()
        if self._signing is None:
            await self._create(retire_others=False)
        if self._signing is None:
            raise ServiceUnavailable(
                "No session signing key is available; retry shortly.",
                code="signing_key_unavailable",
                headers={"Retry-After": "2"},
            )
        return self._signing[0], self._signing[1]

    async def rotate(self) -> str:
        """A new signing key; the current ones stop signing and verify until their tokens expire."""
        return await self._create(retire_others=True)

    async def rotate_if_old(self) -> str | None:
        """Rotate when the key this process signs with is older than signing_key_rotation_days."""
        age = timedelta(days=self.settings.signing_key_rotation_days)
        if self._signing is None or datetime.now(UTC) - self._signing[2] < age:
            return None
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _ROTATION_LOCK)
            newest = await conn.fetchval(
                "SELECT max(created_at) FROM session_signing_keys WHERE retired_at IS NULL"
            )
            kid = None
            if newest is None or datetime.now(UTC) - newest >= age:  # else another replica just did
                kid = await self._create(retire_others=True, conn=conn)
        await self.reload()
        return kid

    async def _create(self, *, retire_others: bool, conn: ServiceConnection | None = None) -> str:
        kid = new_kid()
        private = Ed25519PrivateKey.generate()
        sealed = seal(self._sealer(), kid, private)
        if conn is None:
            async with self.db.transaction() as tx:
                await self._write(tx, kid, private, sealed, retire_others)
            await self.reload()
        else:
            await self._write(conn, kid, private, sealed, retire_others)  # the caller reloads after COMMIT
        return kid

    async def _write(
        self,
        conn: ServiceConnection,
        kid: str,
        private: Ed25519PrivateKey,
        sealed: bytes,
        retire_others: bool,
    ) -> None:
        await store.insert_key(conn, kid, public_bytes(private.public_key()), sealed)
        retired: list[str] = []
        if retire_others:
            retired = await store.retire_keys(
                conn, except_kid=kid, verify_for_seconds=self.max_token_lifetime
            )
        await notify(conn, SESSION_CHANNEL, "keys")
        log.info("session signing key created", extra={"kid": kid, "retired": retired})

    async def jwks(self) -> list[dict[str, Any]]:
        """Every public key that still verifies, read from the database (other replicas' too)."""
        now = time.monotonic()
        if self._jwks is not None and now - self._jwks[0] < 1.0:
            return self._jwks[1]
        rows = await store.usable_keys(service_connection(self.db.pool))
        keys = [jwk(row.kid, bytes(row.public_key)) for row in rows]
        self._jwks = (now, keys)
        return keys

    async def prune(self) -> int:
        async with self.db.transaction() as conn:
            return await store.delete_unusable_keys(conn)
