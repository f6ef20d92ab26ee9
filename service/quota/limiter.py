"""Request limits: sliding windows (the `limits` library) and a token bucket for request cost.

Both live in process memory (memory://, one replica) or in Redis (redis://, shared by replicas:
the window counters through `limits`' Lua scripts, the bucket through a Lua script of ours, so
every check is one atomic round trip). If Redis cannot be reached, requests are let through:
an unavailable counter store must not take the service down (logged, counted, shown in health).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from service.metrics import RATE_LIMIT_STORAGE_ERRORS

log = logging.getLogger("vectorhive.ratelimit")

NAMESPACE = "vectorhive"

# KEYS[1] the bucket; ARGV capacity, refill per second, cost. Returns {allowed, tokens left}.
# The clock is Redis's own, so replicas with skewed clocks still share one bucket correctly.
_BUCKET_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    allowed: bool
    name: str = ""
    limit: int = 0
    remaining: int = 0
    reset_in: float = 0.0


@dataclass(frozen=True, slots=True)
class BucketVerdict:
    allowed: bool
    tokens: float


class _LocalWindows:
    """memory:// windows, in this process: the algorithms of the `limits` strategies used with Redis
    (an exact moving window; a sliding-window counter over fixed windows aligned on the epoch, the
    previous one weighted by the share of it still in view), without that library's memory storage
    (a lock, key strings and a list insert per check: about 70 us of every request with limits on,
    docs/benchmarks.md). Nothing here awaits, so one event loop needs no lock. Keys carry the limit,
    as the library's do: a tenant whose limit changes starts a fresh window."""

    SWEEP_EVERY = 10_000  # operations between sweeps of idle keys

    def __init__(self) -> None:
        self._moving: dict[tuple[str, int, int], deque[float]] = {}
        # key -> [window index, count in it, count in the window before]
        self._counters: dict[tuple[str, int, int], list[int]] = {}
        self._operations = 0

    def _events(self, key: tuple[str, int, int], now: float) -> deque[float]:
        self._operations += 1
        if self._operations >= self.SWEEP_EVERY:
            self._sweep(now)
        events = self._moving.get(key)
        if events is None:
            events = self._moving[key] = deque()
        horizon = now - key[2]
        while events and events[0] < horizon:
            events.popleft()
        return events

    def moving_test(self, key: tuple[str, int, int]) -> bool:
        return len(self._events(key, time.time())) < key[1]

    def moving_hit(self, key: tuple[str, int, int]) -> bool:
        now = time.time()
        events = self._events(key, now)
        if len(events) >= key[1]:
            return False
        events.append(now)
        return True

    def moving_stats(self, key: tuple[str, int, int]) -> tuple[float, int]:
        """(reset time, remaining), as limits' MovingWindowRateLimiter.get_window_stats."""
        now = time.time()
        events = self._events(key, now)
        start = events[0] if events else now
        return start + key[2], key[1] - len(events)

    def _window(self, key: tuple[str, int, int], now: float) -> tuple[list[int], float]:
        """The key's counters moved on to now's window, and the previous window's weight."""
        self._operations += 1
        expiry = key[2]
        window = int(now // expiry)
        state = self._counters.get(key)
        if state is None:
            state = self._counters[key] = [window, 0, 0]
        elif state[0] != window:
            state[2] = state[1] if state[0] == window - 1 else 0
            state[0], state[1] = window, 0
        return state, (1 - (now / expiry) % 1) if state[2] else 0.0

    def counter_hit(self, key: tuple[str, int, int]) -> bool:
        state, weight = self._window(key, time.time())
        if math.floor(state[2] * weight + state[1]) + 1 > key[1]:
            return False
        state[1] += 1
        return True

    def counter_stats(self, key: tuple[str, int, int]) -> tuple[float, int]:
        """(reset time, remaining), as limits' SlidingWindowCounterRateLimiter.get_window_stats."""
        now = time.time()
        state, weight = self._window(key, now)
        limit, expiry = key[1], key[2]
        previous, current = state[2], state[1]
        remaining = max(0, limit - math.floor(previous * weight + current))
        if not (previous or current):
            return now, remaining
        previous_reset_in = current_reset_in = math.inf
        if previous:
            previous_reset_in = (weight * expiry) % (expiry / previous)
        if current:
            current_reset_in = ((1 - (now / expiry) % 1) * expiry + expiry) % expiry
        return now + min(previous_reset_in, current_reset_in), remaining

    def _sweep(self, now: float) -> None:
        self._operations = 0
        for key, events in list(self._moving.items()):
            if not events or events[-1] < now - key[2]:
                del self._moving[key]
        for key, state in list(self._counters.items()):
            if state[0] < int(now // key[2]) - 1:
                del self._counters[key]


class Limiter:
    def __init__(self, storage_uri: str) -> None:
        self.storage_uri = storage_uri
        self.shared = storage_uri.startswith(("redis://", "rediss://"))
        self._redis: Any = None
        self._bucket_script: Any = None
        storage: Storage
        if self.shared:
            import redis.asyncio as aioredis

            storage = RedisStorage(
                "async+" + storage_uri, implementation="redispy", wrap_exceptions=True, key_prefix=NAMESPACE
            )
            self._redis = aioredis.Redis.from_url(storage_uri, socket_timeout=2, socket_connect_timeout=2)
            self._bucket_script = self._redis.register_script(_BUCKET_SCRIPT)
        else:
            storage = MemoryStorage()
        self.storage = storage
        self._local = None if self.shared else _LocalWindows()
        # The minute window is exact (a moving window keeps one entry per request, so its memory
        # grows with the limit: fine for per-minute limits). The hour window uses two counters per
        # tenant (a sliding-window counter, which weighs the previous hour's count), so that large
        # hourly limits cost no memory per request; its count is an approximation by design.
        self.minute_window = MovingWindowRateLimiter(storage)
        self.hour_window = SlidingWindowCounterRateLimiter(storage)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._items: dict[tuple[str, int], RateLimitItem] = {}
        self.last_error: str | None = None
        self._last_logged = 0.0

    def _item(self, period: str, amount: int) -> RateLimitItem:
        item = self._items.get((period, amount))
        if item is None:
            cls = RateLimitItemPerMinute if period == "minute" else RateLimitItemPerHour
            item = self._items[(period, amount)] = cls(amount, namespace=NAMESPACE)
        return item

    def _storage_failed(self, exc: BaseException) -> None:
        RATE_LIMIT_STORAGE_ERRORS.inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._last_logged > 10:
            self._last_logged = now
            log.warning("rate-limit storage unavailable; letting requests through", exc_info=exc)

    async def hit_windows(self, tenant_id: str, per_minute: int, per_hour: int) -> WindowVerdict:
        """Count one request against both windows; the first exhausted one is the verdict.

        A request the minute window refuses is not counted against the hour, and one the hour
        refuses is not counted against the minute."""
        local = self._local
        if local is not None:
            minute_key, hour_key = (tenant_id, per_minute, 60), (tenant_id, per_hour, 3600)
            if not local.moving_test(minute_key):
                return self._refused_here(local.moving_stats(minute_key), per_minute, "requests_per_minute")
            if not local.counter_hit(hour_key):
                return self._refused_here(local.counter_stats(hour_key), per_hour, "requests_per_hour")
            local.moving_hit(minute_key)  # one event loop: nothing took the slot since the test
            return WindowVerdict(allowed=True)
        minute, hour = self._item("minute", per_minute), self._item("hour", per_hour)
        try:
            if not await self.minute_window.test(minute, tenant_id):
                return await self._refused(self.minute_window, minute, tenant_id, "requests_per_minute")
            if not await self.hour_window.hit(hour, tenant_id):
                return await self._refused(self.hour_window, hour, tenant_id, "requests_per_hour")
            if not await self.minute_window.hit(minute, tenant_id):  # lost a race for the last slot
                return await self._refused(self.minute_window, minute, tenant_id, "requests_per_minute")
        except Exception as exc:
            self._storage_failed(exc)
            return WindowVerdict(allowed=True)
        self.last_error = None
        return WindowVerdict(allowed=True)

    async def full(self, name: str, per_minute: int) -> WindowVerdict:
        """Whether `name`'s minute window already holds per_minute hits (counts nothing)."""
        if self._local is not None:
            key = (name, per_minute, 60)
            if self._local.moving_test(key):
                return WindowVerdict(allowed=True)
            return self._refused_here(self._local.moving_stats(key), per_minute, name.partition(":")[0])
        minute = self._item("minute", per_minute)
        try:
            if await self.minute_window.test(minute, name):
                return WindowVerdict(allowed=True)
            return await self._refused(self.minute_window, minute, name, name.partition(":")[0])
        except Exception as exc:
            self._storage_failed(exc)
            return WindowVerdict(allowed=True)

    async def count(self, name: str, per_minute: int) -> None:
        """One hit in `name`'s minute window (see full)."""
        if self._local is not None:
            self._local.moving_hit((name, per_minute, 60))
            return
        try:
            await self.minute_window.hit(self._item("minute", per_minute), name)
        except Exception as exc:
            self._storage_failed(exc)

    @staticmethod
    def _refused_here(stats: tuple[float, int], limit: int, name: str) -> WindowVerdict:
        reset_time, remaining = stats
        return WindowVerdict(
            allowed=False,
            name=name,
            limit=limit,
            remaining=remaining,
            reset_in=max(0.0, reset_time - time.time()),
        )

    @staticmethod
    async def _refused(strategy: Any, item: RateLimitItem, tenant_id: str, name: str) -> WindowVerdict:
        stats = await strategy.get_window_stats(item, tenant_id)
        return WindowVerdict(
            allowed=False,
            name=name,
            limit=item.amount,
            remaining=stats.remaining,
            reset_in=max(0.0, stats.reset_time - time.time()),
        )

    async def take(self, tenant_id: str, *, capacity: float, rate: float, cost: float) -> BucketVerdict:
        """Take `cost` tokens from the tenant's bucket, if it holds that many (all or nothing)."""
        if self._bucket_script is not None:
            try:
                allowed, tokens = await self._bucket_script(
                    keys=[f"{NAMESPACE}:bucket:{tenant_id}"], args=[capacity, rate, cost]
                )
            except Exception as exc:
                self._storage_failed(exc)
                return BucketVerdict(allowed=True, tokens=capacity)
            return BucketVerdict(allowed=bool(int(allowed)), tokens=float(tokens))
        now = time.monotonic()
        tokens, stamp = self._buckets.get(tenant_id, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - stamp) * rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[tenant_id] = (tokens, now)
        return BucketVerdict(allowed=allowed, tokens=tokens)

    async def ping(self) -> bool:
        if self._redis is None:
            return True
        try:
            return bool(await self._redis.ping())
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self.shared:
            bridge = getattr(self.storage, "bridge", None)
            client = getattr(bridge, "storage", None)
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()


def retry_after(cost: float, tokens: float, rate: float) -> float:
    return math.ceil(max(0.0, cost - tokens) / rate * 1000) / 1000
