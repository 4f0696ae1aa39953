"""One server under differential test: gRPC channels, request routing, watch streams.

``Server.call(op)`` sends one operation and returns its ``Answer`` (the response message,
or the gRPC status code and details). With several endpoints (a raftkv cluster) requests
go round-robin over the members, except that a serializable Range, a LeaseKeepAlive and
a LeaseTimeToLive (answered without a read barrier, with the member's own revision in the
header) go to the member that answered a write or a linearizable read last: it has
applied every acknowledged write, so the answer is deterministic.

Watches: ``WATCH_STREAMS`` bidi Watch streams, stream ``s`` on member ``s % members``;
each has a reader thread that keeps every response. A watch create or cancel is preceded
by a linearizable Range on the stream's member, so a member that lags cannot start a
watch at an older revision or answer with an older header revision.
``wait_synced(revision)`` waits until every open watch has had all its events up to
``revision``:

* ``SyncMode.PROGRESS_NOTIFY`` (etcd, run with a short ``--watch-progress-notify-interval``):
  etcd sends a watch's periodic progress notification through the same channel as its
  events and only while the watch is synced, so one reporting ``revision`` or later
  follows every event up to it. (etcd 3.5.1 answers a ``progress_request`` at once, even
  for a watch that is behind, so that cannot be used.)
* ``SyncMode.PROGRESS_REQUEST`` (raftkv, whose progress interval is not configurable):
  raftkv answers a ``progress_request`` only when every watch of the stream has been sent
  all its events up to the reported revision; it is repeated until the answer reports
  ``revision`` or later.
"""

from __future__ import annotations

import enum
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from tests.compat.differential import WATCH_STREAMS, Json, Op, OpKind, TtlWindow, readable

CALL_TIMEOUT_S = 10.0
WATCH_ANSWER_TIMEOUT_S = 10.0
# How long to wait for the answer to the cancel of a watch the stream does not have:
# etcd sends none, so the wait always runs out.
UNKNOWN_CANCEL_WAIT_S = 0.3
SYNC_TIMEOUT_S = 15.0
PROGRESS_REQUEST_WAIT_S = 0.1
READER_JOIN_TIMEOUT_S = 5.0
# The slack of the TTL window below the exact remaining time (see TtlWindow).
TTL_SLACK_S = 1
NO_ANSWER = "NO_ANSWER"  # the code of an Answer that never came
PROGRESS_WATCH_ID = -1  # the watch id of a stream-wide progress response


class SyncMode(enum.Enum):
    PROGRESS_NOTIFY = "progress_notify"
    PROGRESS_REQUEST = "progress_request"


# Ops after whose success the answering member has applied every acknowledged write.
_SYNCING_KINDS = frozenset(
    {
        OpKind.RANGE,
        OpKind.PUT,
        OpKind.DELETE_RANGE,
        OpKind.TXN,
        OpKind.COMPACT,
        OpKind.LEASE_GRANT,
        OpKind.LEASE_REVOKE,
    }
)


# Ops answered without a read barrier, whose header revision is the answering member's.
_LOCAL_HEADER_KINDS = frozenset({OpKind.LEASE_KEEPALIVE, OpKind.LEASE_TIME_TO_LIVE})


@dataclass(frozen=True)
class RpcFailure:
    code: str
    details: str


@dataclass(frozen=True)
class Answer:
    message: Message | None = None
    failure: RpcFailure | None = None
    member: int = 0
    ttl_window: TtlWindow | None = None

    def __post_init__(self) -> None:
        assert (self.message is None) != (self.failure is None), self


class _StreamEndedError(Exception):
    """A stream ended before its first response."""


class SyncError(AssertionError):
    """A watch stream did not report progress up to a revision in time."""


def _is_progress(response: rpc_pb2.WatchResponse) -> bool:
    return not (
        response.events or response.created or response.canceled or response.compact_revision
    )


class WatchStream:
    """One Watch RPC: requests go through a queue, a thread keeps every response."""

    def __init__(self, name: str, stub: rpc_pb2_grpc.WatchStub) -> None:
        self.name = name
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._changed = threading.Condition()
        self._responses: list[rpc_pb2.WatchResponse] = []
        self._claimed: set[int] = set()  # indexes of responses that answered an op
        self._failure: RpcFailure | None = None
        self._call = stub.Watch(self._outgoing())
        self._reader = threading.Thread(target=self._read, name=f"watch {name}", daemon=True)
        self._reader.start()

    def _outgoing(self) -> Iterator[rpc_pb2.WatchRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._changed:
                    self._responses.append(response)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            with self._changed:
                self._failure = _failure_of(error)
                self._changed.notify_all()

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
        self._reader.join(READER_JOIN_TIMEOUT_S)

    def exchange(
        self,
        request: rpc_pb2.WatchRequest,
        is_answer: Callable[[rpc_pb2.WatchResponse], bool],
        timeout_s: float,
    ) -> rpc_pb2.WatchResponse | RpcFailure:
        """Send ``request``; the first later response that ``is_answer`` (claimed), or a
        failure if none came within ``timeout_s`` or the stream ended."""
        with self._changed:
            start = len(self._responses)
        self._requests.put(request)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index in range(start, len(self._responses)):
                    response = self._responses[index]
                    if index not in self._claimed and is_answer(response):
                        self._claimed.add(index)
                        return response
                start = len(self._responses)
                if self._failure is not None:
                    return self._failure
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return RpcFailure(NO_ANSWER, f"no answer within {timeout_s} s")
                self._changed.wait(remaining)

    def open_watch_ids(self) -> set[int]:
        """Watches created on this stream and not canceled since (as the server said)."""
        with self._changed:
            open_ids: set[int] = set()
            for response in self._responses:
                if response.created and not response.canceled:
                    open_ids.add(response.watch_id)
                elif response.canceled:
                    open_ids.discard(response.watch_id)
            return open_ids

    def wait_synced(self, revision: int, mode: SyncMode) -> None:
        """SyncError unless every open watch reports progress to ``revision`` in time."""
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        if mode is SyncMode.PROGRESS_NOTIFY:
            self._wait_for_notifications(revision, deadline)
        else:
            self._request_progress(revision, deadline)

    def _wait_for_notifications(self, revision: int, deadline: float) -> None:
        with self._changed:
            while True:
                behind = self.open_watch_ids() - {
                    response.watch_id
                    for response in self._responses
                    if _is_progress(response) and response.header.revision >= revision
                }
                if not behind:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._failure is not None:
                    raise SyncError(
                        f"{self.name}: watches {sorted(behind)} reported no progress to "
                        f"revision {revision} within {SYNC_TIMEOUT_S} s ({self._failure})"
                    )
                self._changed.wait(remaining)

    def _request_progress(self, revision: int, deadline: float) -> None:
        progress = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
        reported = 0
        while time.monotonic() < deadline:
            answer = self.exchange(
                progress,
                lambda r: r.watch_id == PROGRESS_WATCH_ID and _is_progress(r),
                PROGRESS_REQUEST_WAIT_S,
            )
            if isinstance(answer, rpc_pb2.WatchResponse):
                reported = answer.header.revision
                if reported >= revision:
                    return
        raise SyncError(
            f"{self.name}: no progress response reported revision {revision} within "
            f"{SYNC_TIMEOUT_S} s (last reported: {reported}, stream failure: {self._failure})"
        )

    def records(self) -> dict[str, Json]:
        """Per watch id ("watch N"): its events, in order, and the responses about it
        that answered no op (e.g. a cancel by compaction); progress responses are left
        out. A stream that failed has a "stream failure" entry."""
        records: dict[str, Json] = {}
        with self._changed:
            for index, response in enumerate(self._responses):
                if _is_progress(response):
                    continue
                record = records.setdefault(
                    f"watch {response.watch_id}", {"events": [], "other": []}
                )
                record["events"].extend(readable(event) for event in response.events)
                if index not in self._claimed and (response.created or response.canceled):
                    control = rpc_pb2.WatchResponse()
                    control.CopyFrom(response)
                    del control.events[:]
                    record["other"].append(readable(control))
            if self._failure is not None:
                records["stream failure"] = {"code": self._failure.code}
        return records


class Server:
    """One server (a single etcd, or the members of a raftkv cluster) under test."""

    def __init__(self, name: str, endpoints: Sequence[str], sync_mode: SyncMode) -> None:
        assert endpoints, name
        self.name = name
        self.endpoints = list(endpoints)
        self.sync_mode = sync_mode
        self._channels = [grpc.insecure_channel(endpoint) for endpoint in endpoints]
        self._kv = [rpc_pb2_grpc.KVStub(channel) for channel in self._channels]
        self._lease = [rpc_pb2_grpc.LeaseStub(channel) for channel in self._channels]
        self.streams = [
            WatchStream(
                f"{name} stream {number}",
                rpc_pb2_grpc.WatchStub(self._channels[number % len(self._channels)]),
            )
            for number in range(WATCH_STREAMS)
        ]
        self._next_member = 0
        self._synced_member = 0
        self._renewed_at: dict[int, tuple[float, int]] = {}  # lease -> (time, granted TTL)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        for channel in self._channels:
            channel.close()

    def stream_member(self, stream: int) -> int:
        return stream % len(self._channels)

    def call(self, op: Op) -> Answer:
        if op.kind is OpKind.WATCH_CREATE:
            return self._watch_create(op)
        if op.kind is OpKind.WATCH_CANCEL:
            return self._watch_cancel(op)
        member = self._pick_member(op)
        sent_at = time.monotonic()
        try:
            message = self._send(member, op.request)
        except grpc.RpcError as error:
            return Answer(failure=_failure_of(error), member=member)
        except _StreamEndedError as error:
            return Answer(failure=RpcFailure(NO_ANSWER, str(error)), member=member)
        if op.kind in _SYNCING_KINDS and not op.is_serializable_read:
            self._synced_member = member
        return Answer(
            message=message, member=member, ttl_window=self._track_lease(op, message, sent_at)
        )

    def wait_synced(self, revision: int) -> None:
        for stream in self.streams:
            stream.wait_synced(revision, self.sync_mode)

    def _pick_member(self, op: Op) -> int:
        if op.is_serializable_read or op.kind in _LOCAL_HEADER_KINDS:
            return self._synced_member
        member = self._next_member % len(self._channels)
        self._next_member += 1
        return member

    def _send(self, member: int, request: Message) -> Message:
        kv, lease = self._kv[member], self._lease[member]
        timeout = CALL_TIMEOUT_S
        match request:
            case rpc_pb2.RangeRequest():
                return kv.Range(request, timeout=timeout)
            case rpc_pb2.PutRequest():
                return kv.Put(request, timeout=timeout)
            case rpc_pb2.DeleteRangeRequest():
                return kv.DeleteRange(request, timeout=timeout)
            case rpc_pb2.TxnRequest():
                return kv.Txn(request, timeout=timeout)
            case rpc_pb2.CompactionRequest():
                return kv.Compact(request, timeout=timeout)
            case rpc_pb2.LeaseGrantRequest():
                return lease.LeaseGrant(request, timeout=timeout)
            case rpc_pb2.LeaseRevokeRequest():
                return lease.LeaseRevoke(request, timeout=timeout)
            case rpc_pb2.LeaseTimeToLiveRequest():
                return lease.LeaseTimeToLive(request, timeout=timeout)
            case rpc_pb2.LeaseLeasesRequest():
                return lease.LeaseLeases(request, timeout=timeout)
            case rpc_pb2.LeaseKeepAliveRequest():
                return _keepalive_once(lease, request)
        raise AssertionError(f"not a unary request: {request!r}")

    def _track_lease(self, op: Op, message: Message, sent_at: float) -> TtlWindow | None:
        """Remember grants and renewals; the TTL window of a TimeToLive answer."""
        request = op.request
        if isinstance(request, rpc_pb2.LeaseGrantRequest):
            assert isinstance(message, rpc_pb2.LeaseGrantResponse)
            self._renewed_at[request.ID] = (sent_at, message.TTL)
        elif isinstance(request, rpc_pb2.LeaseKeepAliveRequest):
            assert isinstance(message, rpc_pb2.LeaseKeepAliveResponse)
            if message.TTL > 0:
                self._renewed_at[request.ID] = (sent_at, message.TTL)
        elif isinstance(request, rpc_pb2.LeaseRevokeRequest):
            self._renewed_at.pop(request.ID, None)
        elif isinstance(request, rpc_pb2.LeaseTimeToLiveRequest):
            renewed = self._renewed_at.get(request.ID)
            if renewed is not None:
                renewed_at, granted_ttl_s = renewed
                elapsed_s = math.ceil(time.monotonic() - renewed_at)
                return TtlWindow(granted_ttl_s - elapsed_s - TTL_SLACK_S, granted_ttl_s)
        return None

    def _barrier(self, member: int) -> RpcFailure | None:
        """A linearizable Range on ``member``: then it has applied every acknowledged
        write, so the header of its next watch answer is not stale."""
        try:
            self._kv[member].Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            failure = _failure_of(error)
            return RpcFailure(failure.code, "barrier: " + failure.details)
        return None

    def _watch_create(self, op: Op) -> Answer:
        member = self.stream_member(op.stream)
        if (failure := self._barrier(member)) is not None:
            return Answer(failure=failure, member=member)
        assert isinstance(op.request, rpc_pb2.WatchCreateRequest), op
        request = rpc_pb2.WatchRequest(create_request=op.request)
        answer = self.streams[op.stream].exchange(
            request, lambda r: r.created, WATCH_ANSWER_TIMEOUT_S
        )
        return _watch_answer(answer, member)

    def _watch_cancel(self, op: Op) -> Answer:
        assert isinstance(op.request, rpc_pb2.WatchCancelRequest), op
        stream = self.streams[op.stream]
        if (failure := self._barrier(self.stream_member(op.stream))) is not None:
            return Answer(failure=failure, member=self.stream_member(op.stream))
        watch_id = op.request.watch_id
        known = watch_id in stream.open_watch_ids()
        answer = stream.exchange(
            rpc_pb2.WatchRequest(cancel_request=op.request),
            lambda r: r.canceled and not r.created and r.watch_id == watch_id,
            WATCH_ANSWER_TIMEOUT_S if known else UNKNOWN_CANCEL_WAIT_S,
        )
        return _watch_answer(answer, self.stream_member(op.stream))


def _watch_answer(answer: rpc_pb2.WatchResponse | RpcFailure, member: int) -> Answer:
    if isinstance(answer, RpcFailure):
        return Answer(failure=answer, member=member)
    return Answer(message=answer, member=member)


def _keepalive_once(
    lease: rpc_pb2_grpc.LeaseStub, request: rpc_pb2.LeaseKeepAliveRequest
) -> rpc_pb2.LeaseKeepAliveResponse:
    responses = lease.LeaseKeepAlive(iter([request]), timeout=CALL_TIMEOUT_S)
    try:
        return next(iter(responses))
    except StopIteration:
        raise _StreamEndedError("LeaseKeepAlive ended without an answer") from None
    finally:
        responses.cancel()  # type: ignore[no-untyped-call]


def _failure_of(error: grpc.RpcError) -> RpcFailure:
    # A grpc.RpcError raised by a call is also a grpc.Call with code() and details().
    assert isinstance(error, grpc.Call), error
    return RpcFailure(error.code().name, error.details() or "")
