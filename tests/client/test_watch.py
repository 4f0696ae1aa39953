"""Watches against a real etcd: start revisions, prev_kv, filters, cancel, compaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftkv.client import Client, EventType, Watch, WatchCompactedError, WatchResponse
from raftkv.client.models import Event
from tests.client.etcd_cluster import run_etcd_cluster
from tests.etcd_process import EtcdProcess

EVENT_WAIT_S = 5.0


async def next_events(watch: Watch, count: int) -> list[Event]:
    """The next `count` events (across as many responses as it takes)."""
    events: list[Event] = []

    async def collect() -> None:
        async for response in watch:
            events.extend(response.events)
            if len(events) >= count:
                return

    await asyncio.wait_for(collect(), EVENT_WAIT_S)
    return events


async def test_watch_from_now_sees_later_puts_and_deletes(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        await client.put(prefix + "before", "x")
        async with client.watch(prefix, prefix=True) as watch:
            put = await client.put(prefix + "a", "1")
            deleted = await client.delete(prefix + "before")
            events = await next_events(watch, 2)
        assert [event.type for event in events] == [EventType.PUT, EventType.DELETE]
        assert events[0].kv.key == (prefix + "a").encode() and events[0].kv.value == b"1"
        assert events[0].kv.mod_revision == put.header.revision
        assert events[1].kv.key == (prefix + "before").encode()
        assert events[1].kv.mod_revision == deleted.header.revision
        assert events[0].prev_kv is None


async def test_watch_from_a_past_revision_replays_history(etcd: EtcdProcess, prefix: str) -> None:
    key = prefix + "k"
    async with Client([etcd.endpoint]) as client:
        first = await client.put(key, "1")
        await client.put(key, "2")
        await client.put(prefix + "other", "ignored")  # not the watched key
        await client.delete(key)
        watch = await client.watch(key, start_revision=first.header.revision, prev_kv=True)
        try:
            events = await next_events(watch, 3)
        finally:
            await watch.cancel()
        assert [(e.type, e.kv.value) for e in events] == [
            (EventType.PUT, b"1"),
            (EventType.PUT, b"2"),
            (EventType.DELETE, b""),
        ]
        assert events[0].prev_kv is None  # the key did not exist before
        assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
        assert events[2].prev_kv is not None and events[2].prev_kv.value == b"2"
        revisions = [event.kv.mod_revision for event in events]
        assert revisions == sorted(revisions) and revisions[0] == first.header.revision
        assert watch.next_revision == revisions[-1] + 1


async def test_filters_drop_puts_or_deletes(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        start = (await client.put(prefix + "a", "1")).header.revision
        await client.delete(prefix + "a")
        await client.put(prefix + "b", "2")
        await client.delete(prefix + "b")
        async with client.watch(prefix, prefix=True, start_revision=start, no_put=True) as w:
            deletes = await next_events(w, 2)
        async with client.watch(prefix, prefix=True, start_revision=start, no_delete=True) as w:
            puts = await next_events(w, 2)
        assert [e.type for e in deletes] == [EventType.DELETE] * 2
        assert [e.type for e in puts] == [EventType.PUT] * 2
        assert [e.kv.key[-1:] for e in puts] == [b"a", b"b"]


async def test_cancel_ends_a_waiting_iteration(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        watch = await client.watch(prefix + "quiet")
        received: list[WatchResponse] = []

        async def iterate() -> None:
            async for response in watch:
                received.append(response)

        iteration = asyncio.create_task(iterate())
        await asyncio.sleep(0.2)
        assert not iteration.done()  # nothing happened, so it waits
        await watch.cancel()
        await asyncio.wait_for(iteration, EVENT_WAIT_S)  # ends, without an error
        await client.put(prefix + "quiet", "after cancel")
        assert received == []
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()


async def test_watch_on_compacted_revision_raises(fresh_etcd: EtcdProcess) -> None:
    async with Client([fresh_etcd.endpoint]) as client:
        first = await client.put("k", "1")
        await client.put("k", "2")
        latest = await client.put("k", "3")
        await client.compact(latest.header.revision)
        watch = client.watch("k", start_revision=first.header.revision)
        with pytest.raises(WatchCompactedError) as caught:
            await watch.start()
            await next_events(watch, 1)
        assert caught.value.compact_revision == latest.header.revision
        # The watch is over: iterating again ends at once.
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()


async def test_several_watches_each_see_only_their_key(etcd: EtcdProcess, prefix: str) -> None:
    async with Client([etcd.endpoint]) as client:
        watches = [await client.watch(prefix + str(i)) for i in range(5)]
        try:
            for i in range(5):
                await client.put(prefix + str(i), str(i))
            for i, watch in enumerate(watches):
                (event,) = await next_events(watch, 1)
                assert event.kv.value == str(i).encode()
        finally:
            for watch in watches:
                await watch.cancel()


async def test_watch_survives_its_channel_being_retired(etcd: EtcdProcess, prefix: str) -> None:
    # Two entries for one member: a fail-over moves to a new channel, and the old one is
    # closed once its grace period (the client's timeout) has passed.
    async with Client([etcd.endpoint, etcd.endpoint], timeout_s=0.3) as client:
        async with client.watch(prefix + "k") as watch:
            first = await client.ready_connection()
            client.fail_over(first)
            await asyncio.sleep(0.6)  # the old channel is closed under the open stream
            put = await client.put(prefix + "k", "after fail-over")
            (event,) = await next_events(watch, 1)
        assert event.kv.mod_revision == put.header.revision
        assert (await client.ready_connection()) is not first


async def test_progress_notifications_arrive_on_a_quiet_watch(tmp_path: Path) -> None:
    fast_progress = ["--experimental-watch-progress-notify-interval=200ms"]
    with run_etcd_cluster(tmp_path, size=1, extra_args=fast_progress) as cluster:
        async with Client(cluster.endpoints) as client:
            written = await client.put("other", "v")
            async with client.watch("quiet", progress_notify=True) as watch:
                response = await asyncio.wait_for(anext(watch), EVENT_WAIT_S)
            assert response.events == ()
            assert response.revision >= written.header.revision
            async with client.watch("quiet") as silent:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(anext(silent), 0.6)  # three intervals: nothing
