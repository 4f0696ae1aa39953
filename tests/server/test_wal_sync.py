"""The WAL sync thread (server/wal_sync.py): results, errors, cancellation and stopping."""

from __future__ import annotations

import asyncio
import threading

import pytest

from raftkv.server.wal_sync import WalSyncThread


def test_a_sync_runs_on_its_thread_and_completes_the_future() -> None:
    ran_on: list[str] = []

    async def scenario() -> None:
        syncer = WalSyncThread(lambda: ran_on.append(threading.current_thread().name))
        for _ in range(3):
            await syncer.sync()
        syncer.close()

    asyncio.run(scenario())
    assert ran_on == ["raftkv-wal-sync"] * 3


def test_a_failed_sync_raises_in_the_awaiting_task() -> None:
    def failing() -> None:
        raise OSError("EIO")

    async def scenario() -> None:
        syncer = WalSyncThread(failing)
        with pytest.raises(OSError, match="EIO"):
            await syncer.sync()
        syncer.close()

    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_the_sync_running_and_wait_idle_waits_for_it() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(5)
        finished.set()

    async def scenario() -> None:
        syncer = WalSyncThread(slow)
        waiter = asyncio.ensure_future(syncer.sync())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not syncer.wait_idle(0.05)  # still syncing
        release.set()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, syncer.wait_idle, 5.0)
        assert finished.is_set()
        await asyncio.sleep(0.01)  # the settle callback finds the future cancelled: no error
        syncer.close()

    asyncio.run(scenario())


def test_close_ends_the_thread() -> None:
    async def scenario() -> WalSyncThread:
        syncer = WalSyncThread(lambda: None)
        await syncer.sync()
        syncer.close()
        return syncer

    syncer = asyncio.run(scenario())
    syncer._thread.join(5)
    assert not syncer._thread.is_alive()
