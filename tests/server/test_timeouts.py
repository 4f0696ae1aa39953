"""FifoTimeouts on a fake clock: futures time out in order, answered ones are let go."""

from __future__ import annotations

import asyncio

import pytest

from raftkv import limits
from raftkv.server.timeouts import FifoTimeouts


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_futures_time_out_when_due_and_not_before() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock()
        timeouts = FifoTimeouts(clock)
        first, answered, second = (loop.create_future() for _ in range(3))
        timeouts.add(first, 5.0)
        clock.now_s += 1.0
        timeouts.add(answered, 5.0)
        timeouts.add(second, 5.0)
        answered.set_result(None)
        clock.now_s += 3.9
        timeouts.expire()
        assert not first.done() and not second.done()
        clock.now_s += 0.2  # 5.1 s after the first, 4.1 s after the second
        timeouts.expire()
        with pytest.raises(TimeoutError):
            first.result()
        assert not second.done() and answered.result() is None
        clock.now_s += 1.0
        timeouts.expire()
        with pytest.raises(TimeoutError):
            second.result()
        assert len(timeouts) == 0

    asyncio.run(scenario())


def test_a_shorter_timeout_after_a_longer_one_waits_in_line() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock()
        timeouts = FifoTimeouts(clock)
        long, short = loop.create_future(), loop.create_future()
        timeouts.add(long, 10.0)
        timeouts.add(short, 1.0)  # never earlier than the one before it
        clock.now_s += 2.0
        timeouts.expire()
        assert not short.done()
        clock.now_s += 8.0
        timeouts.expire()
        assert long.done() and short.done()

    asyncio.run(scenario())


def test_answered_futures_behind_a_waiting_one_do_not_pile_up() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timeouts = FifoTimeouts(Clock())
        stuck = loop.create_future()
        timeouts.add(stuck, 5.0)
        for _ in range(50 * limits.SERVER_TIMEOUT_QUEUE_COMPACT_LENGTH):
            future = loop.create_future()
            timeouts.add(future, 5.0)
            future.set_result(None)
        assert len(timeouts) <= 2 * limits.SERVER_TIMEOUT_QUEUE_COMPACT_LENGTH
        assert not stuck.done()

    asyncio.run(scenario())
