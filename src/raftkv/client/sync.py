"""A blocking client: `SyncClient` runs an asyncio `Client` on a private event loop in a
background thread and forwards every call to it.

    with SyncClient(["127.0.0.1:2379"]) as client:
        client.put("k", "v")
        for response in client.watch("k"):   # a blocking iterator
            ...

Every coroutine method of `Client` is available under the same name and signature,
returning its result (or raising its error) in the calling thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from raftkv.client._transport import ClientTLS
from raftkv.client.client import Client
from raftkv.client.models import WatchResponse
from raftkv.client.watch import Watch

T = TypeVar("T")


class SyncClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        tls: ClientTLS | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="raftkv-client-loop", daemon=True
        )
        self._thread.start()
        try:
            self._client = self.run(_connected_client(endpoints, timeout_s, connect_timeout_s, tls))
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def client(self) -> Client:
        """The asyncio client underneath (use it only through `run`)."""
        return self._client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):  # not forwarded (and no recursion before _client exists)
            raise AttributeError(name)
        method = getattr(self._client, name)
        if not inspect.iscoroutinefunction(method):
            raise AttributeError(f"SyncClient forwards only coroutine methods, not {name!r}")

        @functools.wraps(method)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.run(method(*args, **kwargs))

        return blocking

    def watch(self, key: str | bytes, **options: Any) -> SyncWatch:
        """`Client.watch`, started, as a blocking iterator (same options)."""
        return SyncWatch(self, self.run(_started(self._client.watch(key, **options))))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class SyncWatch:
    """A started watch as a blocking iterator of `WatchResponse`."""

    def __init__(self, owner: SyncClient, watch: Watch) -> None:
        self._owner = owner
        self._watch = watch

    def __iter__(self) -> Iterator[WatchResponse]:
        return self

    def __next__(self) -> WatchResponse:
        try:
            return self._owner.run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        self._owner.run(self._watch.cancel())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()


async def _connected_client(
    endpoints: Sequence[str], timeout_s: float, connect_timeout_s: float, tls: ClientTLS | None
) -> Client:
    # Built on the loop's thread: its gRPC channels belong to that loop.
    client = Client(endpoints, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, tls=tls)
    await client.connect()
    return client


async def _started(watch: Watch) -> Watch:
    return await watch.start()
