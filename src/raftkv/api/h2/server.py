"""A gRPC server on HTTP/2, written on an asyncio Protocol: raftkv's client front end.

Why it exists: grpcio's asyncio server spends 200-230 µs of CPU per unary call on this
machine kind before any handler runs (docs/performance.md, "The gRPC floor"). Parsing a
call's frames in Python, with precomputed response headers and one socket write per loop
iteration, costs a fifth of that.

It hosts grpc method handlers, as registered by the generated ``add_*Servicer_to_server``
(``add_registered_method_handlers``), of all four kinds, each call in its own task:

* requests: HPACK with repeated header blocks remembered (``hpack_decoder``);
  ``grpc-timeout`` deadlines, all on one timer (``deadlines``); RST_STREAM
  cancels the call's task; a message over the limit is refused as grpc-go refuses it;
* flow control both ways: what a call has buffered unread bounds the window it gets back,
  and a streaming call's writer waits while its unsent bytes or the socket are backed up;
* a graceful stop: GOAWAY, then the calls still running after the grace are cancelled.

``wrappers`` are applied to every handler once, at registration, as grpc.aio applies
interceptors (raftkv's metrics and undecodable-request wrappers). Everything runs on the
event loop; one ``_Connection`` per client connection, one ``_Call`` per stream.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import inspect
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc
import grpc.aio
import hpack

from raftkv import limits
from raftkv.api.h2 import frames
from raftkv.api.h2.deadlines import DeadlineBuckets
from raftkv.api.h2.frames import ErrorCode, Flag, FrameType, H2ConnectionError, Setting
from raftkv.api.h2.hpack_decoder import Header, HpackDecoder
from raftkv.server.tls import TlsServer, start_tls_server

Handler = Any  # grpc.RpcMethodHandler: the stubs make it generic, the runtime class is not
Wrapper = Callable[[str, Handler], Handler]

_TIMEOUT_UNITS_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_PREFIX_BYTES = 5  # a gRPC message's compressed flag and 4-byte length
_END = Flag.END_HEADERS | Flag.END_STREAM


class _Abort(grpc.aio.AbortError):
    """Raised by ``Context.abort``; raftkv's services let grpc.aio's AbortError through."""


def parse_timeout_s(value: bytes) -> float:
    """grpc-timeout: at most 8 digits and a unit (gRPC's PROTOCOL-HTTP2 spec)."""
    text = value.decode("ascii", "replace")
    unit = _TIMEOUT_UNITS_S.get(text[-1:])
    digits = text[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        raise ValueError(f"malformed grpc-timeout {text!r}")
    return int(digits) * unit


class Context:
    """The part of grpc.aio's ServicerContext that raftkv's services use."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._call.metadata

    def peer(self) -> str:
        return self._call.connection.peer_name

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._call.connection.auth_context

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self._code, self._details = code, details
        raise _Abort(details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    async def write(self, message: Any) -> None:
        await self._call.send_message(message)

    def time_remaining(self) -> float | None:
        deadline_s = self._call.deadline_s
        now_s = asyncio.get_running_loop().time()
        return None if deadline_s is None else max(0.0, deadline_s - now_s)

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.closed


class GrpcH2Server:
    """Hosts grpc method handlers; ``start`` listens, ``stop`` drains with GOAWAY."""

    def __init__(
        self,
        max_receive_message_bytes: int,
        max_send_message_bytes: int = limits.API_GRPC_MAX_SEND_MESSAGE_BYTES,
        wrappers: Iterable[Wrapper] = (),
        max_concurrent_calls: int = limits.API_MAX_CONCURRENT_RPCS,
    ) -> None:
        self.max_receive_message_bytes = max_receive_message_bytes
        self.max_send_message_bytes = max_send_message_bytes
        self.max_concurrent_calls = max_concurrent_calls
        self.running_calls = 0
        self._wrappers = list(wrappers)
        self._handlers: dict[str, Handler] = {}
        self._servers: list[asyncio.Server | TlsServer] = []
        self._connections: set[_Connection] = set()
        self.deadlines: DeadlineBuckets[_Call] = DeadlineBuckets(
            _deadline_passed, limits.API_H2_DEADLINE_BUCKET_S, limits.API_H2_DEADLINE_HORIZON_S
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        for method, handler in handlers.items():
            path = f"/{service}/{method}"
            for wrap in reversed(self._wrappers):  # the first wrapper ends up outermost
                handler = wrap(path, handler)
            self._handlers[path] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generated code registers each service both ways; the registered table is
        the one used."""

    def handler(self, path: str) -> Handler | None:
        return self._handlers.get(path)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port. With ``tls``, the
        handshakes go through raftkv's TLS listener: bounded in time and number, and each
        refusal logged with its reason (rate-limited), as on the peer and gateway ports."""
        listener: asyncio.Server | TlsServer
        if tls is None:
            loop = asyncio.get_running_loop()
            listener = await loop.create_server(
                lambda: _Connection(self), host.strip("[]"), port, reuse_address=True
            )
        else:
            tls.set_alpn_protocols(["h2"])
            listener = await start_tls_server(
                None,
                host.strip("[]"),
                port,
                tls,
                what="gRPC listener",
                read_limit_bytes=limits.API_H2_MAX_FRAME_BYTES,
                protocol_factory=lambda: _Connection(self),
            )
        self._servers.append(listener)
        bound: int = listener.sockets[0].getsockname()[1]
        return bound

    def track(self, connection: _Connection, alive: bool) -> None:
        if alive:
            self._connections.add(connection)
        else:
            self._connections.discard(connection)

    async def stop(self, grace: float | None) -> None:
        """No new connections or calls; the calls running ``grace`` seconds later are
        cancelled, and every connection is closed."""
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + (grace or 0.0)
        while self._connections and loop.time() < deadline_s:
            await asyncio.sleep(limits.API_H2_STOP_POLL_S)
        for connection in list(self._connections):
            connection.abort()
        self.deadlines.cancel_timer()
        for server in self._servers:
            await server.wait_closed()


class _Call:
    """One stream: the request bytes in, the handler's task, the response bytes out."""

    def __init__(self, connection: _Connection, stream_id: int, send_window_bytes: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.path = ""
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.handler: Handler | None = None
        self.inbound = bytearray()  # received bytes not yet cut into messages
        self.messages: collections.deque[bytes] = collections.deque()
        self.buffered_bytes = 0  # inbound plus messages: what the window is held back by
        self.window_owed_bytes = 0  # received, not yet given back with WINDOW_UPDATE
        self.half_closed = False
        self.reader: asyncio.Future[None] | None = None
        self.headers_sent = False
        self.closed = False
        self.cancelled = False
        self.pending = bytearray()  # DATA waiting for window
        self.trailers: bytes | None = None  # sent once ``pending`` is out
        self.writer: asyncio.Future[None] | None = None
        self.send_window_bytes = send_window_bytes
        self.task: asyncio.Task[None] | None = None
        self.deadline_s: float | None = None  # on the loop's clock
        self.deadline_bucket: int | None = None  # where ``deadlines`` keeps it
        self.counted = False  # in the server's running_calls

    # -- Requests --------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self.inbound += data
        self.buffered_bytes += len(data)
        self.window_owed_bytes += len(data)
        inbound = self.inbound
        while len(inbound) >= _PREFIX_BYTES:
            length = int.from_bytes(inbound[1:5], "big")
            if length > self.connection.server.max_receive_message_bytes:
                self.connection.refuse_oversized(self, length)
                return
            if len(inbound) < _PREFIX_BYTES + length:
                break
            if inbound[0] != 0:
                self.connection.finish(
                    self, grpc.StatusCode.UNIMPLEMENTED, "grpc: compressed messages not supported"
                )
                return
            self.messages.append(bytes(inbound[_PREFIX_BYTES : _PREFIX_BYTES + length]))
            del inbound[: _PREFIX_BYTES + length]
        self.wake_reader()
        self.give_back_window()

    def give_back_window(self) -> None:
        """Window credit goes back while the call's unread bytes stay within one message
        (a handler that stops reading stops its client, not the connection)."""
        owed = self.window_owed_bytes
        if owed >= limits.API_H2_STREAM_WINDOW_BYTES // 2 and (
            self.buffered_bytes <= self.connection.server.max_receive_message_bytes
        ):
            self.connection.out.append(frames.window_update(self.stream_id, owed))
            self.window_owed_bytes = 0

    def wake_reader(self) -> None:
        _wake(self.reader)
        self.reader = None

    async def requests(self, deserialize: Callable[[bytes], Any]) -> AsyncIterator[Any]:
        """The request stream of a client- or bidi-streaming call."""
        while True:
            if self.messages:
                raw = self.messages.popleft()
                self.buffered_bytes -= _PREFIX_BYTES + len(raw)
                self.give_back_window()
                self.connection.flush_soon()
                yield deserialize(raw)
            elif self.half_closed or self.closed:
                return
            else:
                self.reader = asyncio.get_running_loop().create_future()
                await self.reader

    def only_message(self) -> bytes | None:
        """The request of a unary-request call: exactly one message."""
        if len(self.messages) != 1 or self.inbound:
            return None
        return self.messages[0]

    # -- Responses -------------------------------------------------------------------------

    async def send_message(self, message: Any) -> None:
        """A streaming response: waits while this call's unsent bytes or the socket are
        backed up, so a slow client holds a bounded amount of memory."""
        if self.closed:
            raise asyncio.CancelledError("the call has ended")
        self.connection.queue_message(self, message)
        while not self.closed and (
            len(self.pending) > limits.API_H2_MAX_PENDING_BYTES_PER_CALL
            or self.connection.write_paused
        ):
            self.writer = asyncio.get_running_loop().create_future()
            await self.writer

    def wake_writer(self) -> None:
        _wake(self.writer)
        self.writer = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcH2Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface_seen = False
        self.decoder = HpackDecoder(
            _request_head,
            limits.API_H2_MAX_HEADER_LIST_BYTES,
            limits.API_H2_MAX_CACHED_HEADER_BLOCKS,
            limits.API_H2_MAX_CACHED_HEADER_BLOCK_BYTES,
        )
        self.calls: dict[int, _Call] = {}
        self.last_stream_id = 0
        self.headers_in_progress: tuple[int, int, bytearray] | None = None  # id, flags, block
        self.send_window_bytes = frames.DEFAULT_WINDOW_BYTES
        self.peer_initial_window_bytes = frames.DEFAULT_WINDOW_BYTES
        self.peer_max_frame_bytes = frames.DEFAULT_MAX_FRAME_BYTES
        self.received_unacked_bytes = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.write_paused = False
        self.going_away = False
        self.peer_name = ""
        self.auth_context: dict[str, list[bytes]] = {}

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        host, port = (transport.get_extra_info("peername") or ("", 0))[:2]
        self.peer_name = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        self.auth_context = _auth_context(transport.get_extra_info("ssl_object"))
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a client gone without a FIN is noticed (etcd pings every 2 h)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.server.track(self, alive=True)
        settings = {
            Setting.MAX_CONCURRENT_STREAMS: limits.API_H2_MAX_CONCURRENT_STREAMS,
            Setting.INITIAL_WINDOW_SIZE: limits.API_H2_STREAM_WINDOW_BYTES,
            Setting.MAX_HEADER_LIST_SIZE: limits.API_H2_MAX_HEADER_LIST_BYTES,
        }
        increment = limits.API_H2_CONNECTION_WINDOW_BYTES - frames.DEFAULT_WINDOW_BYTES
        self.transport.write(frames.settings_frame(settings) + frames.window_update(0, increment))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.track(self, alive=False)
        for call in list(self.calls.values()):
            self._cancel(call)
        self.calls.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for call in list(self.calls.values()):
            call.wake_writer()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._read_frames()
        except H2ConnectionError as error:
            self._fail(error.code, str(error))
        except hpack.HPACKError as error:
            self._fail(ErrorCode.COMPRESSION_ERROR, f"header block: {error}")
        self._flush()

    # -- Reading frames ----------------------------------------------------------------------

    def _read_frames(self) -> None:
        buffer = self.buffer
        position = 0
        if not self.preface_seen:
            if len(buffer) < len(frames.PREFACE):
                return
            if buffer[: len(frames.PREFACE)] != frames.PREFACE:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
            self.preface_seen = True
            position = len(frames.PREFACE)
        end = len(buffer)
        while end - position >= frames.FRAME_HEADER_BYTES:
            length = (buffer[position] << 16) | (buffer[position + 1] << 8) | buffer[position + 2]
            if length > limits.API_H2_MAX_FRAME_BYTES:
                raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"a {length}-byte frame")
            start = position + frames.FRAME_HEADER_BYTES
            if end - start < length:
                break
            kind = buffer[position + 3]
            flags = buffer[position + 4]
            stream_id = int.from_bytes(buffer[position + 5 : start], "big") & 0x7FFFFFFF
            payload = bytes(buffer[start : start + length])
            position = start + length
            self._on_frame(kind, flags, stream_id, payload)
        del buffer[:position]

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.headers_in_progress is not None and kind != FrameType.CONTINUATION:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
        if kind == FrameType.DATA:
            self._on_data(stream_id, flags, payload)
        elif kind == FrameType.HEADERS:
            self._on_headers(stream_id, flags, payload)
        elif kind == FrameType.CONTINUATION:
            self._on_continuation(stream_id, flags, payload)
        elif kind == FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, frames.read_u31(payload, "WINDOW_UPDATE"))
        elif kind == FrameType.SETTINGS:
            self._on_settings(flags, payload)
        elif kind == FrameType.PING:
            if len(payload) != 8:
                raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING must be 8 bytes")
            if not flags & frames.ACK:
                self.out.append(frames.frame(FrameType.PING, frames.ACK, 0, payload))
        elif kind == FrameType.RST_STREAM:
            call = self.calls.pop(stream_id, None)
            if call is not None:
                self._cancel(call)
        elif kind == FrameType.GOAWAY:
            self.going_away = True
        elif kind == FrameType.PUSH_PROMISE:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client cannot push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        block = frames.strip_padding(flags, payload)
        if flags & Flag.PRIORITY:
            block = block[5:]
        if not flags & Flag.END_HEADERS:
            self.headers_in_progress = (stream_id, flags, bytearray(block))
            return
        self._on_header_block(stream_id, flags, block)

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        progress = self.headers_in_progress
        if progress is None or progress[0] != stream_id:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of place")
        progress[2].extend(payload)
        if len(progress[2]) > limits.API_H2_MAX_HEADER_LIST_BYTES:
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & Flag.END_HEADERS:
            self.headers_in_progress = None
            self._on_header_block(stream_id, progress[1], bytes(progress[2]))

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Decoded even for a stream about to be refused: the HPACK table is shared.
        head = self.decoder.decode(block)
        existing = self.calls.get(stream_id)
        if existing is not None:  # the client's trailers: only END_STREAM matters
            if flags & Flag.END_STREAM:
                self._on_half_close(existing)
            return
        if stream_id <= self.last_stream_id:
            return  # a stream already ended (answered early, say): nothing to do
        self.last_stream_id = stream_id
        if self.going_away or len(self.calls) >= limits.API_H2_MAX_CONCURRENT_STREAMS:
            self.out.append(frames.rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        call = _Call(self, stream_id, self.peer_initial_window_bytes)
        self.calls[stream_id] = call
        if self._take_headers(call, head):
            self._begin(call)
        if flags & Flag.END_STREAM:
            self._on_half_close(call)

    def _take_headers(self, call: _Call, head: _RequestHead) -> bool:
        """Reads the request headers; False when the call was answered already."""
        call.path = head.path
        call.metadata = head.metadata
        if not head.is_grpc:
            self._answer_http(call, 415)
            return False
        if head.timeout_s is not None:
            now_s = asyncio.get_running_loop().time()
            self.server.deadlines.add(call, now_s + head.timeout_s)
        return True

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        self.received_unacked_bytes += len(payload)
        if self.received_unacked_bytes >= limits.API_H2_CONNECTION_WINDOW_BYTES // 2:
            self.out.append(frames.window_update(0, self.received_unacked_bytes))
            self.received_unacked_bytes = 0
        call = self.calls.get(stream_id)
        if call is None or call.closed:
            return  # an ended stream; its bytes still counted for the connection window
        call.receive(frames.strip_padding(flags, payload))
        if flags & Flag.END_STREAM and not call.closed:
            self._on_half_close(call)

    def _on_half_close(self, call: _Call) -> None:
        call.half_closed = True
        call.wake_reader()
        if call.task is None and not call.closed and call.handler is not None:
            self._start_unary_request(call)

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if increment == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "a zero WINDOW_UPDATE")
        if stream_id == 0:
            self.send_window_bytes += increment
            if self.send_window_bytes > frames.MAX_WINDOW_BYTES:
                raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "window past 2^31-1")
            for call in list(self.calls.values()):
                self._send_pending(call)
            return
        target = self.calls.get(stream_id)
        if target is not None:
            target.send_window_bytes += increment
            self._send_pending(target)

    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & frames.ACK:
            return
        for key, value in frames.parse_settings(payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > frames.MAX_WINDOW_BYTES:
                    raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "initial window")
                delta = value - self.peer_initial_window_bytes
                self.peer_initial_window_bytes = value
                for call in self.calls.values():
                    call.send_window_bytes += delta
            elif key == Setting.MAX_FRAME_SIZE:
                if not frames.DEFAULT_MAX_FRAME_BYTES <= value < 1 << 24:
                    raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE")
                self.peer_max_frame_bytes = value
        self.out.append(frames.frame(FrameType.SETTINGS, frames.ACK, 0, b""))
        for call in list(self.calls.values()):
            self._send_pending(call)

    # -- Running calls -----------------------------------------------------------------------

    def _begin(self, call: _Call) -> None:
        handler = self.server.handler(call.path)
        if handler is None:
            service, _, method = call.path.lstrip("/").rpartition("/")
            known = any(path.startswith(f"/{service}/") for path in self.server._handlers)
            details = (
                f"unknown method {method} for service {service}"
                if known
                else f"unknown service {service}"
            )
            self.finish(call, grpc.StatusCode.UNIMPLEMENTED, details)
            return
        if self.server.running_calls >= self.server.max_concurrent_calls:
            self.finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls at once")
            return
        call.handler = handler
        call.counted = True
        self.server.running_calls += 1
        if handler.request_streaming:
            requests = call.requests(handler.request_deserializer or _identity)
            behavior = handler.stream_stream or handler.stream_unary
            context = Context(call)
            self._spawn(call, context, behavior(requests, context))

    def _start_unary_request(self, call: _Call) -> None:
        handler = call.handler
        assert handler is not None, "a call starts once its method is known"
        raw = call.only_message()
        if raw is None:
            self.finish(call, grpc.StatusCode.INTERNAL, _one_message_error(call))
            return
        call.messages.clear()
        try:
            request = (handler.request_deserializer or _identity)(raw)
        except Exception as error:  # raftkv's wrappers never raise; a bare handler may
            details = f"grpc: error unmarshalling request: {error}"
            self.finish(call, grpc.StatusCode.INTERNAL, details)
            return
        behavior = handler.unary_unary or handler.unary_stream
        context = Context(call)
        self._spawn(call, context, behavior(request, context))

    def _spawn(self, call: _Call, context: Context, result: Any) -> None:
        call.task = asyncio.get_running_loop().create_task(self._run(call, result, context))

    async def _run(self, call: _Call, result: Any, context: Context) -> None:
        handler = call.handler
        assert handler is not None, "a call runs once its method is known"
        try:
            if inspect.isasyncgen(result):
                async for message in result:
                    await call.send_message(message)
            else:
                response = await result
                if not handler.response_streaming:
                    self.queue_message(call, response)
        except grpc.aio.AbortError:
            self.finish(call, context.code() or grpc.StatusCode.UNKNOWN, context.details())
        except asyncio.CancelledError:
            return  # the client left, the deadline passed or the server stopped
        except Exception as error:
            self.finish(call, grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
        else:
            self.finish(call, grpc.StatusCode.OK, "")
        finally:
            self._flush_after_call()

    def _flush_after_call(self) -> None:
        """The last open call of a connection writes its end at once, a loop turn sooner:
        with no other call open here, nothing could join that write (one client's calls
        in a row). Otherwise the answers of this loop iteration share one write."""
        if self.calls:
            self.flush_soon()
        else:
            self._flush()

    def queue_message(self, call: _Call, message: Any) -> None:
        if call.closed or call.trailers is not None:
            return  # reset by the client or already ended: nothing more goes on the stream
        serialize = call.handler.response_serializer if call.handler else None
        data: bytes = message if serialize is None else serialize(message)
        if len(data) > self.server.max_send_message_bytes:
            details = (
                f"grpc: trying to send message larger than max ({len(data)} vs. "
                f"{self.server.max_send_message_bytes})"
            )
            self.finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
            return
        if not call.headers_sent:
            call.headers_sent = True
            self.out.append(
                frames.frame(
                    FrameType.HEADERS, Flag.END_HEADERS, call.stream_id, frames.RESPONSE_HEADERS
                )
            )
        call.pending += b"\x00" + len(data).to_bytes(4, "big") + data
        self._send_pending(call)
        self.flush_soon()

    def finish(self, call: _Call, code: grpc.StatusCode, details: str) -> None:
        """Ends the call with its status: trailers after the data, or trailers only."""
        if call.closed or call.trailers is not None:
            return
        status = frames.status_trailers(code.value[0], details)
        if call.headers_sent:
            call.trailers = status
            self._send_pending(call)
            return
        block = frames.RESPONSE_HEADERS + status
        self.out.append(frames.frame(FrameType.HEADERS, _END, call.stream_id, block))
        self._close(call)

    def refuse_oversized(self, call: _Call, length: int) -> None:
        maximum = self.server.max_receive_message_bytes
        details = f"grpc: received message larger than max ({length} vs. {maximum})"
        self._end_early(call, grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    def _answer_http(self, call: _Call, status: int) -> None:
        block = frames.literal(b":status", str(status).encode())
        self.out.append(frames.frame(FrameType.HEADERS, _END, call.stream_id, block))
        self._close(call)

    def _send_pending(self, call: _Call) -> None:
        """DATA as far as both windows allow, in frames the peer accepts; then trailers."""
        pending = call.pending
        while pending:
            size = min(
                len(pending),
                self.send_window_bytes,
                call.send_window_bytes,
                self.peer_max_frame_bytes,
            )
            if size <= 0:
                return  # the rest waits for WINDOW_UPDATE
            chunk = bytes(pending[:size])
            del pending[:size]
            self.send_window_bytes -= size
            call.send_window_bytes -= size
            self.out.append(frames.frame(FrameType.DATA, 0, call.stream_id, chunk))
        call.wake_writer()
        if call.trailers is not None:
            self.out.append(frames.frame(FrameType.HEADERS, _END, call.stream_id, call.trailers))
            call.trailers = None
            self._close(call)

    def _close(self, call: _Call) -> None:
        if call.closed:
            return
        call.closed = True
        self.server.deadlines.remove(call)
        if call.counted:
            call.counted = False
            self.server.running_calls -= 1
        if not call.half_closed and not call.cancelled:
            # Answered before the client finished sending (RFC 9113 8.1): stop its sending.
            self.out.append(frames.rst_stream(call.stream_id, ErrorCode.NO_ERROR))
        call.wake_reader()
        call.wake_writer()
        if self.calls.get(call.stream_id) is call:
            del self.calls[call.stream_id]
        if self.going_away and not self.calls:
            self.flush_soon()
            asyncio.get_running_loop().call_soon(self._close_transport)

    def _end_early(self, call: _Call, code: grpc.StatusCode, details: str) -> None:
        """Stops the handler and ends the call with ``code``, dropping unsent data."""
        self._stop_task(call)
        call.pending.clear()
        self.finish(call, code, details)
        self.flush_soon()

    def _stop_task(self, call: _Call) -> None:
        if call.task is not None and not call.task.done():
            call.task.cancel()

    def _cancel(self, call: _Call) -> None:
        """The client reset the stream, or the connection is gone: nothing more is sent."""
        call.cancelled = True
        self._stop_task(call)
        self._close(call)

    # -- Writing and ending ------------------------------------------------------------------

    def flush_soon(self) -> None:
        """One write for everything queued in this loop iteration (a write per answer was
        a third of the server's CPU at 1000 clients)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _fail(self, code: ErrorCode, message: str) -> None:
        self.out.append(frames.goaway(self.last_stream_id, code, message.encode()[:256]))
        self._flush()
        self._close_transport()

    def _close_transport(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def go_away(self) -> None:
        """Graceful stop: no new streams; the connection closes when the last one ends."""
        self.going_away = True
        self.out.append(frames.goaway(self.last_stream_id, ErrorCode.NO_ERROR))
        self._flush()
        if not self.calls:
            self._close_transport()

    def abort(self) -> None:
        for call in list(self.calls.values()):
            self._cancel(call)
        if self.transport is not None:
            self.transport.abort()


def _deadline_passed(call: _Call) -> None:
    if not call.closed:
        call.connection._end_early(
            call, grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"
        )


@dataclass(frozen=True, slots=True)
class _RequestHead:
    """What a request's header block says, as the decoder remembers it per block."""

    path: str
    metadata: tuple[tuple[str, str | bytes], ...]
    is_grpc: bool  # content-type application/grpc (else HTTP 415)
    timeout_s: float | None  # grpc-timeout, if given and well-formed


def _request_head(headers: list[Header]) -> _RequestHead:
    path = ""
    metadata: list[tuple[str, str | bytes]] = []
    content_type = b""
    timeout_s = None
    for name, value in headers:
        if name == b":path":
            path = value.decode("utf-8", "replace")
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            with contextlib.suppress(ValueError):  # grpc-go ignores a malformed one too
                timeout_s = parse_timeout_s(value)
        elif name.endswith(b"-bin"):
            metadata.append((name.decode("latin-1"), _base64(value)))
        elif not name.startswith(b":"):
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
    is_grpc = content_type.startswith(b"application/grpc")
    return _RequestHead(path, tuple(metadata), is_grpc, timeout_s)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _identity(data: bytes) -> bytes:
    return data


def _base64(value: bytes) -> bytes:
    padded = value + b"=" * (-len(value) % 4)  # grpc sends -bin values unpadded
    try:
        return base64.b64decode(padded)
    except ValueError:
        return value


def _one_message_error(call: _Call) -> str:
    if not call.messages and not call.inbound:
        return "grpc: no request message"
    return "grpc: a unary call carries exactly one message"


def _auth_context(ssl_object: ssl.SSLObject | None) -> dict[str, list[bytes]]:
    """grpc's auth context for a TLS client: the common name of a verified certificate."""
    if ssl_object is None:
        return {}
    context: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    certificate: dict[str, Any] = cast(dict[str, Any], ssl_object.getpeercert() or {})
    if certificate:
        names = [
            str(value).encode()
            for rdn in certificate.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ]
        if names:
            context["x509_common_name"] = names
    return context
