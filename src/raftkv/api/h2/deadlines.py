"""Calls' deadlines in buckets of a fixed width, all served by one loop timer.

Why: a timer handle per call (``loop.call_later``, then cancelled when the call ends, which
is nearly always first) was 2-7% of a member's event-loop samples at 1000 clients
(docs/performance.md, change 11). Here a deadline is a set insertion and an ended call a
set removal; a deadline fires at most one bucket width late, never early.

Deadlines further away than the horizon wait in the horizon's bucket and are put back when
it fires, so there are never more than horizon / width buckets, whatever clients send.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class HasDeadline(Protocol):
    deadline_s: float | None  # on the loop's clock
    deadline_bucket: int | None  # where it waits, if it does


Item = TypeVar("Item", bound=HasDeadline)


class DeadlineBuckets(Generic[Item]):
    def __init__(
        self, expire: Callable[[Item], None], bucket_width_s: float, horizon_s: float
    ) -> None:
        assert 0 < bucket_width_s <= horizon_s, (bucket_width_s, horizon_s)
        self._expire = expire
        self._width_s = bucket_width_s
        self._horizon_s = horizon_s
        self._buckets: dict[int, set[Item]] = {}
        self._due: list[int] = []  # the buckets' numbers, a heap
        self._timer: asyncio.TimerHandle | None = None
        self._timer_bucket: int | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def add(self, item: Item, deadline_s: float) -> None:
        """Expire ``item`` at ``deadline_s`` (the loop's clock) unless removed first."""
        self.remove(item)
        item.deadline_s = deadline_s
        now_s = asyncio.get_running_loop().time()
        waits_until_s = min(deadline_s, now_s + self._horizon_s)
        bucket = int(waits_until_s / self._width_s) + 1  # fires at or after waits_until_s
        items = self._buckets.get(bucket)
        if items is None:
            items = self._buckets[bucket] = set()
            heapq.heappush(self._due, bucket)
            self._schedule()
        items.add(item)
        item.deadline_bucket = bucket

    def remove(self, item: Item) -> None:
        bucket = item.deadline_bucket
        if bucket is None:
            return
        item.deadline_bucket = None
        items = self._buckets.get(bucket)
        if items is not None:
            items.discard(item)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_bucket = None

    def _schedule(self) -> None:
        first = self._due[0] if self._due else None
        if first is None or first == self._timer_bucket:
            return
        self.cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(first * self._width_s, self._fire)
        self._timer_bucket = first

    def _fire(self) -> None:
        self._timer = self._timer_bucket = None
        now_s = asyncio.get_running_loop().time()
        while self._due and self._due[0] * self._width_s <= now_s:
            items = self._buckets.pop(heapq.heappop(self._due))
            for item in items:
                item.deadline_bucket = None
                deadline_s = item.deadline_s
                assert deadline_s is not None, "an item waits only with a deadline"
                if deadline_s <= now_s:
                    self._expire(item)
                else:  # beyond the horizon when added, or a timer a hair early
                    self.add(item, deadline_s)
        self._schedule()
