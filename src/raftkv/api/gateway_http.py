"""A small, strict HTTP/1.1 server over asyncio streams (the JSON gateway and the metrics
listeners): ``HttpListeners`` accepts connections, ``Connection`` reads and answers requests.

What it accepts: a request line ``METHOD SP origin-form SP HTTP/1.x``, header fields
``name: value`` (token names, no obsolete line folding, no control characters), CRLF
line ends, a body only as ``Content-Length`` (a ``Transfer-Encoding``, chunked or
not, is refused), and ``Expect: 100-continue``. Bounds: the head (request line and
headers) at most ``max_header_bytes`` (431), the body at most ``max_body_bytes`` (413),
the whole request within ``read_timeout_seconds`` of its first byte (408), and a
kept-alive connection waits at most ``idle_timeout_seconds`` for the next request.
Anything malformed is a ``HttpError`` whose status the caller sends before closing.

Responses: ``write_response`` (Content-Length) or a chunked stream
(``start_chunked`` / ``write_chunk`` / ``end_chunked``). HTTP/1.1 connections are kept
alive unless the client says ``Connection: close``; HTTP/1.0 ones are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from raftkv.server.tls import TlsServer, start_tls_server

_READ_CHUNK_BYTES = 64 * 1024
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (/[\x21-\x7e]*) HTTP/(\d)\.(\d)")
_HEADER_NAME = re.compile(_TOKEN)
# Field values: visible ASCII, obs-text, spaces and tabs (no other control characters).
_HEADER_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# What a request line (or its start) may contain: visible ASCII and spaces, and a CR
# that only a LF may follow.
_REQUEST_LINE_BYTES = re.compile(rb"[\x20-\x7e]*\r?")
_DIGITS = re.compile(rb"[0-9]{1,19}")


class HttpError(Exception):
    """A request this server refuses; the connection is closed after the answer."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(f"{status.value} {status.phrase}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Connection:
    """One client connection: reads requests, writes responses."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_header_bytes: int,
        max_body_bytes: int,
        read_timeout_seconds: float,
        idle_timeout_seconds: float,
    ) -> None:
        assert max_header_bytes > 0 and max_body_bytes >= 0
        self._reader = reader
        self._writer = writer
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._read_timeout_seconds = read_timeout_seconds
        self._idle_timeout_seconds = idle_timeout_seconds
        # Bytes received but not parsed yet (the rest of a pipelined request, or
        # what arrived while a response was being produced).
        self._buffer = bytearray()
        self._peer_closed = False

    @property
    def peer_closed(self) -> bool:
        return self._peer_closed

    # --- Reading -------------------------------------------------------------------

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False at end of stream."""
        if self._peer_closed:
            return False
        try:
            data = await self._reader.read(_READ_CHUNK_BYTES)
        except ConnectionError:
            data = b""
        if not data:
            self._peer_closed = True
            return False
        self._buffer += data
        return True

    async def read_request(self) -> Request | None:
        """The next request; None if the client closed or stayed idle between requests.
        HttpError if it is malformed or too large or too slow."""
        try:
            async with asyncio.timeout(self._idle_timeout_seconds):
                if not await self._skip_blank_lines():
                    return None
        except TimeoutError:
            return None
        try:
            async with asyncio.timeout(self._read_timeout_seconds):
                return await self._read_request_started()
        except TimeoutError:
            raise HttpError(HTTPStatus.REQUEST_TIMEOUT, "request not received in time") from None

    async def _skip_blank_lines(self) -> bool:
        """Wait for the first byte of a request (servers ignore CRLFs before one);
        False if the client closes first."""
        while True:
            while self._buffer.startswith(b"\r\n"):
                del self._buffer[:2]
            if self._buffer and self._buffer != b"\r":
                return True
            if not await self._fill():
                return False

    async def _read_request_started(self) -> Request:
        head = await self._read_head()
        method, path, query, version, headers = _parse_head(head)
        length = _content_length(headers, self._max_body_bytes)
        if "transfer-encoding" in headers:
            raise HttpError(
                HTTPStatus.BAD_REQUEST, "Transfer-Encoding is not supported: send Content-Length"
            )
        if version == (1, 1) and "host" not in headers:
            raise HttpError(HTTPStatus.BAD_REQUEST, "missing required Host header")
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(HTTPStatus.EXPECTATION_FAILED, f"unsupported Expect: {expect}")
            if length and len(self._buffer) < length:
                await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(length)
        tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        keep_alive = version == (1, 1) and "close" not in tokens
        return Request(method, path, query, headers, body, keep_alive)

    async def _read_head(self) -> bytes:
        checked = 0  # the buffer is known to hold no bad bytes before this offset
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > self._max_header_bytes:
                    break
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                return head
            if len(self._buffer) > self._max_header_bytes:
                break
            # Refuse what can never become a request at once (garbage, a TLS hello,
            # bare LF line ends) rather than wait for a head end that never comes.
            self._check_partial_head(checked)
            checked = max(len(self._buffer) - 1, 0)
            if not await self._fill():
                raise HttpError(HTTPStatus.BAD_REQUEST, "connection closed inside the request head")
        raise HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"request head larger than {self._max_header_bytes} bytes",
        )

    def _check_partial_head(self, start: int) -> None:
        buffer = self._buffer
        line_feed = buffer.find(b"\n", start)
        while line_feed >= 0:
            if line_feed == 0 or buffer[line_feed - 1] != 0x0D:
                raise HttpError(HTTPStatus.BAD_REQUEST, "line ends must be CRLF")
            line_feed = buffer.find(b"\n", line_feed + 1)
        first_line_end = buffer.find(b"\r\n")
        request_line = buffer if first_line_end < 0 else buffer[:first_line_end]
        if _REQUEST_LINE_BYTES.fullmatch(request_line) is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")

    async def _read_body(self, length: int) -> bytes:
        while len(self._buffer) < length:
            if not await self._fill():
                raise HttpError(HTTPStatus.BAD_REQUEST, "connection closed inside the body")
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    async def wait_peer_closed(self) -> None:
        """Return when the client closes its side (reading what it sends meanwhile,
        up to the head bound, for the next request); never returns otherwise."""
        while len(self._buffer) <= self._max_header_bytes:
            if not await self._fill():
                return
        await asyncio.get_running_loop().create_future()  # holds enough: just wait

    # --- Writing -------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def write_response(
        self,
        status: HTTPStatus,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        fields = [*headers, ("Content-Length", str(len(body)))]
        if not keep_alive:
            fields.append(("Connection", "close"))
        await self._send(_status_and_headers(status, fields) + body)

    async def start_chunked(
        self, status: HTTPStatus, headers: list[tuple[str, str]], keep_alive: bool
    ) -> None:
        fields = [*headers, ("Transfer-Encoding", "chunked")]
        if not keep_alive:
            fields.append(("Connection", "close"))
        await self._send(_status_and_headers(status, fields))

    async def write_chunk(self, data: bytes) -> None:
        assert data, "an empty chunk would end the body"
        await self._send(b"%x\r\n%b\r\n" % (len(data), data))

    async def end_chunked(self) -> None:
        await self._send(b"0\r\n\r\n")

    async def close(self) -> None:
        self._writer.close()
        # A peer that reset the connection leaves it closed either way.
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


def _status_and_headers(status: HTTPStatus, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[str, str, str, tuple[int, int], dict[str, str]]:
    """(method, path, query, version, headers) of a request head without its final CRLF."""
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    version = (int(match[3]), int(match[4]))
    if version not in ((1, 0), (1, 1)):
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and 1.1")
    target = match[2].decode("ascii")
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _HEADER_NAME.fullmatch(name) is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header field")
        value = value.strip(b" \t")
        if _HEADER_VALUE.fullmatch(value) is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "control character in a header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return match[1].decode("ascii"), path, query, version, headers


def _content_length(headers: dict[str, str], max_body_bytes: int) -> int:
    raw = headers.get("content-length")
    if raw is None:
        return 0
    # Repeated fields arrive joined; they must all agree (RFC 9110 8.6).
    values = {value.strip() for value in raw.split(",")}
    if len(values) != 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, "conflicting Content-Length values")
    (value,) = values
    if _DIGITS.fullmatch(value.encode("latin-1")) is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    length = int(value)
    if length > max_body_bytes:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {max_body_bytes} bytes"
        )
    return length


@dataclass(frozen=True)
class ListenerBounds:
    """What one kind of HTTP listener allows (the gateway's and the metrics listener's)."""

    what: str  # names the listener in TLS log lines
    max_connections: int
    max_header_bytes: int
    max_body_bytes: int
    read_timeout_seconds: float
    idle_timeout_seconds: float
    plaintext_on_tls_reply: bytes = b""


# The headers of a plain-text answer (errors, health).
TEXT_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("X-Content-Type-Options", "nosniff"),
]


class HttpListeners:
    """Plain or TLS listeners. Each accepted connection, within a bound on their number,
    reads requests and hands each to ``handle``, which answers it and says whether the
    connection stays open; a malformed request gets its error status, then the connection
    closes. ``close`` stops listening and ends every connection. ``bounds`` is asked
    again at each listen and accept, so it reads the limits in force then."""

    def __init__(
        self,
        handle: Callable[[Connection, Request], Awaitable[bool]],
        bounds: Callable[[], ListenerBounds],
    ) -> None:
        self._handle = handle
        self._bounds = bounds
        self._servers: list[asyncio.Server | TlsServer] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def ports(self) -> list[int]:
        """The bound port of each listening socket, in the order of the listen calls."""
        return [sock.getsockname()[1] for server in self._servers for sock in server.sockets]

    async def listen(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        bounds = self._bounds()
        server: asyncio.Server | TlsServer
        if context is None:
            server = await asyncio.start_server(
                self._accept, host, port, limit=bounds.max_header_bytes, reuse_address=True
            )
        else:
            server = await start_tls_server(
                self._accept,
                host,
                port,
                context,
                what=bounds.what,
                plaintext_reply=bounds.plaintext_on_tls_reply,
                read_limit_bytes=bounds.max_header_bytes,
            )
        self._servers.append(server)

    async def close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        bounds = self._bounds()
        if self._closing or len(self._connections) >= bounds.max_connections:
            writer.close()
            return
        self._connections.add(task)
        connection = Connection(
            reader,
            writer,
            max_header_bytes=bounds.max_header_bytes,
            max_body_bytes=bounds.max_body_bytes,
            read_timeout_seconds=bounds.read_timeout_seconds,
            idle_timeout_seconds=bounds.idle_timeout_seconds,
        )
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._serve(connection)
        except asyncio.CancelledError:
            # Only close() cancels a connection; ending quietly keeps asyncio's server
            # callback from logging the cancellation as an error.
            if not self._closing:
                raise
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            self._connections.discard(task)
            await connection.close()

    async def _serve(self, connection: Connection) -> None:
        while True:
            try:
                request = await connection.read_request()
            except HttpError as error:
                body = f"{error.status.phrase}: {error.detail}\n".encode()
                await connection.write_response(error.status, TEXT_HEADERS, body, keep_alive=False)
                return
            if request is None or not await self._handle(connection, request):
                return
