"""Client-side helpers for the API tests: bidi streams with timeouts, error capture."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2

RECEIVE_TIMEOUT_S = 10.0

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError ``call()`` raises (the test fails if it raises none)."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded; an error was expected")


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    call: Any = error  # a failed call's error is also the call (code, details)
    return call.code(), call.details()


class BidiStream(Generic[_Req, _Resp]):
    """A bidi stream driven from the test: ``send`` requests, ``receive`` responses
    with a timeout (a thread pumps the blocking response iterator into a queue)."""

    def __init__(
        self,
        method: Callable[..., Any],
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self._requests: queue.Queue[_Req | None] = queue.Queue()
        self._responses: queue.Queue[_Resp | grpc.RpcError] = queue.Queue()
        # A grpc response iterator that is also the call (cancel, code, details).
        self._call: Any = method(iter(self._requests.get, None), metadata=metadata)
        self._pump = threading.Thread(target=self._pump_responses, daemon=True)
        self._pump.start()

    def _pump_responses(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as error:
            self._responses.put(error)

    def send(self, request: _Req) -> None:
        self._requests.put(request)

    def receive(self, timeout_s: float = RECEIVE_TIMEOUT_S) -> _Resp:
        item = self._responses.get(timeout=timeout_s)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def receive_error(self, timeout_s: float = RECEIVE_TIMEOUT_S) -> grpc.RpcError:
        item = self._responses.get(timeout=timeout_s)
        assert isinstance(item, grpc.RpcError), f"expected the stream to fail, got {item}"
        return item

    def nothing_within(self, wait_s: float) -> bool:
        """True if no response arrives within ``wait_s``."""
        try:
            item = self._responses.get(timeout=wait_s)
        except queue.Empty:
            return True
        self._responses.queue.appendleft(item)  # keep it for the next receive
        return False

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._pump.join(RECEIVE_TIMEOUT_S)


class WatchStream(BidiStream[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse]):
    def create(self, key: bytes, **fields: Any) -> None:
        self.send(
            rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, **fields))
        )

    def cancel(self, watch_id: int) -> None:
        self.send(
            rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))
        )

    def request_progress(self) -> None:
        self.send(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def created(self, key: bytes, **fields: Any) -> rpc_pb2.WatchResponse:
        """Create a watch and return its "created" response (asserting it was)."""
        self.create(key, **fields)
        response = self.receive()
        assert response.created and not response.canceled, response
        return response

    def events(self, count: int) -> list[Any]:
        """Receive responses until ``count`` events have arrived; their events."""
        events: list[Any] = []
        while len(events) < count:
            response = self.receive()
            assert not response.canceled, response
            events.extend(response.events)
        assert len(events) == count, f"{len(events)} events, expected {count}"
        return events
