"""The asyncio TCP transport between members: Raft messages, snapshots and peer requests.

Every connection starts with a fixed-size handshake in each direction::

    magic "RKV1" | version:u8 | cluster_id:u64 | member_id:u64 | kind:u8     (big-endian)

The dialer sends its own; the listener checks the magic, version and cluster id, closes
the connection on a mismatch (logging ``cluster ID mismatch: local X, remote Y``) and
otherwise answers with its own, which the dialer checks in turn (a URL that leads to a
different member is refused). Then both sides exchange frames::

    length:u32 | crc32(kind + payload):u32 | kind:u8 | payload      (length <= PEER_MAX_FRAME_BYTES)

A connection has one kind:

- STREAM: one per peer and direction, held open. The dialer writes MESSAGE frames (one
  encoded message each, ``raftkv.server.codec``), batched into one write per batch;
  the listener never writes after the handshake, so end-of-file tells the dialer that
  the listener closed it. A newer stream from the same member replaces an older one.
- SNAPSHOT: one per outgoing snapshot. SNAPSHOT_BEGIN (file size:u64 + the SNAP message,
  which carries only the metadata), SNAPSHOT_CHUNK frames with the file's bytes, then
  the listener writes the file, fsyncs it and answers SNAPSHOT_ACK.
- REQUEST: one per peer, opened on first use. REQUEST (id:u64 + payload) is answered by
  RESPONSE (id + reply) or REQUEST_FAILED (id + error text), possibly out of order.

Whatever a remote end sends that breaks the protocol (bad magic, version or cluster id,
an oversized frame, a checksum mismatch, an undecodable message, an unexpected frame)
is logged as a warning naming its address, counted in ``stats.bad_frames`` and closes
that connection only; the listener keeps serving everyone else.

Sending never blocks and never raises for network trouble: a message waits in the
destination's bounded queue, and a full queue or an unknown destination drops it (Raft
retransmits). The transport is not thread-safe: call it on its event loop.

TLS (etcd's ``--peer-cert-file`` family): with ``listen_tls`` the listener speaks TLS only
(``raftkv.server.tls``: a plaintext peer is refused and logged, as is a certificate from
an unknown CA), and ``https://`` peer URLs are dialed with ``dial_tls``, which checks the
listener's certificate and host name and presents this member's certificate. The
handshake and frames above travel inside the TLS connection, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import ssl
import struct
import tempfile
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple
from urllib.parse import urlsplit

from raftkv import limits
from raftkv.raft.messages import LOCAL_MESSAGE_TYPES, Message, MessageType
from raftkv.server import metrics
from raftkv.server.codec import (
    MessageDecodeError,
    MessageTooLargeError,
    decode_message,
    encode_message,
)
from raftkv.server.tls import TlsServer, describe_tls_error, start_tls_server

_log = logging.getLogger(__name__)

MAGIC = b"RKV1"
_TLS_RECORD_START = b"\x16\x03"  # a TLS handshake record: a ClientHello
PROTOCOL_VERSION = 1
INCOMING_SNAPSHOT_PREFIX = "incoming-"
INCOMING_SNAPSHOT_SUFFIX = ".tmp"

_HANDSHAKE = struct.Struct(">4sBQQB")
_FRAME_HEADER = struct.Struct(">IIB")
_U64 = struct.Struct(">Q")
_UINT64_MAX = (1 << 64) - 1

# Errors that mean "this connection is broken" (TimeoutError and ConnectionError are OSErrors;
# IncompleteReadError is an EOFError).
_CONNECTION_ERRORS = (OSError, EOFError)

OnMessage = Callable[[Message], None]
OnSnapshot = Callable[[Message, str], Awaitable[None]]
OnRequest = Callable[[int, bytes], Awaitable[bytes]]
OnUnreachable = Callable[[int], None]


class ConnectionKind(enum.IntEnum):
    STREAM = 1
    SNAPSHOT = 2
    REQUEST = 3


class FrameKind(enum.IntEnum):
    MESSAGE = 1
    SNAPSHOT_BEGIN = 2
    SNAPSHOT_CHUNK = 3
    SNAPSHOT_ACK = 4
    REQUEST = 5
    RESPONSE = 6
    REQUEST_FAILED = 7


class TransportError(Exception):
    """Base of the transport's errors."""


class PeerUnavailableError(TransportError):
    """A peer request got no answer: unknown peer, connection failure or timeout."""


class PeerRequestFailedError(PeerUnavailableError):
    """The peer received the request, but its handler failed."""


class PeerProtocolError(TransportError):
    """The remote end of a connection broke the protocol; the connection is closed."""


class PeerRefusedError(PeerUnavailableError):
    """``request_at``: the remote end is no raftkv member that accepts us (a TLS certificate
    refused either way, or not the raftkv protocol): asking again will not help."""


@dataclass(slots=True)
class TransportStats:
    sent: int = 0  # messages written to a connection
    dropped_queue_full: int = 0
    dropped_unknown_peer: int = 0
    dropped_too_large: int = 0  # over PEER_MAX_MESSAGE_BYTES or the entry count
    dropped_wrong_member: int = 0  # received messages whose ``to`` is another member
    received: int = 0  # messages handed to on_message or on_snapshot
    bad_frames: int = 0  # connections closed for breaking the protocol
    reconnects: int = 0  # streams established after a failed attempt or a lost stream


# --- Wire helpers (pure) -------------------------------------------------------------


class PeerAddress(NamedTuple):
    host: str
    port: int
    tls: bool  # an https:// URL


def parse_peer_address(url: str) -> PeerAddress:
    """The address of ``http://host:port`` or ``https://host:port``; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"peer URL {url!r}: the scheme must be http or https")
    port = parts.port  # raises ValueError for a port that is not a number in range
    if not parts.hostname or port is None:
        raise ValueError(f"peer URL {url!r} needs a host and a port")
    return PeerAddress(parts.hostname, port, parts.scheme == "https")


def parse_peer_url(url: str) -> tuple[str, int]:
    """(host, port) of ``http(s)://host:port``; ValueError for anything else."""
    host, port, _ = parse_peer_address(url)
    return host, port


def encode_handshake(cluster_id: int, member_id: int, kind: ConnectionKind) -> bytes:
    assert 0 <= cluster_id <= _UINT64_MAX and 0 <= member_id <= _UINT64_MAX
    return _HANDSHAKE.pack(MAGIC, PROTOCOL_VERSION, cluster_id, member_id, kind)


@dataclass(frozen=True, slots=True)
class Handshake:
    cluster_id: int
    member_id: int
    kind: ConnectionKind


def decode_handshake(data: bytes) -> Handshake:
    assert len(data) == _HANDSHAKE.size
    magic, version, cluster_id, member_id, kind = _HANDSHAKE.unpack(data)
    if magic.startswith(_TLS_RECORD_START):
        raise PeerProtocolError(
            "a TLS connection on a plaintext peer port: the peer dials an https:// URL of "
            "this member, which listens on http://"
        )
    if magic != MAGIC:
        raise PeerProtocolError(f"bad magic {magic!r}: not a raftkv peer")
    if version != PROTOCOL_VERSION:
        raise PeerProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    try:
        return Handshake(cluster_id, member_id, ConnectionKind(kind))
    except ValueError:
        raise PeerProtocolError(f"unknown connection kind {kind}") from None


def _checksum(kind: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((kind,))))


def frame_header(kind: FrameKind, payload: bytes | memoryview) -> bytes:
    assert len(payload) <= limits.PEER_MAX_FRAME_BYTES, len(payload)
    return _FRAME_HEADER.pack(len(payload), _checksum(kind, payload), kind)


def encode_frame(kind: FrameKind, payload: bytes) -> bytes:
    return frame_header(kind, payload) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[FrameKind, bytes]:
    """The next frame; PeerProtocolError for garbage, EOFError if the connection ends."""
    header = await reader.readexactly(_FRAME_HEADER.size)
    length, checksum, kind = _FRAME_HEADER.unpack(header)
    if length > limits.PEER_MAX_FRAME_BYTES:
        raise PeerProtocolError(
            f"frame length {length} exceeds the limit {limits.PEER_MAX_FRAME_BYTES}"
        )
    payload = await reader.readexactly(length)
    if _checksum(kind, payload) != checksum:
        raise PeerProtocolError(f"frame checksum mismatch (kind {kind}, {length} bytes)")
    try:
        return FrameKind(kind), payload
    except ValueError:
        raise PeerProtocolError(f"unknown frame kind {kind}") from None


def _decode(payload: bytes) -> Message:
    try:
        return decode_message(payload)
    except MessageDecodeError as error:
        raise PeerProtocolError(f"undecodable message: {error}") from error


def _address_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _flush_and_fsync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _unexpected_frame(kind: int) -> str:
    try:
        return f"unexpected {FrameKind(kind).name} frame on a message stream"
    except ValueError:
        return f"unknown frame kind {kind}"


class _StreamReceiver(asyncio.Protocol):
    """The receiving end of a STREAM connection once its handshake is done: MESSAGE frames
    parsed as they arrive, each message handed to ``deliver`` at once. ``closed`` ends with
    the connection: None when it just ended, the PeerProtocolError when a frame broke the
    protocol (the connection is closed then). The buffer holds at most one frame beyond
    what one read brings, and frames are at most PEER_MAX_FRAME_BYTES."""

    def __init__(
        self, deliver: Callable[[Message], None], count_bytes: Callable[[float], None]
    ) -> None:
        self._deliver = deliver
        self._count_bytes = count_bytes
        self._buffer = bytearray()
        self._transport: asyncio.BaseTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self.closed.done():
            return  # a protocol error closed it; the rest is not read
        buffer = self._buffer
        buffer += data
        try:
            used = self._take_frames(buffer)
        except PeerProtocolError as error:
            buffer.clear()
            self._end(error)
            return
        del buffer[:used]

    def _take_frames(self, buffer: bytearray) -> int:
        position = 0
        header_size = _FRAME_HEADER.size
        while len(buffer) - position >= header_size:
            length, checksum, kind = _FRAME_HEADER.unpack_from(buffer, position)
            if length > limits.PEER_MAX_FRAME_BYTES:
                raise PeerProtocolError(
                    f"frame length {length} exceeds the limit {limits.PEER_MAX_FRAME_BYTES}"
                )
            end = position + header_size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[position + header_size : end])
            position = end
            if _checksum(kind, payload) != checksum:
                raise PeerProtocolError(f"frame checksum mismatch (kind {kind}, {length} bytes)")
            if kind != FrameKind.MESSAGE:
                raise PeerProtocolError(_unexpected_frame(kind))
            self._count_bytes(header_size + length)
            msg = _decode(payload)
            if msg.type is MessageType.SNAP:
                raise PeerProtocolError("a SNAP message outside a snapshot connection")
            self._deliver(msg)
        return position

    def eof_received(self) -> bool:
        return False  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(None)

    def pause_writing(self) -> None:
        pass  # the listener writes nothing after the handshake

    def resume_writing(self) -> None:
        pass

    def _end(self, error: PeerProtocolError | None) -> None:
        if self.closed.done():
            return
        if error is None:
            self.closed.set_result(None)
        else:
            self.closed.set_exception(error)
            if self._transport is not None:
                self._transport.close()


async def _wait_for_end_of_file(reader: asyncio.StreamReader) -> None:
    """Returns when the other end closes (or sends anything, which it must not)."""
    with contextlib.suppress(*_CONNECTION_ERRORS):
        await reader.read(1)


# --- Per-peer state ------------------------------------------------------------------


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str


class _RequestChannel:
    """The request connection to one peer and the requests waiting for its answers."""

    def __init__(self) -> None:
        self.connection: _Connection | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.next_request_id = 1
        self.connecting = asyncio.Lock()

    def take_request_id(self) -> int:
        request_id = self.next_request_id
        self.next_request_id = request_id % _UINT64_MAX + 1
        assert request_id not in self.pending, request_id
        return request_id

    def close(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PeerUnavailableError(reason))
        self.pending.clear()
        if self.reader_task is not None:
            self.reader_task.cancel()
            self.reader_task = None
        if self.connection is not None:
            self.connection.writer.close()
            self.connection = None


class _Peer:
    def __init__(self, member_id: int, addresses: list[PeerAddress]) -> None:
        assert addresses
        self.member_id = member_id
        self.addresses = addresses
        self.next_address = 0
        # Encoded MESSAGE frames, oldest first.
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.queue_full_logged = False
        # Set for the stream task to act: queued frames with no stream to write them yet,
        # or a stream whose socket buffer is backed up (``draining``).
        self.wakeup = asyncio.Event()
        # The outbound stream while it is up: send() writes to it directly.
        self.writer: asyncio.StreamWriter | None = None
        self.draining = False
        self.stream_task: asyncio.Task[None] | None = None
        self.snapshot_in_flight = False
        self.requests = _RequestChannel()
        self.last_dial_failure = ""  # since the last connection; "" after one succeeds
        self.stream_connected = False  # the outbound stream is up (handshake done)

    def pick_address(self) -> PeerAddress:
        """The next URL in turn, so a dead one does not block the others."""
        address = self.addresses[self.next_address % len(self.addresses)]
        self.next_address += 1
        return address

    def enqueue(self, frame: bytes) -> bool:
        if (
            len(self.queue) >= limits.PEER_SEND_QUEUE_MAX
            or self.queued_bytes + len(frame) > limits.PEER_SEND_QUEUE_MAX_BYTES
        ):
            return False
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        return True

    def take_batch(self) -> list[bytes]:
        """The oldest queued frames within PEER_SEND_BATCH_MAX_BYTES (at least one)."""
        assert self.queue
        batch = [self.queue.popleft()]
        batch_bytes = len(batch[0])
        while self.queue and batch_bytes + len(self.queue[0]) <= limits.PEER_SEND_BATCH_MAX_BYTES:
            frame = self.queue.popleft()
            batch.append(frame)
            batch_bytes += len(frame)
        self.queued_bytes -= batch_bytes
        self.queue_full_logged = False
        assert self.queued_bytes >= 0
        return batch


def _same_cluster(remote: int, local: int) -> bool:
    """Cluster ids must match, except that a member joining an existing cluster does not
    know the id until the leader's snapshot arrives: 0 on either side is accepted then.
    (Raft itself ignores a member outside the configuration.)"""
    return remote == local or remote == 0 or local == 0


def _hex(member_id: int) -> str:
    return f"{member_id:x}"


# --- The transport ---------------------------------------------------------------------


class Transport:
    """Connections to the other members of one cluster, and a listener for theirs."""

    def __init__(
        self,
        *,
        member_id: int,
        cluster_id: int,
        listen_host: str,
        listen_port: int,
        on_message: OnMessage,
        on_snapshot: OnSnapshot,
        on_request: OnRequest,
        snapshot_dir: str,
        on_unreachable: OnUnreachable,
        rng: random.Random | None = None,
        listen_tls: ssl.SSLContext | None = None,
        dial_tls: ssl.SSLContext | None = None,
    ) -> None:
        assert 0 < member_id <= _UINT64_MAX, member_id
        assert 0 <= cluster_id <= _UINT64_MAX, cluster_id
        assert 0 <= listen_port <= 0xFFFF, listen_port
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.stats = TransportStats()
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._on_message = on_message
        self._on_snapshot = on_snapshot
        self._on_request = on_request
        self._on_unreachable = on_unreachable
        self._snapshot_dir = snapshot_dir
        # Only the reconnect jitter is random; inject a seeded one for reproducible runs.
        self._rng = rng if rng is not None else random.Random()
        self._listen_tls = listen_tls
        self._dial_tls = dial_tls
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.Server | TlsServer | None = None
        self._stopped = False
        self._connections: set[asyncio.StreamWriter] = set()
        self._inbound_tasks: set[asyncio.Task[None]] = set()
        self._inbound_connections: set[asyncio.StreamWriter] = set()
        self._inbound_streams: dict[int, asyncio.StreamWriter] = {}
        self._inbound_snapshots = 0

    # --- Lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, and start a stream to every peer. Removes stale incoming snapshot files."""
        assert self._server is None and not self._stopped, "start() is called once"
        os.makedirs(self._snapshot_dir, exist_ok=True)
        self._remove_stale_incoming_snapshots()
        if self._listen_tls is not None:
            self._server = await start_tls_server(
                self._accept,
                self._listen_host,
                self._listen_port,
                self._listen_tls,
                what=f"member {_hex(self.member_id)} peer listener",
                read_limit_bytes=limits.PEER_READ_BUFFER_BYTES,
            )
        else:
            self._server = await asyncio.start_server(
                self._accept,
                self._listen_host,
                self._listen_port,
                limit=limits.PEER_READ_BUFFER_BYTES,
            )
        for peer in self._peers.values():
            self._start_stream(peer)
        _log.info(
            "member %s: peer transport listening on port %d%s",
            _hex(self.member_id),
            self.port,
            " (TLS)" if self._listen_tls is not None else "",
        )

    async def stop(self) -> None:
        """Close the listener and every connection and end every task; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[None]] = list(self._inbound_tasks)
        for peer in self._peers.values():
            if peer.stream_task is not None:
                tasks.append(peer.stream_task)
            if peer.requests.reader_task is not None:
                tasks.append(peer.requests.reader_task)
            peer.requests.close("the transport stopped")
        for writer in list(self._connections):
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        """The bound port (meaningful with listen_port 0); only after start()."""
        assert self._server is not None and self._server.sockets, "not listening"
        return int(self._server.sockets[0].getsockname()[1])

    # --- Peers --------------------------------------------------------------------------

    def add_peer(self, member_id: int, urls: list[str]) -> None:
        """Start talking to ``member_id`` at its peer URLs (``http://host:port``)."""
        if member_id in self._peers:
            raise ValueError(f"member {_hex(member_id)} is already a peer")
        if member_id == self.member_id or not 0 < member_id <= _UINT64_MAX:
            raise ValueError(f"member {_hex(member_id)} cannot be a peer of itself or invalid")
        peer = _Peer(member_id, self._parse_urls(urls))
        self._peers[member_id] = peer
        if self._server is not None and not self._stopped:
            self._start_stream(peer)

    def update_peer(self, member_id: int, urls: list[str]) -> None:
        """Set a peer's URLs, adding the peer if it is new.

        Changed URLs re-establish its connections (its queue is kept); the same URLs
        change nothing, so a caller may sync its whole member list at any time."""
        peer = self._peers.get(member_id)
        if peer is None:
            self.add_peer(member_id, urls)
            return
        addresses = self._parse_urls(urls)
        if addresses == peer.addresses:
            return
        peer.addresses = addresses
        peer.next_address = 0
        self._reconnect(peer, f"member {_hex(member_id)} moved to {urls}")

    def remove_peer(self, member_id: int) -> None:
        """Stop talking to a peer; its queued messages are dropped. Unknown ids are ignored."""
        peer = self._peers.pop(member_id, None)
        if peer is None:
            return
        peer.requests.close(f"member {_hex(member_id)} was removed")
        if peer.stream_task is not None:
            peer.stream_task.cancel()
            peer.stream_task = None
        peer.queue.clear()
        peer.queued_bytes = 0

    def connected_peer_count(self) -> int:
        """Peers whose outbound message stream is up now (etcd's ActivePeers)."""
        return sum(peer.stream_connected for peer in self._peers.values())

    def peer_ids(self) -> list[int]:
        return sorted(self._peers)

    def set_cluster_id(self, cluster_id: int) -> None:
        """Adopt a cluster id learned after start (a joining member): every connection
        was accepted under the old one, so all of them are re-established."""
        assert 0 <= cluster_id <= _UINT64_MAX, cluster_id
        if cluster_id == self.cluster_id:
            return
        _log.info("cluster id changes from %s to %s", _hex(self.cluster_id), _hex(cluster_id))
        self.cluster_id = cluster_id
        for writer in list(self._inbound_connections):
            writer.close()
        for peer in self._peers.values():
            self._reconnect(peer, "the cluster id changed")

    def _reconnect(self, peer: _Peer, reason: str) -> None:
        peer.requests.close(reason)
        if peer.stream_task is not None:
            peer.stream_task.cancel()
            peer.stream_task = None
        if self._server is not None and not self._stopped:
            self._start_stream(peer)

    def _parse_urls(self, urls: list[str]) -> list[PeerAddress]:
        if not urls:
            raise ValueError("a peer needs at least one URL")
        addresses = [parse_peer_address(url) for url in urls]
        if self._dial_tls is None and any(address.tls for address in addresses):
            raise ValueError(f"peer URLs {urls}: https needs peer TLS (--peer-cert-file)")
        return addresses

    # --- Sending messages -------------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        """Queue each message for its destination; never blocks, never raises for I/O.

        SNAP messages go through send_snapshot, local types never leave the node. Each
        peer's frames are written at once, in one write, when its stream is up and not
        backed up: waking a task per peer would cost a loop round trip per message."""
        touched: dict[int, _Peer] = {}
        for msg in messages:
            assert msg.type is not MessageType.SNAP, "a SNAP goes through send_snapshot"
            assert msg.type not in LOCAL_MESSAGE_TYPES, f"{msg.type.name} is local"
            peer = self._peers.get(msg.to)
            if peer is None:
                self.stats.dropped_unknown_peer += 1
                _log.debug("dropping %s: unknown member %s", msg.type.name, _hex(msg.to))
                continue
            try:
                payload = encode_message(msg)
            except MessageTooLargeError as error:
                self.stats.dropped_too_large += 1
                _log.warning("dropping a message to member %s: %s", _hex(msg.to), error)
                continue
            if not peer.enqueue(encode_frame(FrameKind.MESSAGE, payload)):
                self.stats.dropped_queue_full += 1
                if not peer.queue_full_logged:
                    peer.queue_full_logged = True
                    _log.warning("send queue to member %s is full: dropping", _hex(msg.to))
                continue
            touched[msg.to] = peer
        for peer in touched.values():
            self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        """Write the peer's queued frames now, or leave them to its stream task: when the
        stream is down (it writes them once connected) or backed up (it waits for the
        socket buffer to drain first, and gives up on the connection after
        PEER_IO_TIMEOUT_MS)."""
        writer = peer.writer
        if writer is None or peer.draining or writer.transport.is_closing():
            peer.wakeup.set()
            return
        while peer.queue:
            self._write_batch(peer, writer)
        if writer.transport.get_write_buffer_size() > limits.PEER_WRITE_BUFFER_HIGH_BYTES:
            peer.draining = True
            peer.wakeup.set()

    def _write_batch(self, peer: _Peer, writer: asyncio.StreamWriter) -> None:
        batch = peer.take_batch()
        writer.write(b"".join(batch))
        self.stats.sent += len(batch)
        metrics.PEER_SENT_BYTES.labels(_hex(peer.member_id)).inc(sum(map(len, batch)))

    def _start_stream(self, peer: _Peer) -> None:
        assert peer.stream_task is None or peer.stream_task.done()
        peer.stream_task = asyncio.create_task(
            self._stream_loop(peer), name=f"raftkv-peer-stream-{_hex(peer.member_id)}"
        )

    async def _stream_loop(self, peer: _Peer) -> None:
        """Connect, write queued messages until the connection fails, back off, repeat."""
        failures = 0
        while True:
            try:
                failures = await self._stream_once(peer, failures)
            except Exception:
                # A bug, not a network problem; the stream must outlive it all the same.
                _log.exception("stream to member %s failed", _hex(peer.member_id))
                failures += 1
            await asyncio.sleep(self._backoff_s(failures))

    async def _stream_once(self, peer: _Peer, failures: int) -> int:
        """One connection's life; returns the count of failures since the last success."""
        try:
            connection = await self._dial(peer, ConnectionKind.STREAM)
        except (*_CONNECTION_ERRORS, PeerProtocolError) as error:
            problem = f"cannot connect: {error!r}"
            # Warned again when the cause changes: the peer came up, but refuses our TLS
            # certificate, say.
            cause_changed = peer.last_dial_failure not in ("", problem)
            peer.last_dial_failure = problem
            self._report_failure(peer, problem, first=failures == 0 or cause_changed)
            return failures + 1
        peer.last_dial_failure = ""
        peer.stream_connected = True
        if failures:
            self.stats.reconnects += 1
            _log.info("connected to member %s again", _hex(peer.member_id))
        try:
            await self._write_queued_messages(peer, connection)
        except (*_CONNECTION_ERRORS, PeerProtocolError) as error:
            self._report_failure(peer, f"connection lost: {error!r}", first=True)
        finally:
            peer.stream_connected = False
            self._close(connection)
        return 1

    async def _write_queued_messages(self, peer: _Peer, connection: _Connection) -> None:
        """Write what was queued while the stream was down, then let send() write
        directly; wake only to wait out a backed-up socket buffer, or when the peer
        closes the stream."""
        writer = connection.writer
        closed_by_peer = asyncio.create_task(_wait_for_end_of_file(connection.reader))
        peer.writer = writer
        try:
            while True:
                while peer.queue:
                    self._write_batch(peer, writer)
                async with asyncio.timeout(limits.PEER_IO_TIMEOUT_MS / 1000):
                    await writer.drain()
                peer.draining = False
                if peer.queue:
                    continue  # queued while draining
                peer.wakeup.clear()
                woken = asyncio.create_task(peer.wakeup.wait())
                try:
                    await asyncio.wait((woken, closed_by_peer), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
                if closed_by_peer.done():
                    raise ConnectionResetError("the peer closed the stream")
        finally:
            peer.writer = None
            peer.draining = False
            closed_by_peer.cancel()

    def _backoff_s(self, failures: int) -> float:
        """Exponential in the failures so far, with jitter so peers do not retry in step."""
        exponent = min(max(failures - 1, 0), 16)
        ceiling_ms = min(
            limits.PEER_RECONNECT_BACKOFF_MAX_MS, limits.PEER_RECONNECT_BACKOFF_MIN_MS << exponent
        )
        return self._rng.uniform(ceiling_ms / 2, ceiling_ms) / 1000

    def _report_failure(self, peer: _Peer, problem: str, *, first: bool) -> None:
        # Warn once per outage; every failed attempt still tells Raft.
        level = logging.WARNING if first else logging.DEBUG
        _log.log(level, "stream to member %s: %s", _hex(peer.member_id), problem)
        self._report_unreachable(peer.member_id)

    def _report_unreachable(self, member_id: int) -> None:
        if self._stopped:
            return
        try:
            self._on_unreachable(member_id)
        except Exception:
            _log.exception("on_unreachable(%s) failed", _hex(member_id))

    async def _dial(self, peer: _Peer, kind: ConnectionKind) -> _Connection:
        """A connection to ``peer`` whose handshake both sides accepted."""
        host, port, tls = peer.pick_address()
        context = self._dial_tls if tls else None
        assert not tls or context is not None, "_parse_urls refuses https without dial_tls"
        try:
            async with asyncio.timeout(limits.PEER_DIAL_TIMEOUT_MS / 1000):
                reader, writer = await _open_peer_connection(
                    host, port, context, tls_handshake_timeout_s=limits.PEER_DIAL_TIMEOUT_MS / 1000
                )
        except ssl.SSLError as error:
            raise PeerProtocolError(
                f"TLS handshake with {host}:{port} failed: {describe_tls_error(error)}"
            ) from None
        connection = _Connection(reader, writer, f"{host}:{port}")
        self._connections.add(writer)
        try:
            writer.write(encode_handshake(self.cluster_id, self.member_id, kind))
            async with asyncio.timeout(limits.PEER_HANDSHAKE_TIMEOUT_MS / 1000):
                try:
                    reply = decode_handshake(await reader.readexactly(_HANDSHAKE.size))
                except asyncio.IncompleteReadError:
                    suspects = (
                        "did it refuse our TLS certificate, or our cluster ID?"
                        if tls
                        else "a cluster ID mismatch, or a TLS-only port?"
                    )
                    raise PeerProtocolError(
                        f"{connection.address} closed the connection during the handshake "
                        f"({suspects} its log says)"
                    ) from None
                except ssl.SSLError as error:  # TLS 1.3: a refused certificate shows here
                    raise PeerProtocolError(
                        f"{connection.address} refused the TLS connection: "
                        f"{describe_tls_error(error)}"
                    ) from None
            if not _same_cluster(reply.cluster_id, self.cluster_id) or (
                reply.member_id != peer.member_id
            ):
                raise PeerProtocolError(
                    f"{connection.address} is member {_hex(reply.member_id)} of cluster "
                    f"{_hex(reply.cluster_id)}, expected member {_hex(peer.member_id)} of "
                    f"cluster {_hex(self.cluster_id)}"
                )
        except BaseException:
            self._close(connection)
            raise
        return connection

    def _close(self, connection: _Connection) -> None:
        self._connections.discard(connection.writer)
        connection.writer.close()

    # --- Snapshots out ----------------------------------------------------------------

    async def send_snapshot(self, msg: Message, path: str) -> bool:
        """Stream ``msg`` (a SNAP) and the file at ``path`` to ``msg.to``; raises nothing.

        True once the receiver has the file fsynced (for ``report_snapshot``; Raft learns
        of the install from the follower's APP_RESP). Any failure calls
        on_unreachable(msg.to) and returns False. One snapshot at a time per peer."""
        assert msg.type is MessageType.SNAP and msg.snapshot is not None, msg.type
        peer = self._peers.get(msg.to)
        if peer is None:
            self.stats.dropped_unknown_peer += 1
            _log.warning("not sending a snapshot to unknown member %s", _hex(msg.to))
            self._report_unreachable(msg.to)
            return False
        if peer.snapshot_in_flight:
            _log.warning("a snapshot to member %s is already on its way", _hex(msg.to))
            self._report_unreachable(msg.to)
            return False
        peer.snapshot_in_flight = True
        try:
            size_bytes = await self._stream_snapshot(peer, msg, path)
        except (*_CONNECTION_ERRORS, PeerProtocolError, ValueError) as error:
            if not self._stopped:
                _log.warning("sending a snapshot to member %s failed: %r", _hex(msg.to), error)
            self._report_unreachable(msg.to)
            return False
        finally:
            peer.snapshot_in_flight = False
        _log.info("sent a snapshot of %d bytes to member %s", size_bytes, _hex(msg.to))
        return True

    async def _stream_snapshot(self, peer: _Peer, msg: Message, path: str) -> int:
        with open(path, "rb") as file:
            size_bytes = os.fstat(file.fileno()).st_size
            if size_bytes > limits.SNAPSHOT_MAX_BYTES:
                raise ValueError(f"{path} has {size_bytes} bytes, over SNAPSHOT_MAX_BYTES")
            begin = _U64.pack(size_bytes) + encode_message(msg)
            connection = await self._dial(peer, ConnectionKind.SNAPSHOT)
            try:
                connection.writer.write(encode_frame(FrameKind.SNAPSHOT_BEGIN, begin))
                await self._write_file_chunks(connection, file, size_bytes)
                async with asyncio.timeout(limits.PEER_SNAPSHOT_ACK_TIMEOUT_MS / 1000):
                    kind, _ = await read_frame(connection.reader)
                if kind is not FrameKind.SNAPSHOT_ACK:
                    raise PeerProtocolError(f"expected a snapshot ack, got {kind.name}")
            finally:
                self._close(connection)
        return size_bytes

    async def _write_file_chunks(
        self, connection: _Connection, file: BinaryIO, size_bytes: int
    ) -> None:
        sent_bytes = 0
        while chunk := await asyncio.to_thread(file.read, limits.SNAPSHOT_CHUNK_BYTES):
            sent_bytes += len(chunk)
            if sent_bytes > size_bytes:
                raise ValueError("the snapshot file grew while it was being sent")
            connection.writer.writelines((frame_header(FrameKind.SNAPSHOT_CHUNK, chunk), chunk))
            async with asyncio.timeout(limits.PEER_IO_TIMEOUT_MS / 1000):
                await connection.writer.drain()
        if sent_bytes != size_bytes:
            raise ValueError("the snapshot file shrank while it was being sent")

    # --- Requests out -------------------------------------------------------------------

    async def request(self, member_id: int, payload: bytes, timeout_s: float) -> bytes:
        """Send ``payload`` to the peer's on_request and return its reply.

        PeerUnavailableError on an unknown peer, a connection failure or the timeout;
        PeerRequestFailedError (a subclass) if the peer's handler failed."""
        if len(payload) > limits.PEER_REQUEST_MAX_BYTES:
            raise ValueError(
                f"request of {len(payload)} bytes exceeds {limits.PEER_REQUEST_MAX_BYTES}"
            )
        peer = self._peers.get(member_id)
        if peer is None or self._server is None or self._stopped:
            raise PeerUnavailableError(f"member {_hex(member_id)} is not a reachable peer")
        try:
            async with asyncio.timeout(timeout_s):
                return await self._request_once(peer, payload)
        except TimeoutError:
            raise PeerUnavailableError(
                f"member {_hex(member_id)} did not answer within {timeout_s} s"
            ) from None
        except (*_CONNECTION_ERRORS, PeerProtocolError) as error:
            raise PeerUnavailableError(f"member {_hex(member_id)}: {error!r}") from error

    async def _request_once(self, peer: _Peer, payload: bytes) -> bytes:
        channel = peer.requests
        connection = await self._request_connection(peer)
        if len(channel.pending) >= limits.PEER_MAX_PENDING_REQUESTS:
            raise PeerUnavailableError(f"too many requests pending at {_hex(peer.member_id)}")
        request_id = channel.take_request_id()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        channel.pending[request_id] = future
        try:
            connection.writer.write(
                encode_frame(FrameKind.REQUEST, _U64.pack(request_id) + payload)
            )
            await connection.writer.drain()
            return await future
        finally:
            channel.pending.pop(request_id, None)

    async def _request_connection(self, peer: _Peer) -> _Connection:
        channel = peer.requests
        async with channel.connecting:
            if channel.connection is None:
                connection = await self._dial(peer, ConnectionKind.REQUEST)
                channel.connection = connection
                channel.reader_task = asyncio.create_task(
                    self._read_responses(peer, channel, connection)
                )
            return channel.connection

    async def _read_responses(
        self, peer: _Peer, channel: _RequestChannel, connection: _Connection
    ) -> None:
        reason = "the request connection closed"
        try:
            while True:
                kind, payload = await read_frame(connection.reader)
                if kind not in (FrameKind.RESPONSE, FrameKind.REQUEST_FAILED):
                    raise PeerProtocolError(f"unexpected {kind.name} frame on a request connection")
                if len(payload) < _U64.size:
                    raise PeerProtocolError("a response without a request id")
                (request_id,) = _U64.unpack_from(payload)
                future = channel.pending.get(request_id)
                if future is None or future.done():
                    continue  # its caller timed out
                body = payload[_U64.size :]
                if kind is FrameKind.RESPONSE:
                    future.set_result(body)
                else:
                    text = body.decode("utf-8", "replace")
                    failure = f"member {_hex(peer.member_id)} failed the request: {text}"
                    future.set_exception(PeerRequestFailedError(failure))
        except (*_CONNECTION_ERRORS, PeerProtocolError) as error:
            reason = f"request connection to member {_hex(peer.member_id)} lost: {error!r}"
        finally:
            if channel.connection is connection:
                channel.reader_task = None  # this task; close() must not cancel it
                channel.close(reason)
            self._close(connection)

    # --- Inbound ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection; whatever happens, only this one is closed."""
        task = asyncio.current_task()
        assert task is not None
        self._inbound_tasks.add(task)
        self._connections.add(writer)
        self._inbound_connections.add(writer)
        address = _address_of(writer)
        try:
            if len(self._inbound_tasks) > limits.PEER_MAX_INBOUND_CONNECTIONS:
                _log.warning("peer %s: too many connections; closing this one", address)
                return
            await self._serve(reader, writer, address)
        except PeerProtocolError as error:
            self.stats.bad_frames += 1
            _log.warning("peer %s: %s; closing the connection", address, error)
        except _CONNECTION_ERRORS as error:
            _log.debug("peer %s: connection ended: %r", address, error)
        except asyncio.CancelledError:
            # stop() ends this task, which is its own top level. Ending cancelled would make
            # asyncio's done-callback for connection handlers log an error.
            assert self._stopped
        except Exception:
            _log.exception("peer %s: unexpected error; closing the connection", address)
        finally:
            self._connections.discard(writer)
            self._inbound_connections.discard(writer)
            writer.close()
            self._inbound_tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        hello = await self._read_handshake(reader)
        if not _same_cluster(hello.cluster_id, self.cluster_id):
            raise PeerProtocolError(
                f"cluster ID mismatch: local {_hex(self.cluster_id)}, "
                f"remote {_hex(hello.cluster_id)} (member {_hex(hello.member_id)})"
            )
        writer.write(encode_handshake(self.cluster_id, self.member_id, hello.kind))
        match hello.kind:
            case ConnectionKind.STREAM:
                await self._serve_stream(reader, writer, hello.member_id)
            case ConnectionKind.SNAPSHOT:
                await self._serve_snapshot(reader, writer, address)
            case ConnectionKind.REQUEST:
                await self._serve_requests(reader, writer, hello.member_id)

    @staticmethod
    async def _read_handshake(reader: asyncio.StreamReader) -> Handshake:
        try:
            async with asyncio.timeout(limits.PEER_HANDSHAKE_TIMEOUT_MS / 1000):
                data = await reader.readexactly(_HANDSHAKE.size)
        except TimeoutError:
            raise PeerProtocolError(
                f"no handshake within {limits.PEER_HANDSHAKE_TIMEOUT_MS} ms"
            ) from None
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise  # a connection that said nothing, e.g. a port probe
            raise PeerProtocolError(
                f"connection closed after {len(error.partial)} bytes of a handshake "
                f"({bytes(error.partial[:8])!r}...)"
            ) from None
        return decode_handshake(data)

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, member_id: int
    ) -> None:
        """Receive a member's MESSAGE frames until the stream ends. After the handshake the
        connection's protocol becomes a ``_StreamReceiver``, which parses frames and hands
        their messages over in ``data_received`` itself: through the StreamReader, each
        message cost a loop turn and a task step more before it reached the inbox, on both
        the follower's append and the leader's acknowledgement of every write
        (docs/performance.md, change 12)."""
        if reader.at_eof() or writer.transport.is_closing():
            return
        previous = self._inbound_streams.get(member_id)
        if previous is not None:
            previous.close()  # the member reconnected; its old stream is dead or dying
        self._inbound_streams[member_id] = writer
        received_bytes = metrics.PEER_RECEIVED_BYTES.labels(_hex(member_id))
        receiver = _StreamReceiver(self._deliver, received_bytes.inc)
        # The dialer waits for our handshake before it writes a frame, so the reader holds
        # nothing more; whatever it does hold (and its end, if that came too) goes to the
        # receiver first all the same. StreamReader has no public way to hand these over.
        early: bytearray = reader._buffer  # type: ignore[attr-defined]
        ended: bool = reader._eof  # type: ignore[attr-defined]
        writer.transport.set_protocol(receiver)
        receiver.connection_made(writer.transport)
        try:
            if early:
                receiver.data_received(bytes(early))
                early.clear()
            if ended:
                writer.transport.close()  # the receiver's connection_lost ends the wait
            await receiver.closed
        finally:
            if self._inbound_streams.get(member_id) is writer:
                del self._inbound_streams[member_id]

    def _deliver(self, msg: Message) -> None:
        if msg.to != self.member_id:
            self.stats.dropped_wrong_member += 1
            _log.debug("dropping %s addressed to member %s", msg.type.name, _hex(msg.to))
            return
        self.stats.received += 1
        self._on_message(msg)

    # --- Snapshots in -----------------------------------------------------------------

    async def _serve_snapshot(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        if self._inbound_snapshots >= limits.PEER_MAX_INBOUND_SNAPSHOTS:
            _log.warning("peer %s: too many incoming snapshots; refusing this one", address)
            return
        self._inbound_snapshots += 1
        try:
            msg, size_bytes = await self._read_snapshot_begin(reader)
            if msg.to != self.member_id:
                self.stats.dropped_wrong_member += 1
                _log.warning("peer %s: a snapshot for member %s, not us", address, _hex(msg.to))
                return
            path = await self._receive_snapshot_file(reader, size_bytes)
            try:
                writer.write(encode_frame(FrameKind.SNAPSHOT_ACK, b""))
                async with asyncio.timeout(limits.PEER_IO_TIMEOUT_MS / 1000):
                    await writer.drain()
            except BaseException:
                _remove_quietly(path)
                raise
        finally:
            self._inbound_snapshots -= 1
        _log.info("peer %s: received a snapshot of %d bytes", address, size_bytes)
        self.stats.received += 1
        await self._hand_over_snapshot(msg, path)

    @staticmethod
    async def _read_snapshot_begin(reader: asyncio.StreamReader) -> tuple[Message, int]:
        async with asyncio.timeout(limits.PEER_IO_TIMEOUT_MS / 1000):
            kind, payload = await read_frame(reader)
        if kind is not FrameKind.SNAPSHOT_BEGIN or len(payload) < _U64.size:
            raise PeerProtocolError(f"a snapshot connection began with {kind.name}")
        (size_bytes,) = _U64.unpack_from(payload)
        if size_bytes > limits.SNAPSHOT_MAX_BYTES:
            raise PeerProtocolError(f"snapshot of {size_bytes} bytes exceeds the limit")
        msg = _decode(payload[_U64.size :])
        if msg.type is not MessageType.SNAP or msg.snapshot is None:
            raise PeerProtocolError(f"a snapshot connection carried {msg.type.name}")
        return msg, size_bytes

    async def _receive_snapshot_file(self, reader: asyncio.StreamReader, size_bytes: int) -> str:
        """The path of a new fsynced file holding the next ``size_bytes`` streamed bytes."""
        fd, path = tempfile.mkstemp(
            prefix=INCOMING_SNAPSHOT_PREFIX, suffix=INCOMING_SNAPSHOT_SUFFIX, dir=self._snapshot_dir
        )
        try:
            with os.fdopen(fd, "wb") as file:
                received_bytes = 0
                while received_bytes < size_bytes:
                    async with asyncio.timeout(limits.PEER_IO_TIMEOUT_MS / 1000):
                        kind, chunk = await read_frame(reader)
                    if kind is not FrameKind.SNAPSHOT_CHUNK or not chunk:
                        raise PeerProtocolError(f"unexpected {kind.name} frame in a snapshot")
                    if received_bytes + len(chunk) > size_bytes:
                        raise PeerProtocolError("snapshot bytes beyond the announced size")
                    await asyncio.to_thread(file.write, chunk)
                    received_bytes += len(chunk)
                await asyncio.to_thread(_flush_and_fsync, file)
        except BaseException:
            _remove_quietly(path)
            raise
        return path

    async def _hand_over_snapshot(self, msg: Message, path: str) -> None:
        try:
            await self._on_snapshot(msg, path)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The callee failed before taking the file over; nobody else will use it.
            _log.exception("on_snapshot failed for %s", path)
            _remove_quietly(path)

    def _remove_stale_incoming_snapshots(self) -> None:
        # Left by a crash while receiving (or by a callee that never took its file over).
        for name in os.listdir(self._snapshot_dir):
            if name.startswith(INCOMING_SNAPSHOT_PREFIX) and name.endswith(
                INCOMING_SNAPSHOT_SUFFIX
            ):
                _log.warning("removing stale incoming snapshot %s", name)
                _remove_quietly(os.path.join(self._snapshot_dir, name))

    # --- Requests in ------------------------------------------------------------------

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, member_id: int
    ) -> None:
        slots = asyncio.Semaphore(limits.PEER_MAX_PENDING_REQUESTS)
        handlers: set[asyncio.Task[None]] = set()
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind is not FrameKind.REQUEST or len(payload) < _U64.size:
                    raise PeerProtocolError(f"unexpected {kind.name} frame on a request connection")
                if len(payload) - _U64.size > limits.PEER_REQUEST_MAX_BYTES:
                    raise PeerProtocolError(f"request of {len(payload)} bytes exceeds the limit")
                (request_id,) = _U64.unpack_from(payload)
                await slots.acquire()  # at the limit, stop reading: the requester waits
                handler = asyncio.create_task(
                    self._answer(writer, member_id, request_id, payload[_U64.size :], slots)
                )
                handlers.add(handler)
                handler.add_done_callback(handlers.discard)
        finally:
            for handler in list(handlers):
                handler.cancel()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        member_id: int,
        request_id: int,
        body: bytes,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            try:
                reply = await self._on_request(member_id, body)
                if len(reply) > limits.PEER_REQUEST_MAX_BYTES:
                    raise ValueError(f"reply of {len(reply)} bytes exceeds the limit")
                frame = encode_frame(FrameKind.RESPONSE, _U64.pack(request_id) + reply)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log.warning(
                    "request from member %s failed: %r", _hex(member_id), error, exc_info=True
                )
                text = repr(error).encode()[: limits.PEER_REQUEST_ERROR_TEXT_MAX_BYTES]
                frame = encode_frame(FrameKind.REQUEST_FAILED, _U64.pack(request_id) + text)
            if writer.is_closing():
                return
            writer.write(frame)
            with contextlib.suppress(*_CONNECTION_ERRORS):
                async with asyncio.timeout(limits.PEER_IO_TIMEOUT_MS / 1000):
                    await writer.drain()
        finally:
            slots.release()


async def _open_peer_connection(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    tls_handshake_timeout_s: float | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP (or, with ``context``, TLS) connection to a peer's listener; the caller bounds
    the whole of it with its own timeout."""
    return await asyncio.open_connection(
        host,
        port,
        limit=limits.PEER_READ_BUFFER_BYTES,
        ssl=context,
        server_hostname=host if context is not None else None,
        ssl_handshake_timeout=tls_handshake_timeout_s if context is not None else None,
    )


async def request_at(
    url: str, payload: bytes, *, timeout_s: float, dial_tls: ssl.SSLContext | None
) -> bytes:
    """One request to whichever member listens at the peer URL ``url``, for a caller with no
    member id yet (a member joining an existing cluster asks for the member list): a
    REQUEST connection whose handshake names member 0 of cluster 0 (which every listener
    accepts: ``_same_cluster``), one REQUEST frame, its answer, then the connection closes.

    PeerUnavailableError on a refused or broken connection or the timeout; PeerRefusedError
    (a subclass) for a TLS or protocol failure; PeerRequestFailedError (another) if the
    member's handler failed."""
    assert len(payload) <= limits.PEER_REQUEST_MAX_BYTES, len(payload)
    host, port, tls = parse_peer_address(url)
    if tls and dial_tls is None:
        raise PeerRefusedError(f"{url}: https needs peer TLS (--peer-cert-file)")
    context = dial_tls if tls else None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await _open_peer_connection(host, port, context)
            writer.write(encode_handshake(0, 0, ConnectionKind.REQUEST))
            writer.write(encode_frame(FrameKind.REQUEST, _U64.pack(1) + payload))
            await writer.drain()
            try:
                decode_handshake(await reader.readexactly(_HANDSHAKE.size))
            except asyncio.IncompleteReadError:
                suspects = "our TLS certificate" if tls else "plaintext on its TLS-only port"
                raise PeerProtocolError(
                    f"closed the connection during the handshake (did it refuse {suspects}? "
                    "its log says)"
                ) from None
            kind, body = await read_frame(reader)
    except TimeoutError:
        raise PeerUnavailableError(f"{url} did not answer within {timeout_s} s") from None
    except ssl.SSLError as error:
        raise PeerRefusedError(f"{url}: TLS failed: {describe_tls_error(error)}") from None
    except PeerProtocolError as error:
        raise PeerRefusedError(f"{url}: {error}") from None
    except _CONNECTION_ERRORS as error:
        raise PeerUnavailableError(f"{url}: {error!r}") from error
    finally:
        if writer is not None:
            writer.close()
    if kind is FrameKind.REQUEST_FAILED:
        text = body[_U64.size :].decode("utf-8", "replace")
        raise PeerRequestFailedError(f"{url} failed the request: {text}")
    if kind is not FrameKind.RESPONSE or len(body) < _U64.size:
        raise PeerRefusedError(f"{url}: unexpected {kind.name} frame answering a request")
    return body[_U64.size :]


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
