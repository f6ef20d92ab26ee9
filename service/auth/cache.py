"""The verified-key cache: bounded, with a TTL, keyed by a fast hash of the whole key.

argon2id runs only on a miss. Revocation, rotation and tenant status changes evict at once in
the process that made them, and in every other process on the database through a notification
(service.db.notify, channel AUTH_CHANNEL) sent in the transaction that made the change. While
this process is not receiving notifications the cache is bypassed, and it is emptied whenever
the listener (re)connects, since notifications may have been missed in between.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.auth.principal import Principal
from service.pool import TenantPool

if TYPE_CHECKING:
    from service.db.notify import NotificationHub


class KeyCache:
    def __init__(
        self,
        *,
        ttl: float,
        max_size: int,
        negative_ttl: float,
        max_per_tenant: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.negative_ttl = negative_ttl
        self._clock = clock
        # Verified keys: the tenant-aware LRU + TTL pool (one tenant's keys evict only its own).
        self._entries: TenantPool[bytes, Principal] = TenantPool(
            "api_keys",
            max_size=max_size,
            max_per_tenant=max_per_tenant or max_size,
            ttl=ttl,
            clock=clock,
            on_remove=self._forget_fingerprint,
        )
        self._by_key_id: dict[str, bytes] = {}
        self._negative: OrderedDict[bytes, float] = OrderedDict()
        # Key ids that are unknown, revoked or expired: refused whatever the secret, without argon2
        # or a database read (a fresh secret per request must not get around the negative cache).
        self._bad_ids: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # When a key id or tenant was last evicted: a verification that read the database before
        # then (and so may have seen the key unrevoked, the tenant active) must not be cached.
        self._evicted: dict[str, float] = {}
        # Whether changes made elsewhere reach this cache (see attach); True when nothing is attached.
        self._live: Callable[[], bool] = lambda: True
        # Told of every eviction ("key:<id>", "tenant:<id>", "all"), local or notified: other
        # credentials derived from keys (session tokens) end at the same moment.
        self._listeners: list[Callable[[str], None]] = []

    def add_eviction_listener(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def attach(self, hub: NotificationHub) -> None:
        """Evict on the other processes' changes; bypass the cache while they cannot reach us."""
        from service.db.notify import AUTH_CHANNEL

        hub.subscribe(AUTH_CHANNEL, self.on_notification)
        hub.on_reset(self.clear)
        self._live = lambda: hub.listening

    def on_notification(self, payload: str) -> None:
        kind, _, subject = payload.partition(":")
        if kind == "key":
            self.evict_key(subject)
        elif kind == "tenant":
            self.evict_tenant(subject)

    def _forget_fingerprint(self, fingerprint: bytes, principal: Principal) -> None:
        if principal.key_id is not None and self._by_key_id.get(principal.key_id) == fingerprint:
            del self._by_key_id[principal.key_id]

    def get(self, fingerprint: bytes) -> Principal | None:
        if not self._live():
            return None
        return self._entries.get(fingerprint)

    def now(self) -> float:
        return self._clock()

    def put(self, fingerprint: bytes, principal: Principal, *, read_at: float | None = None) -> None:
        """Cache a verified principal; read_at: when its database row was read (see evict_*)."""
        if not self._live():
            return
        if read_at is not None and any(
            self._evicted.get(subject, float("-inf")) >= read_at
            for subject in (f"key:{principal.key_id}", f"tenant:{principal.tenant_id}", "all")
        ):
            return
        self._entries.put(principal.tenant_id, fingerprint, principal)
        if principal.key_id is not None and fingerprint in self._entries:
            self._by_key_id[principal.key_id] = fingerprint
        self._negative.pop(fingerprint, None)

    def is_known_bad(self, fingerprint: bytes) -> bool:
        expires = self._negative.get(fingerprint)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._negative[fingerprint]
            return False
        return True

    def put_known_bad(self, fingerprint: bytes) -> None:
        if self.negative_ttl <= 0:
            return
        self._negative[fingerprint] = self._clock() + self.negative_ttl
        self._negative.move_to_end(fingerprint)
        while len(self._negative) > self.max_size:
            self._negative.popitem(last=False)

    def bad_key_id(self, key_id: str) -> str | None:
        """Why the key id is refused (unknown | revoked | expired), or None."""
        entry = self._bad_ids.get(key_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._bad_ids[key_id]
            return None
        return entry[0]

    def put_bad_key_id(self, key_id: str, reason: str) -> None:
        """Revoked and expired are final (kept for the TTL); unknown for the negative TTL only."""
        ttl = self.negative_ttl if reason == "unknown" else max(self.ttl, self.negative_ttl)
        if self.negative_ttl <= 0:
            return
        self._bad_ids[key_id] = (reason, self._clock() + ttl)
        self._bad_ids.move_to_end(key_id)
        while len(self._bad_ids) > self.max_size:
            self._bad_ids.popitem(last=False)

    def _mark_evicted(self, subject: str) -> None:
        for listener in self._listeners:
            listener(subject)
        now = self._clock()
        self._evicted[subject] = now
        if len(self._evicted) > self.max_size:
            # Verifications take seconds at most; older marks can no longer matter.
            self._evicted = {k: t for k, t in self._evicted.items() if now - t < 60}

    def evict_key(self, key_id: str) -> None:
        self._mark_evicted(f"key:{key_id}")
        fingerprint = self._by_key_id.get(key_id)
        if fingerprint is not None:
            self._drop(fingerprint)

    def evict_tenant(self, tenant_id: str) -> None:
        self._mark_evicted(f"tenant:{tenant_id}")
        self._entries.evict_tenant(tenant_id)

    def clear(self) -> None:
        # Verifications under way read the database before this: they must not cache what they saw.
        self._mark_evicted("all")
        self._entries.clear()
        self._by_key_id.clear()
        self._negative.clear()
        self._bad_ids.clear()

    def _drop(self, fingerprint: bytes) -> None:
        self._entries.pop(fingerprint)  # on_remove forgets its key id
