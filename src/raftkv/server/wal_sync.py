"""The WAL's fdatasync, on a thread of its own, awaited by the Ready loop.

A Ready of more than one entry syncs here, so that the loop meanwhile applies what is
already durable and reads the next batch (server/node.py, ``_handle_ready``). Why a thread
of its own rather than ``loop.run_in_executor``:

- the default executor is shared: bcrypt checks for Authenticate (tens of ms each) and
  snapshot file I/O run there, and a WAL sync queued behind them would hold every write;
- the executor hands a result back through a ``concurrent.futures.Future`` (a condition
  variable), a callback that copies it to an asyncio future, and a shield's future: three
  loop turns. Here the thread completes the awaited future itself, in one.

Only one sync runs at a time: the Ready loop awaits each before it goes on, and nothing
else writes the WAL meanwhile (the core waits behind the raft lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

_Request = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class WalSyncThread:
    def __init__(self, sync: Callable[[], None], name: str = "raftkv-wal-sync") -> None:
        self._sync = sync
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Set while no sync runs or waits: stop() closes the WAL only after the last one.
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def sync(self) -> asyncio.Future[None]:
        """Start a sync; the future completes when it is done (or with its error). A
        cancelled future does not stop the sync: ``wait_idle`` still waits for it."""
        assert not self._closed, "sync after close"
        assert self._idle.is_set(), "one sync at a time"
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._idle.clear()
        self._requests.put((loop, done))
        return done

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no sync runs (for a thread, not the loop); False on timeout."""
        return self._idle.wait(timeout_s)

    def close(self) -> None:
        """Let the thread end once the sync in progress, if any, is done."""
        if not self._closed:
            self._closed = True
            self._requests.put(None)

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            loop, done = request
            error: BaseException | None = None
            try:
                self._sync()
            except BaseException as caught:  # handed to the Ready loop, which stops the member
                error = caught
            self._idle.set()
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, done, error)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
