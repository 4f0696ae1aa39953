"""The gRPC metrics interceptor (api/grpc_metrics.py) on a real grpc.aio server: every
call is counted once, with the status code the client saw."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from raftkv.api.grpc_metrics import GrpcMetricsInterceptor
from raftkv.api.request_decoding import UndecodableRequestInterceptor
from raftkv.server import metrics

SERVICE = "demo.Metered"


def _handled(method: str, code: str, kind: str = "unary") -> float:
    return metrics.GRPC_HANDLED.value(kind, SERVICE, method, code)


def _started(method: str, kind: str = "unary") -> float:
    return metrics.GRPC_STARTED.value(kind, SERVICE, method)


async def _ok(request: bytes, context: Any) -> bytes:
    return request + b"!"


async def _not_found(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")
    raise AssertionError("abort returns never")


async def _crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError("a bug")


async def _set_code(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details("bad")
    return b""


async def _hang(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(30)
    return b""


async def _three(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for index in range(3):
        yield bytes([index])


async def _echo_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _handlers() -> grpc.GenericRpcHandler:
    unary = {
        name: grpc.unary_unary_rpc_method_handler(behavior)
        for name, behavior in {
            "Ok": _ok,
            "NotFound": _not_found,
            "Crash": _crash,
            "SetCode": _set_code,
            "Hang": _hang,
        }.items()
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            **unary,
            "Three": grpc.unary_stream_rpc_method_handler(_three),
            "Echo": grpc.stream_stream_rpc_method_handler(_echo_stream),
        },
    )


async def _exercise() -> None:
    metrics.enable_grpc_handling_histogram()
    server = grpc.aio.server(
        interceptors=[GrpcMetricsInterceptor(), UndecodableRequestInterceptor()]
    )
    server.add_generic_rpc_handlers([_handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = {
        "ok": _handled("Ok", "OK"),
        "ok_started": _started("Ok"),
        "not_found": _handled("NotFound", "NotFound"),
        "crash": _handled("Crash", "Unknown"),
        "set": _handled("SetCode", "InvalidArgument"),
        "hang": _handled("Hang", "Canceled"),
        "three": _handled("Three", "OK", "server_stream"),
        "three_sent": metrics.GRPC_MSG_SENT.value("server_stream", SERVICE, "Three"),
        "echo_received": metrics.GRPC_MSG_RECEIVED.value("bidi_stream", SERVICE, "Echo"),
        "bytes_in": metrics.CLIENT_GRPC_RECEIVED_BYTES.value(),
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(5):
                assert await channel.unary_unary(f"/{SERVICE}/Ok")(b"hi") == b"hi!"
            for method, code in (
                ("NotFound", grpc.StatusCode.NOT_FOUND),
                ("Crash", grpc.StatusCode.UNKNOWN),
                ("SetCode", grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await channel.unary_unary(f"/{SERVICE}/{method}")(b"")
                assert refused.value.code() is code
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary(f"/{SERVICE}/Missing")(b"")
            assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
            hanging = channel.unary_unary(f"/{SERVICE}/Hang")(b"")
            await asyncio.sleep(0.2)
            hanging.cancel()
            replies = [reply async for reply in channel.unary_stream(f"/{SERVICE}/Three")(b"")]
            assert replies == [b"\x00", b"\x01", b"\x02"]
            echo = channel.stream_stream(f"/{SERVICE}/Echo")
            call = echo(iter([b"a", b"b"]))
            assert [reply async for reply in call] == [b"a", b"b"]
        # The server sees the cancellation a moment after the client.
        for _ in range(50):
            if _handled("Hang", "Canceled") > before["hang"]:
                break
            await asyncio.sleep(0.05)
    finally:
        await server.stop(None)

    assert _handled("Ok", "OK") - before["ok"] == 5
    assert _started("Ok") - before["ok_started"] == 5
    assert _handled("NotFound", "NotFound") - before["not_found"] == 1
    assert _handled("Crash", "Unknown") - before["crash"] == 1
    assert _handled("SetCode", "InvalidArgument") - before["set"] == 1
    assert _handled("Hang", "Canceled") - before["hang"] == 1
    assert _handled("Three", "OK", "server_stream") - before["three"] == 1
    sent = metrics.GRPC_MSG_SENT.value("server_stream", SERVICE, "Three")
    assert sent - before["three_sent"] == 3
    received = metrics.GRPC_MSG_RECEIVED.value("bidi_stream", SERVICE, "Echo")
    assert received - before["echo_received"] == 2
    # 5 x "hi" + 3 empty + Hang's and Three's empty requests + "a" + "b".
    assert metrics.CLIENT_GRPC_RECEIVED_BYTES.value() - before["bytes_in"] == 12
    assert metrics.GRPC_HANDLING_SECONDS is not None
    assert metrics.GRPC_HANDLING_SECONDS.count("unary", SERVICE, "Hang") >= 1
    assert metrics.GRPC_STARTED.value("unary", "demo.Metered", "Missing") == 0


def test_every_call_is_counted_with_its_status_code() -> None:
    asyncio.run(asyncio.wait_for(_exercise(), 30))
