"""etcd's Watch service: one bidi stream carries many watches (``v3rpc/watch.go``).

Each stream has a reader task and a sender (the RPC's async generator):

* the reader turns create / cancel / progress requests into changes of the stream's
  watches and queues the control responses (created, canceled, progress);
* the sender sends the queued control responses first, then takes the events of one
  woken watcher (``Watcher.take``) and sends them (fragmented if the watch asked for it
  and they exceed the request limit), and periodically the progress notifications.

Ordering: a watch's "created" is queued before its watcher can have events, and the
sender always empties the control queue before taking events, so "created" comes first.
A progress response reports revision R only when every watcher concerned has had its
events up to R taken, and the sender finishes sending a taken batch before anything else.

Bounds: at most ``WATCH_MAX_WATCHERS_PER_STREAM`` watches; at most
``WATCH_CONTROL_QUEUE_MAX`` queued control responses (the reader waits for room, so a
client that floods requests is slowed by gRPC flow control); events stay in the hub's
per-watcher buffers until the sender takes them, and the sender takes only as fast as
gRPC accepts the writes, so a slow client makes its watchers fall behind in the hub
(bounded) instead of growing a queue here.

Differences from etcd are listed in docs/compatibility.md (a negative start revision,
unknown filters, the watcher limit, the id of a compacted watch).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import deque
from collections.abc import AsyncIterator

from raftkv import limits
from raftkv.api import authz, convert
from raftkv.api.errors import Context, requires_leader, stream
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.api.options import ApiOptions
from raftkv.server.errors import NoLeaderError
from raftkv.server.interface import NodeAPI
from raftkv.storage.errors import CompactedError
from raftkv.storage.mvcc.watchable import WatchBatch, Watcher, WatchEvent, WatchSpec

# etcd's clientv3.InvalidWatchID: a refused create, and a progress response for the stream.
INVALID_WATCH_ID = -1
# etcd's mvcc errors, sent as the cancel reason of a refused create.
WATCHER_RANGE_EMPTY = "mvcc: watcher range is empty"
WATCHER_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
TOO_MANY_WATCHERS = "raftkv: too many watchers on this stream (at most {limit})"
# etcd adds up to this fraction of the interval as jitter, so watchers created together
# do not get their notifications together.
PROGRESS_JITTER_FRACTION = 0.1
# etcd's monitorLeader: a stream opened with hasleader=true is canceled with "no leader"
# once the member has had no leader at this many checks in a row, one per interval.
LEADER_CHECK_INTERVAL_S = 1.0
LEADER_CHECKS_BEFORE_CANCEL = 3

_jitter = random.Random()


class _EventCache:
    """Protobuf events by the hub's event object. The hub makes one ``WatchEvent`` per
    change for every watcher it matches (``watchable._match``), so with N watchers on a
    prefix each change is converted once here, not N times. An entry keeps its event
    alive, so an id is not reused while it is cached; the oldest entries go first."""

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self._capacity = capacity
        self._entries: dict[int, tuple[WatchEvent, kv_pb2.Event]] = {}

    def converted(self, event: WatchEvent) -> kv_pb2.Event:
        entry = self._entries.get(id(event))
        if entry is not None and entry[0] is event:
            return entry[1]
        message = convert.event(event)
        if len(self._entries) >= self._capacity:
            del self._entries[next(iter(self._entries))]  # insertion order: the oldest
        self._entries[id(event)] = (event, message)
        return message


_events = _EventCache(limits.WATCH_EVENT_CACHE_ENTRIES)


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, node: NodeAPI, options: ApiOptions) -> None:
        self._node = node
        self._options = options

    @property
    def node(self) -> NodeAPI:
        return self._node

    @stream
    async def Watch(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: Context
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        watch_stream = WatchStream(
            self._node, self._options, requires_leader(context), auth_context=context
        )
        async for response in watch_stream.run(request_iterator):
            yield response


class _StreamWatch:
    """One watch of a stream: its id, its hub watcher and the per-watch options."""

    __slots__ = ("watch_id", "watcher", "progress_notify", "fragment", "progress_wanted")
    watcher: Watcher

    def __init__(self, watch_id: int, progress_notify: bool, fragment: bool) -> None:
        self.watch_id = watch_id
        self.progress_notify = progress_notify
        self.fragment = fragment
        # etcd skips the next periodic notification of a watch that just got events.
        self.progress_wanted = True


class WatchStream:
    """The state of one Watch RPC."""

    def __init__(
        self,
        node: NodeAPI,
        options: ApiOptions,
        monitor_leader: bool,
        auth_context: Context | None = None,
    ) -> None:
        self._node = node
        # The RPC's context: each create is checked against its token (authz).
        self._auth_context = auth_context
        self._hub = node.watch_hub
        self._options = options
        self._monitor_leader = monitor_leader
        self._fragment_limit_bytes = options.max_receive_message_bytes
        self._watches: dict[int, _StreamWatch] = {}
        self._next_watch_id = 0
        self._ready: dict[_StreamWatch, None] = {}  # woken watches, in wake order
        self._control: deque[rpc_pb2.WatchResponse] = deque()
        self._control_room = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._progress_due = False
        self._failure: Exception | None = None  # ends the stream with this error

    async def run(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest]
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        """The stream's responses until the RPC ends; then every watcher is canceled."""
        tasks = [asyncio.create_task(self._read(requests)), asyncio.create_task(self._tick())]
        try:
            while True:
                for response in self._next_responses():
                    yield response
                if self._failure is not None:
                    raise self._failure
                if self._nothing_to_send():
                    self._wakeup.clear()
                    await self._wakeup.wait()
        finally:
            for task in tasks:
                task.cancel()  # not awaited: this generator may be closing
            self._close()

    # --- Sender ----------------------------------------------------------------------

    def _nothing_to_send(self) -> bool:
        return (
            not self._control
            and not self._ready
            and not self._progress_due
            and self._failure is None
        )

    def _next_responses(self) -> list[rpc_pb2.WatchResponse]:
        """What to send next, in priority order: control, progress, one watcher's events."""
        if self._control:
            response = self._control.popleft()
            self._control_room.set()
            return [response]
        if self._progress_due:
            self._progress_due = False
            return self._progress_notifications()
        while self._ready:
            watch = next(iter(self._ready))
            del self._ready[watch]
            if self._watches.get(watch.watch_id) is watch:
                return self._take(watch)
        return []

    def _take(self, watch: _StreamWatch) -> list[rpc_pb2.WatchResponse]:
        batch = watch.watcher.take(limits.WATCH_RESPONSE_EVENTS_MAX)
        if batch is None:
            return []
        if watch.watcher.has_pending():
            self._ready[watch] = None  # behind the others: watches share the sender fairly
        if batch.compact_revision > 0:
            return [self._compacted(watch, batch)]
        if batch.events:
            watch.progress_wanted = False
        responses = self._event_responses(watch.watch_id, batch)
        if watch.fragment:
            return [
                piece
                for whole in responses
                for piece in fragments(whole, self._fragment_limit_bytes)
            ]
        return responses

    def _event_responses(self, watch_id: int, batch: WatchBatch) -> list[rpc_pb2.WatchResponse]:
        """The batch as one response, or split at revision boundaries into responses of
        at most WATCH_RESPONSE_MAX_BYTES (a larger single revision goes alone). Each
        carries the revision through which the watcher has had everything."""
        events = [_events.converted(event) for event in batch.events]
        whole = rpc_pb2.WatchResponse(
            header=self._header(batch.revision), watch_id=watch_id, events=events
        )
        if len(events) < 2 or whole.ByteSize() <= limits.WATCH_RESPONSE_MAX_BYTES:
            return [whole]
        parts = split_by_revision(events, limits.WATCH_RESPONSE_MAX_BYTES)
        responses = []
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            through = batch.revision if last else part[-1].kv.mod_revision
            responses.append(
                rpc_pb2.WatchResponse(header=self._header(through), watch_id=watch_id, events=part)
            )
        return responses

    def _compacted(self, watch: _StreamWatch, batch: WatchBatch) -> rpc_pb2.WatchResponse:
        """The watch's history is compacted: the hub canceled it; tell the client."""
        assert not batch.events and watch.watcher.canceled
        del self._watches[watch.watch_id]
        # etcd sends this response with header revision 0 (its mvcc response has none).
        return rpc_pb2.WatchResponse(
            header=self._header(0),
            watch_id=watch.watch_id,
            canceled=True,
            compact_revision=batch.compact_revision,
        )

    def _progress_notifications(self) -> list[rpc_pb2.WatchResponse]:
        """The periodic notifications of the progress_notify watches that are synced
        (etcd's RequestProgress per watch); a watch that got events since the last
        round is skipped once."""
        responses = []
        for watch in self._watches.values():
            if not watch.progress_notify:
                continue
            if watch.progress_wanted:
                revision = self._hub.progress_revision(watch.watcher)
                if revision is not None:
                    responses.append(
                        rpc_pb2.WatchResponse(
                            header=self._header(revision), watch_id=watch.watch_id
                        )
                    )
            watch.progress_wanted = True
        return responses

    # --- Reader ----------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[rpc_pb2.WatchRequest]) -> None:
        """Handle requests until the client closes its side. As in etcd the stream goes
        on after that: events are sent until the RPC is canceled."""
        try:
            async for request in requests:
                await self._wait_for_control_room()
                # No await from here to the append: the created watcher cannot have its
                # events sent before its "created".
                response = self._handle(request)
                if response is not None:
                    self._control.append(response)
                    self._wakeup.set()
        except Exception as error:  # the request stream failed: end the RPC with it
            self._failure = error
            self._wakeup.set()

    async def _wait_for_control_room(self) -> None:
        while len(self._control) >= limits.WATCH_CONTROL_QUEUE_MAX:
            self._control_room.clear()
            await self._control_room.wait()

    def _handle(self, request: rpc_pb2.WatchRequest) -> rpc_pb2.WatchResponse | None:
        match request.WhichOneof("request_union"):
            case "create_request":
                return self._create(request.create_request)
            case "cancel_request":
                return self._cancel(request.cancel_request.watch_id)
            case "progress_request":
                return self._progress_all()
        return None  # etcd ignores an empty request

    def _create(self, create: rpc_pb2.WatchCreateRequest) -> rpc_pb2.WatchResponse:
        refusal = self._refusal(create)
        if refusal is not None:
            return rpc_pb2.WatchResponse(
                header=self._header(),
                watch_id=INVALID_WATCH_ID,
                created=True,
                canceled=True,
                cancel_reason=refusal,
            )
        filters = set(create.filters)
        spec = WatchSpec(
            key=create.key or b"\0",  # etcd: an empty key is the smallest key
            range_end=create.range_end,
            start_revision=create.start_revision,
            filter_put=rpc_pb2.WatchCreateRequest.NOPUT in filters,
            filter_delete=rpc_pb2.WatchCreateRequest.NODELETE in filters,
            prev_kv=create.prev_kv,
        )
        watch_id = create.watch_id or self._auto_watch_id()
        watch = _StreamWatch(watch_id, create.progress_notify, create.fragment)
        # The header's revision R and the watcher's start (R + 1 unless given) agree:
        # nothing runs in between.
        response = rpc_pb2.WatchResponse(
            header=self._header(), watch_id=watch.watch_id, created=True
        )
        watch.watcher = self._hub.watch(spec, functools.partial(self._on_wake, watch))
        self._watches[watch.watch_id] = watch
        if not watch.watcher.is_synced:
            self._hub.sync_unsynced()  # start catching up now, not at the next round
        return response

    def _refusal(self, create: rpc_pb2.WatchCreateRequest) -> str | None:
        """Why a create is refused (etcd's cancel reason), or None."""
        if self._auth_context is not None:
            key = create.key or b"\0"
            refusal = authz.watch_refusal(self._node, self._auth_context, key, create.range_end)
            if refusal is not None:
                return refusal
        if create.start_revision < 0:
            return str(CompactedError())
        range_end = create.range_end
        if range_end and range_end != b"\0" and (create.key or b"\0") >= range_end:
            return WATCHER_RANGE_EMPTY
        if create.watch_id != 0 and create.watch_id in self._watches:
            return WATCHER_DUPLICATE_ID
        for value in create.filters:
            if value not in (
                rpc_pb2.WatchCreateRequest.NOPUT,
                rpc_pb2.WatchCreateRequest.NODELETE,
            ):
                return f"raftkv: unknown watch filter value {value}"
        if len(self._watches) >= limits.WATCH_MAX_WATCHERS_PER_STREAM:
            return TOO_MANY_WATCHERS.format(limit=limits.WATCH_MAX_WATCHERS_PER_STREAM)
        return None

    def _auto_watch_id(self) -> int:
        """etcd's choice: the lowest id from the stream's counter not in use."""
        while self._next_watch_id in self._watches:
            self._next_watch_id += 1
        watch_id = self._next_watch_id
        self._next_watch_id += 1
        return watch_id

    def _cancel(self, watch_id: int) -> rpc_pb2.WatchResponse | None:
        watch = self._watches.pop(watch_id, None)
        if watch is None:
            return None  # etcd does not answer the cancel of an unknown watch
        self._hub.cancel(watch.watcher)
        self._ready.pop(watch, None)
        return rpc_pb2.WatchResponse(header=self._header(), watch_id=watch_id, canceled=True)

    def _progress_all(self) -> rpc_pb2.WatchResponse | None:
        """etcd's RequestProgressAll: the store revision for the whole stream (watch id
        -1), only if every watch has had all its events up to it; else nothing."""
        for watch in self._watches.values():
            if self._hub.progress_revision(watch.watcher) is None:
                return None
        return rpc_pb2.WatchResponse(header=self._header(), watch_id=INVALID_WATCH_ID)

    # --- Timers and callbacks --------------------------------------------------------

    def _on_wake(self, watch: _StreamWatch) -> None:
        """The hub has events for ``watch`` (called on the event loop)."""
        if self._watches.get(watch.watch_id) is watch:
            self._ready[watch] = None
            self._wakeup.set()

    async def _tick(self) -> None:
        """Progress notifications every interval (plus jitter, fixed per stream), and
        the leader checks of a hasleader stream."""
        loop = asyncio.get_running_loop()
        interval_s = self._options.watch_progress_notify_interval_s
        interval_s *= 1 + _jitter.random() * PROGRESS_JITTER_FRACTION
        next_progress = loop.time() + interval_s
        next_leader_check = loop.time() + LEADER_CHECK_INTERVAL_S
        leaderless_checks = 0
        while True:
            deadline = next_progress
            if self._monitor_leader:
                deadline = min(deadline, next_leader_check)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            if now >= next_progress:
                next_progress += interval_s
                if any(watch.progress_notify for watch in self._watches.values()):
                    self._progress_due = True
                    self._wakeup.set()
            if self._monitor_leader and now >= next_leader_check:
                next_leader_check += LEADER_CHECK_INTERVAL_S
                leaderless = self._node.leader_id == 0
                leaderless_checks = leaderless_checks + 1 if leaderless else 0
                if leaderless_checks >= LEADER_CHECKS_BEFORE_CANCEL:
                    self._failure = NoLeaderError()
                    self._wakeup.set()
                    return

    # --- Helpers ---------------------------------------------------------------------

    def _header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return convert.header(self._node.header(revision))

    def _close(self) -> None:
        for watch in self._watches.values():
            self._hub.cancel(watch.watcher)
        self._watches.clear()
        self._ready.clear()
        self._control.clear()


def fragments(response: rpc_pb2.WatchResponse, limit_bytes: int) -> list[rpc_pb2.WatchResponse]:
    """etcd's sendFragments: a response of at least ``limit_bytes`` with two or more
    events is split into responses that each stay under the limit (or hold a single
    event); all but the last have ``fragment`` set."""
    if len(response.events) < 2 or response.ByteSize() < limit_bytes:
        return [response]
    shell = rpc_pb2.WatchResponse()
    shell.CopyFrom(response)
    del shell.events[:]
    shell.fragment = True
    shell_bytes = shell.ByteSize()
    parts: list[list[kv_pb2.Event]] = []
    current: list[kv_pb2.Event] = []
    current_bytes = shell_bytes
    for event in response.events:
        event_bytes = _event_field_bytes(event.ByteSize())
        if current and current_bytes + event_bytes >= limit_bytes:
            parts.append(current)
            current, current_bytes = [], shell_bytes
        current.append(event)
        current_bytes += event_bytes
    parts.append(current)
    pieces = []
    for index, events in enumerate(parts):
        piece = rpc_pb2.WatchResponse()
        piece.CopyFrom(shell)
        piece.events.extend(events)
        piece.fragment = index < len(parts) - 1
        pieces.append(piece)
    return pieces


def split_by_revision(events: list[kv_pb2.Event], max_bytes: int) -> list[list[kv_pb2.Event]]:
    """Consecutive runs of whole revisions, each run at most ``max_bytes`` of events
    unless it is a single revision larger than that."""
    parts: list[list[kv_pb2.Event]] = []
    current: list[kv_pb2.Event] = []
    current_bytes = 0
    index = 0
    while index < len(events):
        revision = events[index].kv.mod_revision
        end = index
        revision_bytes = 0
        while end < len(events) and events[end].kv.mod_revision == revision:
            revision_bytes += _event_field_bytes(events[end].ByteSize())
            end += 1
        if current and current_bytes + revision_bytes > max_bytes:
            parts.append(current)
            current, current_bytes = [], 0
        current.extend(events[index:end])
        current_bytes += revision_bytes
        index = end
    parts.append(current)
    return parts


def _event_field_bytes(event_bytes: int) -> int:
    """Bytes one event adds to a WatchResponse: tag (field 11: one byte), length, body."""
    length_bytes = 1
    while event_bytes >= 1 << (7 * length_bytes):
        length_bytes += 1
    return 1 + length_bytes + event_bytes
