"""The front end's shared deadline timer, on a real event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from raftkv.api.h2.deadlines import DeadlineBuckets

WIDTH_S = 0.01


@dataclass(eq=False)
class Item:
    name: str
    deadline_s: float | None = None
    deadline_bucket: int | None = None
    expired_at_s: list[float] = field(default_factory=list)


def expire(item: Item) -> None:
    item.expired_at_s.append(asyncio.get_running_loop().time())


def test_deadlines_fire_never_early_and_at_most_a_bucket_late() -> None:
    async def scenario() -> list[Item]:
        loop = asyncio.get_running_loop()
        buckets: DeadlineBuckets[Item] = DeadlineBuckets(expire, WIDTH_S, horizon_s=1.0)
        start_s = loop.time()
        items = [Item(f"i{n}") for n in range(40)]
        for n, item in enumerate(reversed(items)):  # later deadlines added first too
            buckets.add(item, start_s + 0.005 * (len(items) - n))
        await asyncio.sleep(0.005 * len(items) + 0.1)
        assert len(buckets) == 0
        return items

    for item in asyncio.run(scenario()):
        assert item.deadline_s is not None and len(item.expired_at_s) == 1, item
        late_s = item.expired_at_s[0] - item.deadline_s
        # The loop's clock may tick in milliseconds (uvloop): allow its resolution.
        assert -0.001 <= late_s <= WIDTH_S + 0.05, (item.name, late_s)


def test_a_removed_or_moved_item_does_not_fire_then() -> None:
    async def scenario() -> tuple[Item, Item, Item]:
        loop = asyncio.get_running_loop()
        buckets: DeadlineBuckets[Item] = DeadlineBuckets(expire, WIDTH_S, horizon_s=1.0)
        now_s = loop.time()
        removed, moved, kept = Item("removed"), Item("moved"), Item("kept")
        for item in (removed, moved, kept):
            buckets.add(item, now_s + 0.03)
        buckets.remove(removed)
        buckets.remove(removed)  # twice is harmless
        buckets.add(moved, now_s + 0.12)
        await asyncio.sleep(0.06)
        assert kept.expired_at_s and not moved.expired_at_s and not removed.expired_at_s
        await asyncio.sleep(0.12)
        return removed, moved, kept

    removed, moved, kept = asyncio.run(scenario())
    assert not removed.expired_at_s and len(moved.expired_at_s) == 1
    assert len(kept.expired_at_s) == 1


def test_deadlines_past_the_horizon_wait_in_bounded_buckets() -> None:
    async def scenario() -> Item:
        loop = asyncio.get_running_loop()
        buckets: DeadlineBuckets[Item] = DeadlineBuckets(expire, WIDTH_S, horizon_s=0.05)
        now_s = loop.time()
        far = Item("far")
        buckets.add(far, now_s + 0.2)
        for n in range(1000):  # far-off deadlines all share the horizon's bucket or so
            buckets.add(Item(f"x{n}"), now_s + 3600.0 + n)
        assert len(buckets) <= 2
        await asyncio.sleep(0.12)
        assert not far.expired_at_s  # re-filed at the horizon, not expired
        await asyncio.sleep(0.15)
        buckets.cancel_timer()
        return far

    far = asyncio.run(scenario())
    assert far.deadline_s is not None and len(far.expired_at_s) == 1
    assert far.expired_at_s[0] >= far.deadline_s - 0.001
