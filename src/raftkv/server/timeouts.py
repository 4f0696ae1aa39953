"""Requests that all wait the same time, timed out in the order they began.

Why not ``asyncio.wait_for``: it makes a timer, a callback and a second future for each
wait, 4-5% of a loaded member's event-loop samples (docs/performance.md, change 11), and
nearly every wait ends long before its timer. A member's proposals and linearizable reads
all wait ``request_timeout_s``, so their deadlines come in the order they were added: a
deque, checked from the front on every tick, does the same job for an append each.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from raftkv import limits


class FifoTimeouts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._queue: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._compact_at = limits.SERVER_TIMEOUT_QUEUE_COMPACT_LENGTH
        self._last_deadline_s = float("-inf")

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, future: asyncio.Future[Any], timeout_s: float) -> None:
        """``future`` fails with ``TimeoutError`` ``timeout_s`` from now, unless done."""
        deadline_s = max(self._clock() + timeout_s, self._last_deadline_s)  # kept in order
        self._last_deadline_s = deadline_s
        queue = self._queue
        while queue and queue[0][1].done():
            queue.popleft()
        if len(queue) >= self._compact_at:
            self._queue = queue = collections.deque(e for e in queue if not e[1].done())
            self._compact_at = max(limits.SERVER_TIMEOUT_QUEUE_COMPACT_LENGTH, 2 * len(queue))
        queue.append((deadline_s, future))

    def expire(self) -> None:
        """Fail the futures whose time is up (call it every tick)."""
        now_s = self._clock()
        queue = self._queue
        while queue and (queue[0][0] <= now_s or queue[0][1].done()):
            _, future = queue.popleft()
            if not future.done():
                future.set_exception(TimeoutError())
