"""A resumable watch: one gRPC Watch stream per `Watch`, reopened after failures.

The watch remembers the revision it must deliver next: the start revision, then the
revision after the last event delivered. When its stream breaks (the endpoint died, the
member lost its leader, the channel was retired by a fail-over) it opens a new stream,
on the client's current endpoint, from exactly that revision. Events of one revision
always arrive in one response, so no event is lost or delivered twice across a resume.

A watch from "now" (start revision 0) first reads the store's revision with a
linearizable Range and starts right after it, so "now" is a definite point even if the
first stream has to be reopened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.client import _convert
from raftkv.client._transport import REQUIRE_LEADER_METADATA, backoff_s, task_is_cancelling
from raftkv.client.errors import (
    ClientError,
    ConnectError,
    RetryVerdict,
    WatchCanceledError,
    WatchCompactedError,
    error_from_status,
    retry_verdict,
)
from raftkv.client.models import WatchResponse
from raftkv.limits import CLIENT_MAX_ATTEMPTS

if TYPE_CHECKING:
    from raftkv.client._transport import Connection
    from raftkv.client.client import Client

WatchStream = grpc.aio.StreamStreamCall[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse]


class _StreamBroken(Exception):
    """The stream ended in a way that a new stream can recover from."""


class Watch:
    """Async iterator of `WatchResponse`; see `Client.watch`."""

    def __init__(self, client: Client, create: rpc_pb2.WatchCreateRequest) -> None:
        self._client = client
        self._create = create
        self._next_revision = create.start_revision  # 0 until "now" has been read
        self._stream: WatchStream | None = None
        self._connection: Connection | None = None
        self._canceled = False
        # Streams that broke since the last response delivered; bounded like any call.
        self._failures_in_a_row = 0

    @property
    def next_revision(self) -> int:
        """The revision the watch delivers next (a resume starts here)."""
        return self._next_revision

    # --- Starting and stopping ---------------------------------------------------

    def __await__(self) -> Generator[Any, None, Self]:
        return self.start().__await__()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.cancel()

    async def start(self) -> Self:
        """Open the stream (once); events from the start revision on are then kept."""
        if self._stream is None and not self._canceled:
            await self._open()
        return self

    async def cancel(self) -> None:
        """End the watch; an iteration in progress stops. Closing the stream removes the
        watcher on the server."""
        self._canceled = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()

    # --- Iteration ---------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchResponse:
        while True:
            if self._canceled:
                raise StopAsyncIteration
            if self._stream is None:
                await self._open()
            try:
                response = await self._read()
            except _StreamBroken:
                self._drop_stream()
                continue
            if response is None:
                raise StopAsyncIteration
            if response.created:
                continue
            self._failures_in_a_row = 0
            delivered = _convert.watch_response(response)
            if delivered.events:
                self._next_revision = delivered.events[-1].kv.mod_revision + 1
            return delivered

    async def _read(self) -> rpc_pb2.WatchResponse | None:
        """The next response; None once canceled. Raises _StreamBroken if a new stream
        can go on, and the typed error if the watch cannot."""
        stream, connection = self._stream, self._connection
        assert stream is not None and connection is not None
        try:
            response = await stream.read()
        except asyncio.CancelledError:
            if task_is_cancelling():
                raise
            if self._canceled:
                return None  # our own cancel() closed the stream under this read
            # The channel under the stream was closed (a fail-over retired it).
            self._judge_failure(grpc.StatusCode.CANCELLED, "channel closed", connection)
            raise _StreamBroken from None
        except grpc.aio.AioRpcError as rpc_error:
            if self._canceled:
                return None
            self._judge_failure(rpc_error.code(), rpc_error.details() or "", connection)
            raise _StreamBroken from rpc_error
        if not isinstance(response, rpc_pb2.WatchResponse):  # end of stream
            self._judge_failure(grpc.StatusCode.UNAVAILABLE, "watch stream closed", connection)
            raise _StreamBroken
        if response.compact_revision:
            self._finish()
            raise WatchCompactedError(response.compact_revision)
        if response.canceled:
            self._finish()
            raise WatchCanceledError(response.cancel_reason or "watch canceled by the server")
        return response

    def _judge_failure(self, code: grpc.StatusCode, details: str, connection: Connection) -> None:
        """Fail over and return if a new stream may go on; raise the typed error if not."""
        self._failures_in_a_row += 1
        final = retry_verdict(code, details) is RetryVerdict.FINAL
        if final or self._failures_in_a_row >= CLIENT_MAX_ATTEMPTS:
            self._finish()
            raise error_from_status(code, details)
        self._client.fail_over(connection)

    def _finish(self) -> None:
        self._canceled = True
        self._drop_stream()

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()

    # --- Opening a stream --------------------------------------------------------

    async def _open(self) -> None:
        """Open a stream from the next revision, failing over like a repeatable call."""
        if self._next_revision == 0:
            now = await self._client.get(self._create.key, keys_only=True, limit=1)
            self._next_revision = now.header.revision + 1
        last_error: ClientError | None = None
        for attempt in range(CLIENT_MAX_ATTEMPTS):
            if attempt:
                await asyncio.sleep(backoff_s(attempt))
            try:
                connection = await self._client.ready_connection()
            except ConnectError as error:
                last_error = error
                continue
            stream = connection.watch.Watch(None, metadata=REQUIRE_LEADER_METADATA)
            try:
                created = await self._create_on(stream)
            except grpc.aio.AioRpcError as rpc_error:
                code, details = rpc_error.code(), rpc_error.details() or ""
            except TimeoutError:
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "watch creation timed out"
            else:
                self._stream, self._connection = stream, connection
                if created.canceled or created.compact_revision:
                    await self._read_cancel(created)
                return
            stream.cancel()
            if retry_verdict(code, details) is RetryVerdict.FINAL:
                self._finish()
                raise error_from_status(code, details)
            self._client.fail_over(connection)
            last_error = error_from_status(code, details)
        assert last_error is not None
        self._finish()
        raise last_error

    async def _create_on(self, stream: WatchStream) -> rpc_pb2.WatchResponse:
        create = rpc_pb2.WatchCreateRequest()
        create.CopyFrom(self._create)
        create.start_revision = self._next_revision
        await stream.write(rpc_pb2.WatchRequest(create_request=create))
        response = await asyncio.wait_for(stream.read(), self._client.timeout_s)
        if not isinstance(response, rpc_pb2.WatchResponse):
            raise TimeoutError  # the stream ended before answering: as good as no answer
        assert response.created, "the first response on a watch stream confirms creation"
        return response

    async def _read_cancel(self, response: rpc_pb2.WatchResponse) -> None:
        if response.compact_revision:
            self._finish()
            raise WatchCompactedError(response.compact_revision)
        self._finish()
        raise WatchCanceledError(f"watch not created: {response.cancel_reason}")
