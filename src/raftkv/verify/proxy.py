"""Network faults between server processes on 127.0.0.1, with a userspace TCP proxy.

The fallback of verify/network.py when network namespaces cannot be used (not root): the
same fault methods, carried out by a proxy in front of every member's peer port::

    member i --> front of host j (127.0.0.1:<front port>, this proxy) --> member j's peer port

``front(host, port)`` opens a listener that forwards to a member's real peer port. Members
listen on their real peer ports and advertise the front ports as their peer URLs, so every
member-to-member connection passes through the proxy. Clients connect to members directly:
as in netns mode, the runner always reaches every member.

Who is the sender? On loopback every connection comes from 127.0.0.1, so the proxy reads
the start of each connection (at most PROXY_SNIFF_MAX_BYTES, or PROXY_SNIFF_TIMEOUT_MS) to
learn which member opened it:

- raftkv: the peer handshake (server/transport.py) carries the dialer's member id;
- etcd 3.5: rafthttp's requests carry ``X-Server-From: <member id in hex>``. A keep-alive
  connection carries the requests of one process, so one id names the sender of all of
  them. etcd's prober shares the pipeline's connection pool and sends no such header, so
  an HTTP connection whose first request named no sender is scanned on for the header,
  and is identified by the first request that has one.

Member ids map to hosts through ``identify(member_id, host)``. The proxy also learns by
itself which member is behind each front: from a raftkv listener's reply handshake and
from the ``X-Raft-To`` header of etcd's stream requests (``member_hosts`` shows the map; an
``identify`` wins over what was learned). A connection whose sender is not (yet) on a known
host is never faulted. The map is looked up at every fault decision, so an identification
made after a connection opened applies to it from then on.

Faults act per direction src -> dst: on the bytes of a connection that src opened to dst's
front (its requests) and on the bytes dst sends back on a connection that src opened (its
replies). A connection from i to j thus carries i -> j and j -> i traffic.

- ``drop(src, dst)``: the proxy stops forwarding that direction. It holds what it had read
  and reads no more, so TCP backpressure stalls the sender, like packets silently lost: no
  reset, no error. TCP needs both directions, so a one-way drop stalls the connection's
  exchanges too, as a real one-way loss does. On ``undrop``/``heal`` the held bytes are
  delivered, which is what TCP's retransmission achieves after a real partition heals.
- ``slow(index, rate_kbit)``: every byte host ``index`` sends to another host, on the
  connections it opened and on those opened to it, passes a token bucket of that rate
  (one bucket per host, PROXY_SLOW_BURST_BYTES deep), so big messages queue.
- ``lossy(index, loss_percent)``: a TCP stream cannot lose bytes; a lost segment costs TCP a
  retransmission stall. So each piece (PROXY_PIECE_BYTES at most) that host ``index``
  sends is, with probability loss_percent, delayed by PROXY_LOSS_STALL_MS.

Limits, where this differs from real packet loss in network namespaces:

- ``connect()`` to a front always succeeds, even across a partition (the proxy accepts);
  the stall comes right after, on the handshake or the first request. In netns mode the
  SYN is lost and connect times out. A front whose member is down accepts and then closes
  the connection (netns: connection refused).
- A sender the proxy cannot name is never faulted: etcd's requests without X-Server-From
  (``/raft/probing``, ``/version``, ``/members``, lease renewals and lease TTL queries a
  follower forwards to the leader over ``/leases``) pass a partition, as does any connection
  whose sender id was never identified or learned. Unidentified HTTP connections are
  scanned for ``X-Server-From`` in their raw bytes; a body that held that very text on an
  unidentified connection could misname its sender (etcd sends no such body).
- Held bytes are delivered on heal even if their sender gave up on the connection in the
  meantime (a real network would lose an aborted connection's unacknowledged bytes).
- Bytes the proxy already wrote (its write buffer, the receiver's socket buffer) when a
  drop starts are delivered: they were "in flight".
- Loss is a delay only: no reordering, no duplicates, no congestion-window collapse.
- A slow link queues without bound in time (but not in bytes: backpressure), where netns
  mode tail-drops past NETWORK_SLOW_QUEUE_PACKETS.
- A member's connections to its own front are never faulted.
- The proxy is Python in the runner's process (its own thread and event loop): it adds
  latency to all peer traffic under load, and it shares the GIL with the runner.
- IPv4 loopback only.

Bounds: PROXY_MAX_CONNECTIONS connections (one more is closed at accept); per direction
at most PROXY_MAX_HELD_BYTES_PER_DIRECTION held (reader buffer, one chunk, write buffer),
beyond which the proxy stops reading.

Every public method is synchronous and thread-safe; the proxy runs an asyncio loop in a
daemon thread of its own. Do not call it from that thread (there is no reason to).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from raftkv.limits import (
    PROXY_CALL_TIMEOUT_MS,
    PROXY_CHUNK_BYTES,
    PROXY_CONNECT_TIMEOUT_MS,
    PROXY_HEADER_VALUE_MAX_BYTES,
    PROXY_LISTEN_BACKLOG,
    PROXY_LOSS_STALL_MS,
    PROXY_MAX_CONNECTIONS,
    PROXY_MAX_HOSTS,
    PROXY_PIECE_BYTES,
    PROXY_SLOW_BURST_BYTES,
    PROXY_SNIFF_MAX_BYTES,
    PROXY_SNIFF_TIMEOUT_MS,
    PROXY_WRITE_BUFFER_BYTES,
)
from raftkv.server.transport import _HANDSHAKE, MAGIC, PeerProtocolError, decode_handshake
from raftkv.verify.network import partition_pairs

LOOPBACK = "127.0.0.1"
SERVER_FROM_HEADER = b"x-server-from"  # etcd rafthttp: the sending member's id, in hex
RAFT_TO_HEADER = b"x-raft-to"  # etcd rafthttp streams: the receiving member's id, in hex

_SERVER_FROM_LINE = b"\r\n" + SERVER_FROM_HEADER + b":"
_HEADER_BLOCK_END = b"\r\n\r\n"
_HTTP_REQUEST_START = re.compile(rb"[A-Z]{1,16}(?: |$)")  # a method token: b"POST /raft"
_MEMBER_ID_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")  # a uint64, as etcd's types.ID prints it

_T = TypeVar("_T")


class ProxyClosedError(RuntimeError):
    """The proxy network is closed: it fronts nothing and injects no faults."""


class WireProtocol(enum.Enum):
    RAFTKV = "raftkv"
    HTTP = "http"
    OTHER = "other"


@dataclass(frozen=True)
class Sniffed:
    """What the first bytes of a connection tell: its protocol, the member that opened it,
    and the member it is meant for when it says so (etcd streams)."""

    protocol: WireProtocol
    sender_id: int | None = None
    receiver_id: int | None = None


@dataclass(frozen=True)
class ProxiedConnection:
    """One connection through a front, as the proxy sees it now (for diagnostics)."""

    front_host: int
    protocol: WireProtocol
    sender_id: int | None
    sender_host: int | None  # None: unknown sender, never faulted
    bytes_to_front_host: int  # delivered so far
    bytes_from_front_host: int


# --- Who is the sender ------------------------------------------------------------------


def sniff(data: bytes, *, final: bool) -> Sniffed | None:
    """Classify the first bytes of a connection; None means more bytes are needed.

    ``final``: no more bytes will be read (end of stream, timeout, or enough read), so
    the answer is never None.
    """
    if len(data) < len(MAGIC) and MAGIC.startswith(data) and not final:
        return None
    if data.startswith(MAGIC):
        if len(data) < _HANDSHAKE.size:
            return Sniffed(WireProtocol.OTHER) if final else None
        try:
            hello = decode_handshake(data[: _HANDSHAKE.size])
        except PeerProtocolError:
            return Sniffed(WireProtocol.OTHER)
        return Sniffed(WireProtocol.RAFTKV, sender_id=hello.member_id)
    if not _HTTP_REQUEST_START.match(data):
        return Sniffed(WireProtocol.OTHER)
    end = data.find(_HEADER_BLOCK_END)
    if end < 0:
        return Sniffed(WireProtocol.HTTP) if final else None
    headers = _header_values(data[:end])
    return Sniffed(
        WireProtocol.HTTP,
        sender_id=_member_id(headers.get(SERVER_FROM_HEADER)),
        receiver_id=_member_id(headers.get(RAFT_TO_HEADER)),
    )


def _final_sniff(data: bytes) -> Sniffed:
    verdict = sniff(data, final=True)
    assert verdict is not None
    return verdict


def _header_values(block: bytes) -> dict[bytes, bytes]:
    """An HTTP header block (request line first) as lower-case name -> first value."""
    values: dict[bytes, bytes] = {}
    for line in block.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            values.setdefault(name.strip().lower(), value.strip())
    return values


def _member_id(value: bytes | None) -> int | None:
    if value is None or not _MEMBER_ID_HEX.fullmatch(value):
        return None
    return int(value, 16)


class SenderScanner:
    """Finds the first ``X-Server-From`` header line with a member id in an HTTP byte
    stream fed in pieces of any size (a line split across two reads included). It keeps
    at most one header line's worth of bytes between feeds."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> int | None:
        buffer = self._carry + data
        lowered = buffer.lower()
        start = 0
        while (at := lowered.find(_SERVER_FROM_LINE, start)) >= 0:
            value_start = at + len(_SERVER_FROM_LINE)
            line_end = buffer.find(b"\r\n", value_start)
            if line_end < 0:
                if len(buffer) - value_start <= PROXY_HEADER_VALUE_MAX_BYTES:
                    self._carry = buffer[at:]  # the rest of the line comes with the next read
                    return None
                start = value_start  # too long for a member id: not our header
                continue
            member_id = _member_id(buffer[value_start:line_end].strip())
            if member_id is not None:
                self._carry = b""
                return member_id
            start = line_end
        # Enough to find the header name if the next read completes it.
        self._carry = buffer[-(len(_SERVER_FROM_LINE) - 1) :]
        return None


# --- Fault state ----------------------------------------------------------------------------


class _TokenBucket:
    """A slow host's rate: takers go into debt and wait until it is paid off, so
    concurrent senders queue behind each other in the order they asked."""

    def __init__(self, rate_kbit: int, now_s: float) -> None:
        self.rate_bytes_per_s = rate_kbit * 1000 / 8
        self._tokens = float(PROXY_SLOW_BURST_BYTES)
        self._updated_s = now_s

    def _refill(self, now_s: float) -> None:
        earned = (now_s - self._updated_s) * self.rate_bytes_per_s
        self._tokens = min(float(PROXY_SLOW_BURST_BYTES), self._tokens + earned)
        self._updated_s = now_s

    def set_rate(self, rate_kbit: int, now_s: float) -> None:
        self._refill(now_s)
        self.rate_bytes_per_s = rate_kbit * 1000 / 8

    def reserve(self, size_bytes: int, now_s: float) -> float:
        """Takes ``size_bytes`` of tokens; returns the time (monotonic s) they may be sent."""
        self._refill(now_s)
        self._tokens -= size_bytes
        return now_s + max(0.0, -self._tokens / self.rate_bytes_per_s)


@dataclass
class _Faults:
    dropped: set[tuple[int, int]] = field(default_factory=set)
    slow: dict[int, _TokenBucket] = field(default_factory=dict)
    loss_percent: dict[int, float] = field(default_factory=dict)


@dataclass(eq=False)
class _Connection:
    front_host: int
    protocol: WireProtocol = WireProtocol.OTHER
    sender_id: int | None = None
    scanner: SenderScanner | None = None  # an HTTP connection whose sender is not named yet
    reply_head: bytes | None = None  # raftkv: the listener's reply handshake, until complete
    bytes_to_front_host: int = 0
    bytes_from_front_host: int = 0


async def _wait_for_change(changed: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await changed.wait()


async def _invoke(function: Callable[[], _T]) -> _T:
    return function()


def _close_writer(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    if abort:
        writer.transport.abort()
    else:
        writer.close()


# --- The network ----------------------------------------------------------------------------


class ProxyNetwork:
    """Hosts on 127.0.0.1 whose peer traffic passes through fronts of this proxy; the fault
    methods mirror NetnsNetwork's, so the nemesis drives either. Fault methods are
    idempotent and add to the faults in place; ``heal`` undoes them all."""

    def __init__(self, *, seed: int | None = None) -> None:
        """No hosts yet. ``seed`` makes the loss draws repeatable."""
        self._rng = random.Random(seed)
        self.size = 0  # hosts, including those of removed members (only add_host changes it)
        self._faults = _Faults()
        self._identified: dict[int, int] = {}  # member id -> host, from identify()
        self._learned: dict[int, int] = {}  # member id -> host, seen behind a front
        self._servers: list[asyncio.Server] = []
        self._connections: dict[_Connection, asyncio.Task[Any]] = {}
        # Set and replaced whenever a fault or the id map changes: wakes held directions.
        self._changed = asyncio.Event()
        self._lock = threading.Lock()  # serialises calls into the loop with close()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="raftkv-verify-proxy", daemon=True
        )
        self._thread.start()

    # Hosts and fronts.

    def add_host(self) -> int:
        """A new host; returns its index. Faults in place stay."""
        with self._lock:
            self._check_open()
            assert self.size < PROXY_MAX_HOSTS, self.size
            self.size += 1
            return self.size - 1

    def host_address(self, index: int) -> str:
        self._check_host(index)
        return LOOPBACK

    def command_prefix(self, index: int) -> list[str]:
        """Nothing: every member runs on this machine's loopback."""
        self._check_host(index)
        return []

    def front(self, host: int, target_port: int) -> int:
        """Starts a listener on 127.0.0.1:<a port the kernel picks> that forwards to
        127.0.0.1:target_port; connections to it go to ``host``. Returns the front port,
        which the member on ``host`` advertises in its peer URL."""
        self._check_host(host)
        assert 0 < target_port < 65536, target_port
        return self._submit(self._start_front(host, target_port))

    async def _start_front(self, host: int, target_port: int) -> int:
        server = await asyncio.start_server(
            functools.partial(self._serve, host, target_port),
            LOOPBACK,
            0,
            limit=PROXY_CHUNK_BYTES,
            backlog=PROXY_LISTEN_BACKLOG,
        )
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def identify(self, member_id: int, host: int) -> None:
        """Connections opened by member ``member_id`` come from ``host`` (overrides what
        the proxy learned by itself)."""
        self._check_host(host)
        assert member_id > 0, member_id
        self._call(lambda: self._set_identity(member_id, host))

    def _set_identity(self, member_id: int, host: int) -> None:
        self._identified[member_id] = host
        self._signal_change()

    def member_hosts(self) -> dict[int, int]:
        """member id -> host: what was identified, over what was learned behind fronts."""
        return self._call(lambda: {**self._learned, **self._identified})

    def connections(self) -> list[ProxiedConnection]:
        """The connections open through the fronts now."""
        return self._call(lambda: [self._describe(conn) for conn in self._connections])

    def _describe(self, conn: _Connection) -> ProxiedConnection:
        return ProxiedConnection(
            front_host=conn.front_host,
            protocol=conn.protocol,
            sender_id=conn.sender_id,
            sender_host=self._host_of(conn.sender_id),
            bytes_to_front_host=conn.bytes_to_front_host,
            bytes_from_front_host=conn.bytes_from_front_host,
        )

    # Faults.

    def partition(self, groups: Sequence[Collection[int]]) -> None:
        """Hosts in different groups cannot exchange bytes, in either direction.

        Every host must be in exactly one group. Adds to drops already in place.
        """
        for members in groups:
            for host in members:
                self._check_host(host)
        pairs = partition_pairs(groups, self.size)
        self._call(lambda: self._add_drops(pairs))

    def drop(self, src: int, dst: int) -> None:
        """Bytes from src to dst are held (one way; the connections between them stall)."""
        self._check_host(src)
        self._check_host(dst)
        assert src != dst, f"host {src} cannot be cut from itself"
        self._call(lambda: self._add_drops([(src, dst)]))

    def _add_drops(self, pairs: Sequence[tuple[int, int]]) -> None:
        self._faults.dropped.update(pairs)
        self._signal_change()

    def undrop(self, src: int, dst: int) -> None:
        """Bytes from src to dst flow again, those held first."""
        self._check_host(src)
        self._check_host(dst)
        self._call(lambda: self._remove_drop(src, dst))

    def _remove_drop(self, src: int, dst: int) -> None:
        self._faults.dropped.discard((src, dst))
        self._signal_change()

    def slow(self, index: int, rate_kbit: int) -> None:
        """Limits what host ``index`` sends to other hosts to rate_kbit (all its
        connections together)."""
        self._check_host(index)
        assert rate_kbit >= 1, rate_kbit
        self._call(lambda: self._set_slow(index, rate_kbit))

    def _set_slow(self, index: int, rate_kbit: int) -> None:
        bucket = self._faults.slow.get(index)
        if bucket is None:
            self._faults.slow[index] = _TokenBucket(rate_kbit, time.monotonic())
        else:
            bucket.set_rate(rate_kbit, time.monotonic())
        self._signal_change()

    def lossy(self, index: int, loss_percent: float) -> None:
        """Each piece host ``index`` sends to other hosts is, with probability
        loss_percent, delayed by PROXY_LOSS_STALL_MS (TCP's cost of a lost segment)."""
        self._check_host(index)
        assert 0 < loss_percent < 100, loss_percent
        self._call(lambda: self._set_loss(index, loss_percent))

    def _set_loss(self, index: int, loss_percent: float) -> None:
        self._faults.loss_percent[index] = loss_percent
        self._signal_change()

    def heal(self) -> None:
        """Removes every drop, slow link and loss; held bytes are delivered. What the proxy
        knows about member ids stays."""
        self._call(self._clear_faults)

    def _clear_faults(self) -> None:
        self._faults = _Faults()
        self._signal_change()

    # Teardown.

    def close(self) -> None:
        """Stops the fronts, closes every proxied connection and stops the proxy's thread.
        Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timeout_s = PROXY_CALL_TIMEOUT_MS / 1000
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout_s)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout_s)
                if not self._thread.is_alive():
                    self._loop.close()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        tasks = list(self._connections.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def __enter__(self) -> ProxyNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Calls into the loop.

    def _check_host(self, index: int) -> None:
        assert 0 <= index < self.size, f"no host {index} (the network has {self.size})"

    def _check_open(self) -> None:
        if self._closed:
            raise ProxyClosedError("the proxy network is closed")

    def _call(self, function: Callable[[], _T]) -> _T:
        """Runs ``function`` on the proxy's loop, where all its state lives."""
        with self._lock:
            self._check_open()
            return self._run_on_loop(_invoke(function))

    def _submit(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._closed:
                coroutine.close()
                raise ProxyClosedError("the proxy network is closed")
            return self._run_on_loop(coroutine)

    def _run_on_loop(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        assert threading.current_thread() is not self._thread, "called from the proxy's loop"
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(PROXY_CALL_TIMEOUT_MS / 1000)

    # On the loop: fault decisions.

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _host_of(self, member_id: int | None) -> int | None:
        if member_id is None:
            return None
        return self._identified.get(member_id, self._learned.get(member_id))

    def _learn(self, member_id: int, host: int) -> None:
        if self._learned.get(member_id) != host:
            self._learned[member_id] = host
            self._signal_change()

    def _route(self, conn: _Connection, toward_front: bool) -> tuple[int, int] | None:
        """(src, dst) of one direction of a connection; None if it is never faulted."""
        sender_host = self._host_of(conn.sender_id)
        if sender_host is None or sender_host == conn.front_host:
            return None
        if toward_front:
            return sender_host, conn.front_host
        return conn.front_host, sender_host

    async def _admit(self, conn: _Connection, toward_front: bool, size_bytes: int) -> None:
        """Waits until ``size_bytes`` (0: the end of the stream) may go on in this
        direction: while it is dropped, for a loss stall, and for a slow link's tokens.
        Re-decides whenever the faults or the id map change."""
        stall_until_s: float | None = None  # a loss draw is made once per piece
        send_at_s: float | None = None  # tokens are reserved once per piece
        while True:
            changed = self._changed
            route = self._route(conn, toward_front)
            if route is None:
                return
            if route in self._faults.dropped:
                await changed.wait()
                continue
            src = route[0]
            now_s = time.monotonic()
            wait_until_s = now_s
            loss_percent = self._faults.loss_percent.get(src)
            if loss_percent is not None and size_bytes > 0:
                if stall_until_s is None:
                    lost = self._rng.random() * 100 < loss_percent
                    stall_until_s = now_s + (PROXY_LOSS_STALL_MS / 1000 if lost else 0.0)
                wait_until_s = max(wait_until_s, stall_until_s)
            bucket = self._faults.slow.get(src)
            if bucket is not None and size_bytes > 0:
                if send_at_s is None:
                    send_at_s = bucket.reserve(size_bytes, now_s)
                wait_until_s = max(wait_until_s, send_at_s)
            if wait_until_s <= now_s:
                return
            await _wait_for_change(changed, wait_until_s - now_s)

    # On the loop: connections.

    async def _serve(
        self,
        host: int,
        target_port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One connection to the front of ``host``: learn its sender, connect to the
        member, then pipe both directions through the faults."""
        task = asyncio.current_task()
        assert task is not None
        if self._closed or len(self._connections) >= PROXY_MAX_CONNECTIONS:
            writer.transport.abort()  # the dialer sees a closed connection and redials
            return
        conn = _Connection(front_host=host)
        self._connections[conn] = task
        upstream: asyncio.StreamWriter | None = None
        clean = False
        try:
            first = await self._identify_sender(conn, reader)
            try:
                async with asyncio.timeout(PROXY_CONNECT_TIMEOUT_MS / 1000):
                    upstream_reader, upstream = await asyncio.open_connection(
                        LOOPBACK, target_port, limit=PROXY_CHUNK_BYTES
                    )
            except (OSError, TimeoutError):
                return  # the member is down: the dialer sees the connection close
            for side in (writer, upstream):
                side.transport.set_write_buffer_limits(high=PROXY_WRITE_BUFFER_BYTES)
            clean = await _run_both(
                self._pump(conn, True, reader, upstream, first),
                self._pump(conn, False, upstream_reader, writer, b""),
            )
        except (OSError, EOFError):
            pass  # a side reset the connection: close the other side too
        finally:
            del self._connections[conn]
            _close_writer(writer, abort=not clean)
            if upstream is not None:
                _close_writer(upstream, abort=not clean)

    async def _identify_sender(self, conn: _Connection, reader: asyncio.StreamReader) -> bytes:
        """Reads the start of the connection until it names its sender (or cannot);
        returns the bytes read, which are still to be forwarded."""
        data = b""
        deadline_s = asyncio.get_running_loop().time() + PROXY_SNIFF_TIMEOUT_MS / 1000
        verdict = sniff(data, final=False)
        while verdict is None:
            try:
                async with asyncio.timeout_at(deadline_s):
                    chunk = await reader.read(PROXY_SNIFF_MAX_BYTES - len(data))
            except TimeoutError:
                chunk = b""
            if not chunk:
                verdict = _final_sniff(data)
                break
            data += chunk
            verdict = sniff(data, final=len(data) >= PROXY_SNIFF_MAX_BYTES)
        conn.protocol = verdict.protocol
        conn.sender_id = verdict.sender_id
        if verdict.receiver_id is not None:
            self._learn(verdict.receiver_id, conn.front_host)
        if verdict.protocol is WireProtocol.RAFTKV:
            conn.reply_head = b""
        if verdict.protocol is WireProtocol.HTTP and verdict.sender_id is None:
            conn.scanner = SenderScanner()
            self._observe_request(conn, data)
        return data

    def _observe_request(self, conn: _Connection, chunk: bytes) -> None:
        if conn.scanner is None:
            return
        sender_id = conn.scanner.feed(chunk)
        if sender_id is not None:
            conn.sender_id = sender_id
            conn.scanner = None

    def _observe_reply(self, conn: _Connection, chunk: bytes) -> None:
        """raftkv: the listener's reply handshake names the member behind the front."""
        if conn.reply_head is None:
            return
        head = conn.reply_head + chunk[: _HANDSHAKE.size - len(conn.reply_head)]
        if len(head) < _HANDSHAKE.size:
            conn.reply_head = head
            return
        conn.reply_head = None
        with contextlib.suppress(PeerProtocolError):
            self._learn(decode_handshake(head).member_id, conn.front_host)

    async def _pump(
        self,
        conn: _Connection,
        toward_front: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
    ) -> None:
        """Copies one direction, chunk by chunk, each piece admitted by the faults; the end
        of the stream is held like any byte."""
        if first:
            await self._forward(conn, toward_front, first, writer)
        while chunk := await reader.read(PROXY_CHUNK_BYTES):
            if toward_front:
                self._observe_request(conn, chunk)
            else:
                self._observe_reply(conn, chunk)
            await self._forward(conn, toward_front, chunk, writer)
        await self._admit(conn, toward_front, 0)
        if writer.can_write_eof():
            writer.write_eof()

    async def _forward(
        self, conn: _Connection, toward_front: bool, chunk: bytes, writer: asyncio.StreamWriter
    ) -> None:
        for offset in range(0, len(chunk), PROXY_PIECE_BYTES):
            piece = chunk[offset : offset + PROXY_PIECE_BYTES]
            await self._admit(conn, toward_front, len(piece))
            writer.write(piece)
            await writer.drain()  # stop reading while the other side does not keep up
            if toward_front:
                conn.bytes_to_front_host += len(piece)
            else:
                conn.bytes_from_front_host += len(piece)


async def _run_both(first: Coroutine[Any, Any, None], second: Coroutine[Any, Any, None]) -> bool:
    """Runs both directions until both end, or one fails (then the other is cancelled);
    returns whether both ended cleanly."""
    tasks = [asyncio.create_task(first), asyncio.create_task(second)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return all(not task.cancelled() and task.exception() is None for task in tasks)
