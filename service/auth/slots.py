"""Bounded concurrency for argon2 verifications, with legitimate callers ahead of a flood.

argon2id is slow on purpose (tens of ms and 64 MiB each), so verifications run a few at a time.
A plain semaphore serves waiters in arrival order: under a flood of wrong secrets, a real key's
first use would queue behind every one of them. Here each waiter says whether it is suspect
(its key id or its client address failed recently); unsuspected waiters always go first, and
suspect ones are refused once too many are waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class SlotsBusy(Exception):
    """Too many suspect verifications are already waiting."""


class PrioritySlots:
    def __init__(self, slots: int, max_waiting: int) -> None:
        self._free = slots
        self.max_waiting = max_waiting
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiting if not f.done())

    @asynccontextmanager
    async def slot(self, *, suspect: bool) -> AsyncIterator[None]:
        await self._acquire(suspect)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, suspect: bool) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        if suspect and self.waiting >= self.max_waiting:
            raise SlotsBusy
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (1 if suspect else 0, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot just as the waiter was cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
