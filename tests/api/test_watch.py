"""The Watch service over gRPC: one stream, many watches, etcd's control responses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftkv import limits
from raftkv.api import watch as watch_module
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.api.options import ApiOptions
from raftkv.api.watch import WatchStream as ServerWatchStream
from raftkv.api.watch import fragments, split_by_revision
from raftkv.storage.mvcc import PutRequest
from tests.api.conftest import ApiServer, start_api
from tests.api.helpers import WatchStream, status_of

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
CREATE = rpc_pb2.WatchCreateRequest


@pytest.fixture
def stream(api: ApiServer) -> Any:
    watch_stream = WatchStream(api.watch.Watch)
    try:
        yield watch_stream
    finally:
        watch_stream.close()


def put(api: ApiServer, key: bytes, value: bytes = b"v") -> int:
    return api.kv.Put(rpc_pb2.PutRequest(key=key, value=value)).header.revision


def delete(api: ApiServer, key: bytes) -> int:
    return api.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key)).header.revision


def test_created_then_events_with_their_revisions(api: ApiServer, stream: WatchStream) -> None:
    put(api, b"before")
    created = stream.created(b"k", range_end=b"l")
    assert created.header.revision == 2 and created.watch_id == 0
    assert created.header.member_id == api.node.member_id
    first = put(api, b"k1", b"a")
    response = stream.receive()
    assert response.watch_id == 0 and response.header.revision == first
    ((event),) = response.events
    assert (event.type, event.kv.key, event.kv.value, event.kv.version) == (PUT, b"k1", b"a", 1)
    deleted = delete(api, b"k1")
    ((event),) = stream.receive().events
    assert (event.type, event.kv.key, event.kv.mod_revision) == (DELETE, b"k1", deleted)
    put(api, b"zzz")  # outside the range
    assert stream.nothing_within(0.2)


def test_prev_kv_and_filters(api: ApiServer, stream: WatchStream) -> None:
    put(api, b"k", b"old")
    stream.created(b"k", prev_kv=True, watch_id=1)
    stream.created(b"k", filters=[CREATE.NOPUT], watch_id=2)
    stream.created(b"k", filters=[CREATE.NODELETE], watch_id=3)
    put(api, b"k", b"new")
    delete(api, b"k")
    by_watch: dict[int, list[Any]] = {1: [], 2: [], 3: []}
    while sum(len(events) for events in by_watch.values()) < 4:
        response = stream.receive()
        by_watch[response.watch_id].extend(response.events)
    with_prev = by_watch[1]
    assert [(e.type, e.prev_kv.value) for e in with_prev] == [(PUT, b"old"), (DELETE, b"new")]
    assert [e.type for e in by_watch[2]] == [DELETE]
    assert [e.type for e in by_watch[3]] == [PUT]
    assert not by_watch[3][0].HasField("prev_kv")


def test_cancel(api: ApiServer, stream: WatchStream) -> None:
    stream.created(b"k", watch_id=7)
    stream.cancel(7)
    canceled = stream.receive()
    assert (canceled.watch_id, canceled.canceled, canceled.created) == (7, True, False)
    assert canceled.header.revision == 1
    stream.cancel(99)  # unknown: etcd does not answer
    put(api, b"k")
    assert stream.nothing_within(0.2)
    assert api.run(lambda: api.node.watch_hub.watcher_count) == 0


def test_client_chosen_ids_duplicates_and_auto_ids(api: ApiServer, stream: WatchStream) -> None:
    assert stream.created(b"a", watch_id=1).watch_id == 1
    stream.create(b"b", watch_id=1)
    duplicate = stream.receive()
    assert (duplicate.watch_id, duplicate.created, duplicate.canceled) == (-1, True, True)
    assert duplicate.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
    # etcd's automatic ids count from 0 and skip the ones in use.
    assert stream.created(b"c").watch_id == 0
    assert stream.created(b"d").watch_id == 2
    stream.create(b"b", range_end=b"a")
    empty = stream.receive()
    assert (empty.watch_id, empty.canceled, empty.cancel_reason) == (
        -1,
        True,
        "mvcc: watcher range is empty",
    )
    put(api, b"a")  # the duplicate did not replace watch 1
    response = stream.receive()
    assert response.watch_id == 1 and response.events[0].kv.key == b"a"


def test_watch_from_the_past_and_resume(api: ApiServer, stream: WatchStream) -> None:
    revisions = [put(api, b"h", b"%d" % i) for i in range(5)]
    stream.created(b"h", start_revision=revisions[1])
    events = stream.events(4)
    assert [e.kv.mod_revision for e in events] == revisions[1:]
    live = put(api, b"h", b"live")
    assert [e.kv.mod_revision for e in stream.events(1)] == [live]


def test_compacted_start_is_canceled_with_the_compact_revision(
    api: ApiServer, stream: WatchStream
) -> None:
    for i in range(4):
        put(api, b"c", b"%d" % i)  # revisions 2..5
    api.kv.Compact(rpc_pb2.CompactionRequest(revision=4))
    created = stream.created(b"c", start_revision=2, watch_id=5)
    assert created.watch_id == 5
    canceled = stream.receive()
    assert (canceled.watch_id, canceled.canceled, canceled.compact_revision) == (5, True, 4)
    assert list(canceled.events) == []
    assert canceled.header.revision == 0  # as etcd: its compaction response has none
    # The id is free again.
    assert stream.created(b"c", watch_id=5).watch_id == 5


def test_negative_start_revision_is_refused(stream: WatchStream) -> None:
    stream.create(b"k", start_revision=-1)
    refused = stream.receive()
    assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
    assert refused.cancel_reason == "etcdserver: mvcc: required revision has been compacted"


def test_unknown_filter_is_refused(stream: WatchStream) -> None:
    stream.create(b"k", filters=[5])
    refused = stream.receive()
    assert refused.canceled and refused.cancel_reason == "raftkv: unknown watch filter value 5"


def test_progress_request_when_synced(api: ApiServer, stream: WatchStream) -> None:
    stream.created(b"a")
    stream.created(b"b")
    revision = put(api, b"a")
    stream.events(1)
    stream.request_progress()
    progress = stream.receive()
    assert (progress.watch_id, list(progress.events)) == (-1, [])
    assert progress.header.revision == revision


def test_progress_request_is_skipped_while_a_watcher_is_behind(tmp_path: Path) -> None:
    """White-box: a watch from the past that has not caught up gets no progress."""
    api = start_api(tmp_path)
    try:

        async def scenario() -> tuple[bool, bool]:
            node = api.node
            for i in range(1500):  # more than one catch-up pass reads
                await node.propose(PutRequest(b"p", b"%d" % i))
            watch_stream = ServerWatchStream(node, ApiOptions(), monitor_leader=False)
            create = rpc_pb2.WatchCreateRequest(key=b"p", start_revision=2)
            watch_stream._handle(rpc_pb2.WatchRequest(create_request=create))
            progress = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
            skipped = watch_stream._handle(progress) is None
            (watch,) = watch_stream._watches.values()
            while not watch.watcher.is_synced or watch.watcher.has_pending():
                watch.watcher.take(limits.WATCH_RESPONSE_EVENTS_MAX)
                node.watch_hub.sync_unsynced()
            answered = watch_stream._handle(progress)
            watch_stream._close()
            return skipped, answered is not None and answered.watch_id == -1

        assert api.call(scenario()) == (True, True)
    finally:
        api.stop()


def test_progress_notify_on_the_interval(tmp_path: Path) -> None:
    api = start_api(tmp_path, ApiOptions(watch_progress_notify_interval_s=0.2))
    stream = WatchStream(api.watch.Watch)
    try:
        stream.created(b"quiet")  # no progress_notify: never notified
        stream.created(b"k", progress_notify=True, watch_id=9)
        revision = put(api, b"other")
        notification = stream.receive(timeout_s=2)
        assert (notification.watch_id, list(notification.events)) == (9, [])
        assert notification.header.revision == revision
        assert stream.receive(timeout_s=2).watch_id == 9  # and again, every interval
    finally:
        stream.close()
        api.stop()


def test_fragmented_response(api: ApiServer) -> None:
    # The fragment limit is max_request_bytes + 512 KiB = 2 MiB. A txn within the request
    # limit makes a response beyond it when its events carry their previous values.
    def overwrite(fill: int) -> int:
        ops = [
            rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=b"f%d" % i, value=bytes([fill]) * 400_000)
            )
            for i in range(3)
        ]
        return api.kv.Txn(rpc_pb2.TxnRequest(success=ops)).header.revision

    overwrite(ord("A"))
    plain = WatchStream(api.watch.Watch)
    fragmented = WatchStream(api.watch.Watch)
    try:
        plain.created(b"f", range_end=b"g", prev_kv=True)
        fragmented.created(b"f", range_end=b"g", prev_kv=True, fragment=True)
        revision = overwrite(ord("B"))
        whole = plain.receive()
        assert len(whole.events) == 3 and not whole.fragment
        assert whole.ByteSize() > 2 * 1024 * 1024
        pieces = [fragmented.receive()]
        while pieces[-1].fragment:
            pieces.append(fragmented.receive())
        assert [len(piece.events) for piece in pieces] == [2, 1]
        assert all(piece.header.revision == revision for piece in pieces)
        assert [e for piece in pieces for e in piece.events] == list(whole.events)
    finally:
        plain.close()
        fragmented.close()


def test_fragments_split_like_etcd() -> None:
    events = [kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k%d" % i, value=b"x" * 100)) for i in range(10)]
    response = rpc_pb2.WatchResponse(watch_id=3, events=events)
    assert fragments(response, response.ByteSize() + 1) == [response]
    limit = 350
    pieces = fragments(response, limit)
    assert [e for piece in pieces for e in piece.events] == events
    assert [piece.fragment for piece in pieces] == [True] * (len(pieces) - 1) + [False]
    assert all(piece.ByteSize() < limit for piece in pieces)
    # Each piece is as full as the limit allows: one more event would reach it.
    for piece, following in zip(pieces, pieces[1:], strict=False):
        grown = rpc_pb2.WatchResponse()
        grown.CopyFrom(piece)
        grown.events.append(following.events[0])
        assert grown.ByteSize() >= limit
    single = rpc_pb2.WatchResponse(events=events[:1])
    assert fragments(single, 10) == [single]  # one event is never split


def test_split_by_revision_keeps_revisions_whole() -> None:
    def event(revision: int, size: int) -> kv_pb2.Event:
        return kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", mod_revision=revision, value=b"x" * size))

    # Revision 2 has two events; revision 4 alone exceeds the budget.
    events = [event(1, 500), event(2, 300), event(2, 300), event(3, 100), event(4, 2000)]
    parts = split_by_revision(events, 1000)
    assert [[e.kv.mod_revision for e in part] for part in parts] == [[1], [2, 2, 3], [4]]
    assert [e for part in parts for e in part] == events
    assert split_by_revision(events[:1], 10) == [events[:1]]


def test_stream_end_cancels_its_watchers(api: ApiServer) -> None:
    stream = WatchStream(api.watch.Watch)
    stream.created(b"a")
    stream.created(b"b", start_revision=1)
    assert api.run(lambda: api.node.watch_hub.watcher_count) == 2
    stream.close()
    for _ in range(100):
        if api.run(lambda: api.node.watch_hub.watcher_count) == 0:
            break
        time.sleep(0.02)
    assert api.run(lambda: api.node.watch_hub.watcher_count) == 0


def test_watcher_limit_per_stream(
    api: ApiServer, stream: WatchStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "WATCH_MAX_WATCHERS_PER_STREAM", 2)
    stream.created(b"a")
    stream.created(b"b")
    stream.create(b"c")
    refused = stream.receive()
    assert (refused.watch_id, refused.canceled) == (-1, True)
    assert refused.cancel_reason == "raftkv: too many watchers on this stream (at most 2)"
    stream.cancel(0)
    stream.receive()
    stream.created(b"c")


def test_many_revisions_arrive_in_order_without_loss(api: ApiServer, stream: WatchStream) -> None:
    stream.created(b"n", range_end=b"o")
    revisions = [put(api, b"n%d" % (i % 7), b"%d" % i) for i in range(300)]
    events = stream.events(300)
    assert [e.kv.mod_revision for e in events] == revisions


def test_hasleader_stream_refused_without_leader(api: ApiServer) -> None:
    api.run(lambda: setattr(api.node, "leader_id", 0))
    stream = WatchStream(api.watch.Watch, metadata=(("hasleader", "true"),))
    try:
        stream.create(b"k")
        error = stream.receive_error()
        assert status_of(error) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    finally:
        stream.close()


def test_hasleader_stream_ends_when_the_leader_is_lost(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "LEADER_CHECK_INTERVAL_S", 0.05)
    stream = WatchStream(api.watch.Watch, metadata=(("hasleader", "true"),))
    try:
        stream.created(b"k")
        put(api, b"k")
        assert len(stream.events(1)) == 1
        api.run(lambda: setattr(api.node, "leader_id", 0))
        error = stream.receive_error(timeout_s=5)
        assert status_of(error) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    finally:
        stream.close()
    assert api.run(lambda: api.node.watch_hub.watcher_count) == 0


def test_slow_client_falls_behind_boundedly_and_catches_up(api: ApiServer) -> None:
    """A client that does not read: gRPC flow control stops the sender, the hub keeps at
    most its per-watcher bound and unsyncs the watcher; once the client reads, every
    event arrives, in order."""
    requests = iter([rpc_pb2.WatchRequest(create_request=CREATE(key=b"s", range_end=b"t"))])
    call: Any = api.watch.Watch(requests)
    try:
        assert next(call).created
        # gRPC buffers a few MiB before its writes block; then the hub's buffer fills.
        value = b"x" * 8192
        revisions = [put(api, b"s%d" % (i % 5), value) for i in range(2500)]
        hub = api.node.watch_hub
        assert api.run(lambda: hub.unsynced_count) == 1  # it fell behind
        (watcher,) = api.run(lambda: list(hub._unsynced))
        assert api.run(lambda: watcher.pending_events) <= limits.WATCH_BUFFER_EVENTS_MAX
        received: list[int] = []
        while len(received) < len(revisions):
            response = next(call)
            received.extend(event.kv.mod_revision for event in response.events)
            # Catch-up batches are split into responses that fit gRPC's default limit,
            # each claiming the revision it carries through (every revision matches).
            assert response.ByteSize() <= limits.WATCH_RESPONSE_MAX_BYTES
            assert response.header.revision == response.events[-1].kv.mod_revision
        assert received == revisions
    finally:
        call.cancel()


def test_an_event_is_converted_once_for_all_its_watchers() -> None:
    """The hub makes one event object per change for all watchers; the API's cache hands
    the same protobuf back for it, a fresh one for an equal but other object, and drops
    the oldest entries beyond its capacity."""
    from raftkv.storage.mvcc import KeyValue
    from raftkv.storage.mvcc.watchable import EventType, WatchEvent

    def event(value: bytes) -> WatchEvent:
        return WatchEvent(EventType.PUT, KeyValue(b"k", 2, 2, 1, value))

    cache = watch_module._EventCache(capacity=2)
    first = event(b"a")
    message = cache.converted(first)
    assert message.kv.value == b"a" and message.type == kv_pb2.Event.PUT
    assert cache.converted(first) is message
    twin = event(b"a")
    assert cache.converted(twin) is not message and cache.converted(twin) == message
    cache.converted(event(b"c"))  # a third entry: the first goes
    assert cache.converted(first) is not message
