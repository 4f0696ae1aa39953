"""Requests that are not valid protobuf: refused as etcd's gRPC server refuses them.

grpcio deserializes a request before any handler runs; when protobuf raises, grpcio logs
an error with a traceback and answers ``UNKNOWN "Unexpected <class ...DecodeError>: ..."``.
Bytes from a client are untrusted input, so this interceptor makes them an ordinary
refusal instead, with grpc-go's code and text (what etcd answers):

* the request of a unary call: ``INTERNAL "grpc: error unmarshalling request: <reason>"``;
* the request of a server-streaming call, or a message of a request stream: ``INTERNAL
  "grpc: failed to unmarshal the received message <reason>"``, which ends the call.

The reason is Python protobuf's, not Go's. Python protobuf also refuses messages nested
more than 100 deep, which Go accepts (a txn nested in a txn ... 50 times).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[..., Any]
if TYPE_CHECKING:  # grpc-stubs make these generic; the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.aio.ServerInterceptor

UNARY_REFUSAL_PREFIX = "grpc: error unmarshalling request: "
STREAM_REFUSAL_PREFIX = "grpc: failed to unmarshal the received message "


class Undecodable:
    """What the guarded deserializer returns in place of a message it cannot parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Undecodable(str(error))

    return deserialize


async def _refuse(context: Context, prefix: str, request: Undecodable) -> NoReturn:
    await context.abort(grpc.StatusCode.INTERNAL, prefix + request.reason)
    raise AssertionError("context.abort returned")  # it always raises


def _guard_unary_request(behavior: Behavior, prefix: str) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def guarded_generator(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, prefix, request)
            async for response in behavior(request, context):
                yield response

        return guarded_generator

    async def guarded(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, prefix, request)
        return await behavior(request, context)

    return guarded


def _guard_request_stream(behavior: Behavior) -> Behavior:
    def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async def iterate() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    await _refuse(context, STREAM_REFUSAL_PREFIX, request)
                yield request

        return iterate()

    if inspect.isasyncgenfunction(behavior):

        async def guarded_generator(
            requests: AsyncIterator[Any], context: Context
        ) -> AsyncIterator[Any]:
            async for response in behavior(checked(requests, context), context):
                yield response

        return guarded_generator

    async def guarded(requests: AsyncIterator[Any], context: Context) -> Any:
        return await behavior(checked(requests, context), context)

    return guarded


def guard_handler(handler: Handler) -> Handler:
    """``handler`` with a deserializer that never raises and behavior that refuses what
    it could not parse."""
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler  # raw bytes: nothing to parse
    tolerant = _tolerant(deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary_request(handler.unary_unary, UNARY_REFUSAL_PREFIX), tolerant, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _guard_unary_request(handler.unary_stream, STREAM_REFUSAL_PREFIX), tolerant, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _guard_request_stream(handler.stream_unary), tolerant, serializer
        )
    assert handler.stream_stream is not None, handler
    return grpc.stream_stream_rpc_method_handler(
        _guard_request_stream(handler.stream_stream), tolerant, serializer
    )


class WrappingInterceptor(_ServerInterceptor):
    """Applies ``wrap(method, handler)`` to every method's handler, once per method, then
    cached (the base of this module's and ``grpc_metrics``' interceptors)."""

    def __init__(self, wrap: Callable[[str, Handler], Handler]) -> None:
        self._wrap = wrap
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler  # an unknown method: grpc answers UNIMPLEMENTED
            wrapped = self._wrap(method, handler)
            self._wrapped[method] = wrapped
        return wrapped


class UndecodableRequestInterceptor(WrappingInterceptor):
    """Applies ``guard_handler`` to every method."""

    def __init__(self) -> None:
        super().__init__(lambda _method, handler: guard_handler(handler))
