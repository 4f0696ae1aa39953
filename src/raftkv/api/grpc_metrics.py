"""gRPC server metrics under go-grpc-prometheus' names, as etcd exports them.

``GrpcMetricsInterceptor`` wraps each method's handler once (then caches it, through
``request_decoding.WrappingInterceptor``) so every call counts: ``grpc_server_started_total``
when it starts, ``grpc_server_handled_total`` with its
final status code (Go's code names: ``OK``, ``Canceled``, ``Unavailable``...) when it ends,
``grpc_server_msg_received_total``/``grpc_server_msg_sent_total`` per message, the bytes of
the messages (``etcd_network_client_grpc_{received,sent}_bytes_total``) and, when
enabled (``--metrics=extensive``), ``grpc_server_handling_seconds``.

The status code of a call: the one it aborted with or set, else ``OK``; ``Canceled`` when
it was cancelled (the client went away); ``Unknown`` for an exception grpc turns into
UNKNOWN. Put it first in the server's interceptors so it sees every call, refusals by the
other interceptors included.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from raftkv.api.request_decoding import Behavior, Context, Handler, WrappingInterceptor
from raftkv.server import metrics

# grpc-go's names for the status codes (what go-grpc-prometheus puts in grpc_code).
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


@dataclass(frozen=True)
class MethodLabels:
    grpc_type: str  # unary, client_stream, server_stream or bidi_stream
    grpc_service: str  # e.g. etcdserverpb.KV
    grpc_method: str  # e.g. Put

    @classmethod
    def of(cls, full_method: str, handler: Handler) -> MethodLabels:
        service, _, method = full_method.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            kind = "unary"
        elif handler.unary_stream is not None:
            kind = "server_stream"
        elif handler.stream_unary is not None:
            kind = "client_stream"
        else:
            kind = "bidi_stream"
        return cls(kind, service or "unknown", method)

    @property
    def values(self) -> tuple[str, str, str]:
        return (self.grpc_type, self.grpc_service, self.grpc_method)


def status_code_of(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a finished call ends with (see the module doc)."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


class _CallMetrics:
    """The series of one method, looked up once."""

    def __init__(self, labels: MethodLabels) -> None:
        self.labels = labels
        values = labels.values
        self.started = metrics.GRPC_STARTED.labels(*values)
        self.received = metrics.GRPC_MSG_RECEIVED.labels(*values)
        self.sent = metrics.GRPC_MSG_SENT.labels(*values)
        histogram = metrics.GRPC_HANDLING_SECONDS
        self.handling = None if histogram is None else histogram.labels(*values)

    def finish(self, context: Context, error: BaseException | None, started_s: float) -> None:
        code = GO_CODE_NAMES.get(status_code_of(context, error), "Unknown")
        metrics.GRPC_HANDLED.labels(*self.labels.values, code).inc()
        if self.handling is not None:
            self.handling.observe(time.perf_counter() - started_s)

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        def deserialize(data: bytes) -> Any:
            metrics.CLIENT_GRPC_RECEIVED_BYTES.inc(len(data))
            self.received.inc()
            return data if parse is None else parse(data)

        return deserialize

    def serializer(self, serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
        def count(message: Any) -> bytes:
            data: bytes = message if serialize is None else serialize(message)
            metrics.CLIENT_GRPC_SENT_BYTES.inc(len(data))
            self.sent.inc()
            return data

        return count


def _measure(behavior: Behavior, call: _CallMetrics) -> Behavior:
    """``behavior`` (a coroutine or an async generator function) counted by ``call``."""
    if inspect.isasyncgenfunction(behavior):

        async def measured_generator(request: Any, context: Context) -> AsyncIterator[Any]:
            call.started.inc()
            started_s = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                call.finish(context, error, started_s)

        return measured_generator

    async def measured(request: Any, context: Context) -> Any:
        call.started.inc()
        started_s = time.perf_counter()
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as raised:
            error = raised
            raise
        finally:
            call.finish(context, error, started_s)

    return measured


def measure_handler(full_method: str, handler: Handler) -> Handler:
    """``handler`` with its calls, messages and bytes counted."""
    call = _CallMetrics(MethodLabels.of(full_method, handler))
    deserialize = call.deserializer(handler.request_deserializer)
    serialize = call.serializer(handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _measure(handler.unary_unary, call), deserialize, serialize
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _measure(handler.unary_stream, call), deserialize, serialize
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _measure(handler.stream_unary, call), deserialize, serialize
        )
    assert handler.stream_stream is not None, handler
    return grpc.stream_stream_rpc_method_handler(
        _measure(handler.stream_stream, call), deserialize, serialize
    )


class GrpcMetricsInterceptor(WrappingInterceptor):
    """Applies ``measure_handler`` to every method."""

    def __init__(self) -> None:
        super().__init__(measure_handler)


__all__ = ["GO_CODE_NAMES", "GrpcMetricsInterceptor", "measure_handler", "status_code_of"]
