"""raftkv's HTTP/2 gRPC front end (raftkv.api.h2) against grpcio's own client.

A bare servicer (no node) on the server's event loop, in a thread: each test checks one
part of the protocol a gRPC client relies on: statuses and their details, metadata,
deadlines, cancellation, both flow-control directions, the message limits, the four call
kinds, a graceful stop, and a peer that does not speak HTTP/2. The member's own services
run on this front end in the rest of tests/api (it is the default).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.api.h2 import frames
from raftkv.api.h2.server import GrpcH2Server, parse_timeout_s
from raftkv.certs import generate_dev_certs
from raftkv.server.tls import TlsFiles, server_context

_T = TypeVar("_T")
CALL_TIMEOUT_S = 20.0
MAX_RECEIVE_BYTES = 1 << 20
BIG_CLIENT_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


class Servicer(rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.WatchServicer):
    """Range answers by its key; Put tells the size it got; Watch answers each request with
    ``start_revision`` responses of ``progress_notify``-sized... see each method."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.watch_sent = 0
        self.slow_started = threading.Event()

    async def Range(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        key = request.key
        if key == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bäd\nnews 100% {x}")
        if key == b"boom":
            raise ValueError("boom")
        if key == b"sleep":
            self.slow_started.set()
            try:
                await asyncio.sleep(CALL_TIMEOUT_S)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if key == b"auth-context":
            names = context.auth_context().get("x509_common_name") or [b""]
            return rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=key, value=names[0])])
        if key == b"metadata":
            pairs = sorted(
                (name, value if isinstance(value, bytes) else value.encode())
                for name, value in context.invocation_metadata()
            )
            kvs = [kv_pb2.KeyValue(key=name.encode(), value=value) for name, value in pairs]
            return rpc_pb2.RangeResponse(kvs=kvs)
        value = b"v" * request.limit
        return rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=key, value=value)], count=1)

    async def Put(self, request: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:
        return rpc_pb2.PutResponse(header=rpc_pb2.ResponseHeader(revision=len(request.value)))

    async def Watch(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: Any
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        """Each create request asks for ``start_revision`` responses of ``filters[0]``
        KiB of value each (filters[0] is an enum: any int fits on the wire)."""
        async for request in request_iterator:
            create = request.create_request
            size = (create.filters[0] if create.filters else 0) * 1024
            event = kv_pb2.Event(kv=kv_pb2.KeyValue(key=create.key, value=b"w" * size))
            for number in range(create.start_revision):
                self.watch_sent += 1
                yield rpc_pb2.WatchResponse(watch_id=number, events=[event])


class Harness:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servicer = Servicer()
        self.server = GrpcH2Server(max_receive_message_bytes=MAX_RECEIVE_BYTES)
        rpc_pb2_grpc.add_KVServicer_to_server(self.servicer, self.server)  # type: ignore[arg-type]
        rpc_pb2_grpc.add_WatchServicer_to_server(self.servicer, self.server)  # type: ignore[arg-type]
        self.port = self.call(self.server.start("127.0.0.1", 0, tls))
        self.endpoint = f"127.0.0.1:{self.port}"

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_TIMEOUT_S)

    def channel(self, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint, options=options or [])

    def close(self) -> None:
        self.call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CALL_TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def h2() -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def _kv(h2: Harness, options: list[tuple[str, Any]] | None = None) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(h2.channel(options))


def test_a_unary_call_answers_with_its_message(h2: Harness) -> None:
    response = _kv(h2).Range(rpc_pb2.RangeRequest(key=b"k", limit=3), timeout=CALL_TIMEOUT_S)
    assert (response.kvs[0].key, response.kvs[0].value, response.count) == (b"k", b"vvv", 1)


def test_metadata_reaches_the_handler_and_binary_values_are_decoded(h2: Harness) -> None:
    metadata = (("token", "abc.def"), ("blob-bin", b"\x00\xff\x10"))
    response = _kv(h2).Range(
        rpc_pb2.RangeRequest(key=b"metadata"), metadata=metadata, timeout=CALL_TIMEOUT_S
    )
    got = {kv.key: kv.value for kv in response.kvs}
    assert got[b"token"] == b"abc.def"
    assert got[b"blob-bin"] == b"\x00\xff\x10"


def test_abort_sends_its_code_and_details_unchanged(h2: Harness) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _kv(h2).Range(rpc_pb2.RangeRequest(key=b"abort"), timeout=CALL_TIMEOUT_S)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "bäd\nnews 100% {x}"


def test_an_exception_in_a_handler_is_unknown(h2: Harness) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _kv(h2).Range(rpc_pb2.RangeRequest(key=b"boom"), timeout=CALL_TIMEOUT_S)
    assert raised.value.code() is grpc.StatusCode.UNKNOWN
    assert "boom" in (raised.value.details() or "")


def test_unknown_methods_and_services_are_unimplemented(h2: Harness) -> None:
    channel = h2.channel()
    for path, expected in (
        ("/etcdserverpb.KV/Nope", "unknown method Nope for service etcdserverpb.KV"),
        ("/nope.Service/Call", "unknown service nope.Service"),
    ):
        call = channel.unary_unary(path)
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=CALL_TIMEOUT_S)
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert raised.value.details() == expected


def test_a_deadline_ends_the_call_and_cancels_its_handler(h2: Harness) -> None:
    started_s = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        _kv(h2).Range(rpc_pb2.RangeRequest(key=b"sleep"), timeout=0.3)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started_s < CALL_TIMEOUT_S / 2
    assert h2.servicer.cancelled.wait(CALL_TIMEOUT_S)


def test_a_client_cancel_cancels_the_handler(h2: Harness) -> None:
    future = _kv(h2).Range.future(rpc_pb2.RangeRequest(key=b"sleep"), timeout=CALL_TIMEOUT_S)
    assert h2.servicer.slow_started.wait(CALL_TIMEOUT_S)
    future.cancel()
    assert h2.servicer.cancelled.wait(CALL_TIMEOUT_S)


def test_a_response_larger_than_every_window_arrives_whole(h2: Harness) -> None:
    size = 8 << 20  # the client's initial windows are 64 KiB; it must keep granting more
    response = _kv(h2, BIG_CLIENT_OPTIONS).Range(
        rpc_pb2.RangeRequest(key=b"big", limit=size), timeout=CALL_TIMEOUT_S
    )
    assert response.kvs[0].value == b"v" * size


def test_a_request_larger_than_the_stream_window_arrives_whole(h2: Harness) -> None:
    size = MAX_RECEIVE_BYTES - 64  # more than the 64 KiB default window, within the limit
    response = _kv(h2).Put(rpc_pb2.PutRequest(key=b"k", value=b"x" * size), timeout=CALL_TIMEOUT_S)
    assert response.header.revision == size


def test_a_request_over_the_limit_is_refused_as_grpc_go_refuses_it(h2: Harness) -> None:
    size = MAX_RECEIVE_BYTES + 1024
    kv = _kv(h2)
    with pytest.raises(grpc.RpcError) as raised:
        kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"x" * size), timeout=CALL_TIMEOUT_S)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (raised.value.details() or "").startswith("grpc: received message larger than max (")
    # The connection still serves.
    assert kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=CALL_TIMEOUT_S).count == 1


def _watch_request(responses: int, kib_each: int) -> rpc_pb2.WatchRequest:
    create = rpc_pb2.WatchCreateRequest(key=b"w", start_revision=responses, filters=[kib_each])
    return rpc_pb2.WatchRequest(create_request=create)


def test_a_bidi_stream_answers_each_request_in_order(h2: Harness) -> None:
    watch = rpc_pb2_grpc.WatchStub(h2.channel())
    requests = [_watch_request(3, 1), _watch_request(2, 100)]
    responses = list(watch.Watch(iter(requests), timeout=CALL_TIMEOUT_S))
    assert [r.watch_id for r in responses] == [0, 1, 2, 0, 1]
    assert [len(r.events[0].kv.value) for r in responses] == [1024] * 3 + [102400] * 2


def test_a_stream_to_a_client_that_stops_reading_holds_bounded_memory(h2: Harness) -> None:
    """The handler wants to send 2 GiB to a client that reads one response: what the server
    holds unsent stays within API_H2_MAX_PENDING_BYTES_PER_CALL plus the socket's buffer,
    and the handler waits rather than queueing the rest. (The client's window stays at
    HTTP/2's 64 KiB: grpcio's BDP probing would otherwise grant it tens of MiB, buffered on
    the client's side, by the client's choice.)"""
    channel = h2.channel([("grpc.http2.bdp_probe", 0)])
    stream = rpc_pb2_grpc.WatchStub(channel).Watch(
        iter([_watch_request(2048, 1024)]), timeout=CALL_TIMEOUT_S
    )
    first = next(stream)
    assert len(first.events[0].kv.value) == 1 << 20
    deadline_s = time.monotonic() + CALL_TIMEOUT_S
    sent, previous = h2.servicer.watch_sent, -1
    while sent != previous and time.monotonic() < deadline_s:  # until the handler waits
        time.sleep(0.5)
        sent, previous = h2.servicer.watch_sent, sent
    assert sent == previous, "the handler kept producing for a stalled client"
    held = h2.call(_held_unsent(h2.server))
    assert held <= limits.API_H2_MAX_PENDING_BYTES_PER_CALL + (1 << 20) + 1024, held
    assert sent < 32, f"{sent} MiB produced for a client that read 1 MiB"
    stream.cancel()


async def _held_unsent(server: GrpcH2Server) -> int:
    """Bytes the server holds for its clients: unsent DATA and the transports' buffers."""
    held = 0
    for connection in server._connections:
        held += sum(len(call.pending) for call in connection.calls.values())
        assert connection.transport is not None
        held += connection.transport.get_write_buffer_size()
    return held


async def _many_concurrent_calls(endpoint: str, count: int) -> list[int]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        calls = [
            kv.Range(rpc_pb2.RangeRequest(key=b"k", limit=n % 50), timeout=CALL_TIMEOUT_S)
            for n in range(count)
        ]
        return [len(response.kvs[0].value) for response in await asyncio.gather(*calls)]


def test_thousands_of_concurrent_calls_on_one_connection_all_answer(h2: Harness) -> None:
    sizes = asyncio.run(_many_concurrent_calls(h2.endpoint, 3000))
    assert sizes == [n % 50 for n in range(3000)]


def test_stop_lets_a_running_call_finish_within_the_grace(h2: Harness) -> None:
    kv = _kv(h2)
    assert kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=CALL_TIMEOUT_S).count == 1
    future = kv.Range.future(rpc_pb2.RangeRequest(key=b"sleep"), timeout=CALL_TIMEOUT_S)
    assert h2.servicer.slow_started.wait(CALL_TIMEOUT_S)
    h2.call(h2.server.stop(0.3))
    with pytest.raises(grpc.RpcError):
        future.result(CALL_TIMEOUT_S)  # the grace passed: the call was cancelled
    assert h2.servicer.cancelled.wait(CALL_TIMEOUT_S)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", h2.port)) != 0, "still accepting connections"


def test_a_peer_that_does_not_speak_http2_gets_goaway_and_is_closed(h2: Harness) -> None:
    with socket.create_connection(("127.0.0.1", h2.port), timeout=CALL_TIMEOUT_S) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    settings_length = 9 + 3 * 6
    window_update_length = 9 + 4
    goaway = received[settings_length + window_update_length :]
    assert goaway[3] == frames.FrameType.GOAWAY
    assert int.from_bytes(goaway[13:17], "big") == frames.ErrorCode.PROTOCOL_ERROR


def test_grpc_timeout_parses_every_unit_and_refuses_malformed_values() -> None:
    assert parse_timeout_s(b"100m") == pytest.approx(0.1)
    assert parse_timeout_s(b"2S") == 2.0
    assert parse_timeout_s(b"1H") == 3600.0
    assert parse_timeout_s(b"1M") == 60.0
    assert parse_timeout_s(b"5000u") == pytest.approx(0.005)
    assert parse_timeout_s(b"7n") == pytest.approx(7e-9)
    for bad in (b"", b"S", b"10", b"123456789S", b"-1S", b"1x"):
        with pytest.raises(ValueError):
            parse_timeout_s(bad)


def test_status_trailers_percent_encode_what_http2_cannot_carry() -> None:
    block = frames.status_trailers(9, "a%b\nc ä")
    assert b"a%25b%0Ac %C3%A4" in block
    assert frames.literal(b"x", b"y" * 200).startswith(b"\x00\x01x\x7f\x49")


def _raw_call(port: int, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[bytes, bytes]:
    """One call over a bare socket (no gRPC client enforcing anything): the response's
    headers and trailers, merged."""
    import hpack

    block = hpack.Encoder().encode(headers)
    request = (
        frames.PREFACE
        + frames.settings_frame({})
        + frames.frame(frames.FrameType.HEADERS, frames.Flag.END_HEADERS, 1, block)
        + frames.frame(frames.FrameType.DATA, frames.Flag.END_STREAM, 1, body)
    )
    decoder = hpack.Decoder()
    got: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as sock:
        sock.sendall(request)
        buffer = b""
        while True:
            while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
                chunk = sock.recv(65536)
                assert chunk, f"connection closed before the trailers; got {got}"
                buffer += chunk
            length = int.from_bytes(buffer[:3], "big")
            kind, flags, stream_id = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big")
            payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
            if kind == frames.FrameType.HEADERS and stream_id == 1:
                got.update(dict(decoder.decode(payload, raw=True)))
                if flags & frames.Flag.END_STREAM:
                    return got


def _grpc_headers(path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"x"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


def _grpc_body(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def test_the_server_enforces_grpc_timeout_itself(h2: Harness) -> None:
    request = rpc_pb2.RangeRequest(key=b"sleep").SerializeToString()
    headers = _grpc_headers(b"/etcdserverpb.KV/Range", (b"grpc-timeout", b"200m"))
    started_s = time.monotonic()
    got = _raw_call(h2.port, headers, _grpc_body(request))
    assert got[b"grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]).encode()
    assert time.monotonic() - started_s < CALL_TIMEOUT_S / 2
    assert h2.servicer.cancelled.wait(CALL_TIMEOUT_S)


def test_a_request_that_is_not_grpc_gets_http_415(h2: Harness) -> None:
    headers = [(k, b"text/plain" if k == b"content-type" else v) for k, v in _grpc_headers(b"/x")]
    assert _raw_call(h2.port, headers, b"hello")[b":status"] == b"415"


def test_an_undecodable_request_is_internal_with_grpc_gos_text(h2: Harness) -> None:
    got = _raw_call(h2.port, _grpc_headers(b"/etcdserverpb.KV/Range"), _grpc_body(b"\xff\xff"))
    assert got[b"grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0]).encode()
    assert got[b"grpc-message"].startswith(b"grpc: error unmarshalling request: ")


def test_tls_with_client_certificates_and_refusals_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = generate_dev_certs(tmp_path / "ca", ["127.0.0.1", "localhost"])
    files = TlsFiles(
        str(certs.server_cert), str(certs.server_key), str(certs.ca_cert), client_cert_auth=True
    )
    harness = Harness(server_context(files))
    try:
        credentials = grpc.ssl_channel_credentials(
            certs.ca_cert.read_bytes(),
            certs.client_key.read_bytes(),
            certs.client_cert.read_bytes(),
        )
        with grpc.secure_channel(harness.endpoint, credentials) as channel:
            response = rpc_pb2_grpc.KVStub(channel).Range(
                rpc_pb2.RangeRequest(key=b"auth-context"), timeout=CALL_TIMEOUT_S
            )
        assert response.kvs[0].value, "the client certificate's common name reaches the call"
        with caplog.at_level(logging.WARNING, logger="raftkv.server.tls"):
            with (
                grpc.insecure_channel(harness.endpoint) as channel,
                pytest.raises(grpc.RpcError) as raised,
            ):
                rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            deadline_s = time.monotonic() + CALL_TIMEOUT_S
            while "plaintext on a TLS port" not in caplog.text and time.monotonic() < deadline_s:
                time.sleep(0.05)
        assert "gRPC listener: refused a connection from 127.0.0.1" in caplog.text
        assert "plaintext on a TLS port" in caplog.text
    finally:
        harness.close()
