"""The peer transport over real sockets on 127.0.0.1.

pytest-asyncio is not a dependency: every test runs its body with ``run`` (asyncio.run
under an overall deadline), and every transport it starts is stopped in a finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from raftkv import limits
from raftkv.raft.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from raftkv.server import transport as transport_module
from raftkv.server.codec import encode_message
from raftkv.server.transport import (
    MAGIC,
    ConnectionKind,
    FrameKind,
    PeerProtocolError,
    PeerRequestFailedError,
    PeerUnavailableError,
    Transport,
    encode_frame,
    encode_handshake,
    read_frame,
)

HOST = "127.0.0.1"
CLUSTER_ID = 0x1234
TEST_DEADLINE_S = 30.0
LOGGER = "raftkv.server.transport"

M = MessageType


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), TEST_DEADLINE_S)

    asyncio.run(bounded())


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def free_port() -> int:
    """A port nothing listens on (for a peer that is down, or starts later)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


async def echo(frm: int, payload: bytes) -> bytes:
    return b"%d:" % frm + payload


class Member:
    """A transport whose callbacks record what they get."""

    def __init__(
        self,
        member_id: int,
        directory: Path,
        *,
        cluster_id: int = CLUSTER_ID,
        port: int = 0,
        on_request: Callable[[int, bytes], Awaitable[bytes]] = echo,
    ) -> None:
        self.member_id = member_id
        self.messages: list[Message] = []
        self.snapshots: list[tuple[Message, str]] = []
        self.unreachable: list[int] = []
        self.snapshot_dir = directory / f"snapshots-{member_id}"
        self.transport = Transport(
            member_id=member_id,
            cluster_id=cluster_id,
            listen_host=HOST,
            listen_port=port,
            on_message=self.messages.append,
            on_snapshot=self.on_snapshot,
            on_request=on_request,
            snapshot_dir=str(self.snapshot_dir),
            on_unreachable=self.unreachable.append,
            rng=random.Random(member_id),
        )

    async def on_snapshot(self, msg: Message, path: str) -> None:
        self.snapshots.append((msg, path))

    @property
    def url(self) -> str:
        return url(self.transport.port)


@contextlib.asynccontextmanager
async def started(*members: Member) -> AsyncIterator[None]:
    try:
        for member in members:
            await member.transport.start()
        yield
    finally:
        for member in members:
            await member.transport.stop()


@contextlib.asynccontextmanager
async def cluster(directory: Path, count: int) -> AsyncIterator[list[Member]]:
    """``count`` started members (ids 1..count), each a peer of every other."""
    members = [Member(member_id, directory) for member_id in range(1, count + 1)]
    async with started(*members):
        for member in members:
            for other in members:
                if other is not member:
                    member.transport.add_peer(other.member_id, [other.url])
        yield members


def heartbeat(frm: int, to: int, commit: int) -> Message:
    return Message(M.HEARTBEAT, to=to, frm=frm, term=3, commit=commit)


def snap_message(frm: int, to: int) -> Message:
    conf_state = ConfState(frozenset({1, 2, 3}), frozenset({4}))
    metadata = SnapshotMetadata(index=500, term=4, conf_state=conf_state)
    return Message(M.SNAP, to=to, frm=frm, term=4, snapshot=Snapshot(metadata, b""))


# --- Messages ----------------------------------------------------------------------------


def test_three_members_exchange_messages(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path, 3) as members:
            for sender in members:
                for receiver in members:
                    if receiver is not sender:
                        sender.transport.send(
                            [heartbeat(sender.member_id, receiver.member_id, i) for i in range(50)]
                        )
            await eventually(lambda: all(len(m.messages) == 100 for m in members))
            for receiver in members:
                for sender in members:
                    if sender is receiver:
                        continue
                    got = [msg for msg in receiver.messages if msg.frm == sender.member_id]
                    # One stream per sender keeps its messages in order.
                    assert got == [
                        heartbeat(sender.member_id, receiver.member_id, i) for i in range(50)
                    ]
                assert receiver.transport.stats.received == 100
                assert receiver.transport.stats.sent == 100
                assert receiver.unreachable == []

    run(body)


def test_messages_are_written_at_send_time_once_the_stream_is_up(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            await eventually(lambda: first.transport.connected_peer_count() == 1)
            first.transport.send([heartbeat(1, 2, 1), heartbeat(1, 2, 2)])
            # Written by send() itself, not left for the stream task to wake up for.
            assert first.transport.stats.sent == 2
            await eventually(lambda: len(second.messages) == 2)

    run(body)


def test_a_backed_up_stream_keeps_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every direct write counts as backed up: the stream task drains, then writes the
    # frames queued meanwhile, and direct writes resume after it.
    monkeypatch.setattr(limits, "PEER_WRITE_BUFFER_HIGH_BYTES", -1)

    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            await eventually(lambda: first.transport.connected_peer_count() == 1)
            for commit in range(1, 501):
                first.transport.send([heartbeat(1, 2, commit)])
                if commit % 7 == 0:
                    await asyncio.sleep(0)
            await eventually(lambda: len(second.messages) == 500)
            assert [msg.commit for msg in second.messages] == list(range(1, 501))
            assert first.transport.stats.sent == 500

    run(body)


def test_big_append_near_the_size_limit_arrives_whole(tmp_path: Path) -> None:
    rng = random.Random(5)
    filler = [Entry(5, i, EntryType.NORMAL, rng.randbytes(1000)) for i in range(1, 1000)]
    biggest = Entry(5, 1000, EntryType.NORMAL, rng.randbytes(limits.MAX_REQUEST_BYTES_CEILING))
    append = Message(M.APP, to=2, frm=1, term=5, log_term=5, entries=(*filler, biggest))
    assert len(encode_message(append)) > limits.RAFT_MAX_SIZE_PER_MSG_BYTES + 1000

    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            first.transport.send([append, append, heartbeat(1, 2, 9)])
            await eventually(lambda: len(second.messages) == 3)
            assert second.messages == [append, append, heartbeat(1, 2, 9)]

    run(body)


def test_a_message_over_the_limit_is_dropped_and_counted(tmp_path: Path) -> None:
    huge = Entry(5, 1, EntryType.NORMAL, bytes(limits.PEER_MAX_MESSAGE_BYTES))
    too_large = Message(M.APP, to=2, frm=1, term=5, entries=(huge,))

    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            first.transport.send([too_large, heartbeat(1, 2, 1)])
            await eventually(lambda: len(second.messages) == 1)
            assert second.messages == [heartbeat(1, 2, 1)]
            assert first.transport.stats.dropped_too_large == 1

    run(body)


def test_a_peer_that_comes_up_later_gets_the_messages(tmp_path: Path) -> None:
    late_port = free_port()

    async def body() -> None:
        first = Member(1, tmp_path)
        async with started(first):
            first.transport.add_peer(2, [url(late_port)])
            first.transport.send([heartbeat(1, 2, 1)])
            await eventually(lambda: 2 in first.unreachable)  # nobody listens yet

            second = Member(2, tmp_path, port=late_port)
            async with started(second):
                first.transport.send([heartbeat(1, 2, 2)])
                await eventually(lambda: len(second.messages) == 2)
                # The queue outlived the outage: nothing was lost, nothing reordered.
                assert second.messages == [heartbeat(1, 2, 1), heartbeat(1, 2, 2)]
                assert first.transport.stats.reconnects >= 1

            # The stream breaks when the peer stops; it is reported, and healed later.
            reported = len(first.unreachable)
            await eventually(lambda: len(first.unreachable) > reported)
            again = Member(2, tmp_path, port=late_port)
            async with started(again):
                first.transport.send([heartbeat(1, 2, 3)])
                await eventually(lambda: again.messages == [heartbeat(1, 2, 3)])

    run(body)


def test_a_full_queue_drops_without_blocking(tmp_path: Path) -> None:
    late_port = free_port()
    extra = 25

    async def body() -> None:
        first = Member(1, tmp_path)
        async with started(first):
            first.transport.add_peer(2, [url(late_port)])
            flood = [heartbeat(1, 2, i) for i in range(limits.PEER_SEND_QUEUE_MAX + extra)]
            began = time.monotonic()
            first.transport.send(flood)
            first.transport.send([heartbeat(1, 42, 0)])  # not a peer
            assert time.monotonic() - began < 2.0
            stats = first.transport.stats
            assert stats.dropped_queue_full == extra
            assert stats.dropped_unknown_peer == 1

            second = Member(2, tmp_path, port=late_port)
            async with started(second):
                await eventually(lambda: len(second.messages) == limits.PEER_SEND_QUEUE_MAX)
                assert second.messages == flood[: limits.PEER_SEND_QUEUE_MAX]
                assert stats.sent == limits.PEER_SEND_QUEUE_MAX

    run(body)


def test_the_queue_byte_bound_drops_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PEER_SEND_QUEUE_MAX_BYTES", 10 * limits.KIB)
    message = Message(M.HEARTBEAT, to=2, frm=1, context=bytes(1000))
    frame_bytes = len(encode_frame(FrameKind.MESSAGE, encode_message(message)))
    fitting = 10 * limits.KIB // frame_bytes

    async def body() -> None:
        first = Member(1, tmp_path)
        async with started(first):
            first.transport.add_peer(2, [url(free_port())])
            first.transport.send([message] * 20)
            assert first.transport.stats.dropped_queue_full == 20 - fitting

    run(body)


def test_messages_for_another_member_are_dropped_and_unknown_senders_delivered(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        receiver = Member(2, tmp_path)
        async with started(receiver):
            reader, writer = await asyncio.open_connection(HOST, receiver.transport.port)
            try:
                # Member 7 is not a peer of the receiver: Raft decides what to do with it.
                writer.write(encode_handshake(CLUSTER_ID, 7, ConnectionKind.STREAM))
                writer.write(encode_frame(FrameKind.MESSAGE, encode_message(heartbeat(7, 99, 1))))
                writer.write(encode_frame(FrameKind.MESSAGE, encode_message(heartbeat(7, 2, 2))))
                await writer.drain()
                await eventually(lambda: len(receiver.messages) == 1)
                assert receiver.messages == [heartbeat(7, 2, 2)]
                assert receiver.transport.stats.dropped_wrong_member == 1
            finally:
                writer.close()

    run(body)


def test_peer_urls_are_validated(tmp_path: Path) -> None:
    transport = Member(1, tmp_path).transport
    for bad in ["https://127.0.0.1:2380", "127.0.0.1:2380", "http://127.0.0.1", "http://:2380"]:
        with pytest.raises(ValueError):
            transport.add_peer(2, [bad])
    with pytest.raises(ValueError):
        transport.add_peer(2, ["http://127.0.0.1:99999"])
    with pytest.raises(ValueError):
        transport.add_peer(2, [])
    with pytest.raises(ValueError):
        transport.add_peer(1, ["http://127.0.0.1:2380"])  # itself
    transport.add_peer(2, ["http://127.0.0.1:2380", "http://[::1]:2381"])
    with pytest.raises(ValueError):
        transport.add_peer(2, ["http://127.0.0.1:2380"])
    with pytest.raises(ValueError):
        transport.update_peer(2, ["https://127.0.0.1:2380"])
    transport.update_peer(3, ["http://127.0.0.1:2390"])  # a new peer is added
    assert transport.peer_ids() == [2, 3]
    transport.remove_peer(2)
    transport.remove_peer(2)  # removing twice is harmless
    assert transport.peer_ids() == [3]
    transport.send([heartbeat(1, 2, 1)])
    assert transport.stats.dropped_unknown_peer == 1


def test_update_peer_moves_the_stream_to_the_new_url(tmp_path: Path) -> None:
    async def body() -> None:
        first, second = Member(1, tmp_path), Member(2, tmp_path)
        async with started(first, second):
            first.transport.add_peer(2, [url(free_port())])
            first.transport.send([heartbeat(1, 2, 1)])
            await eventually(lambda: 2 in first.unreachable)
            first.transport.update_peer(2, [second.url])
            first.transport.send([heartbeat(1, 2, 2)])
            await eventually(lambda: len(second.messages) == 2)
            assert second.messages == [heartbeat(1, 2, 1), heartbeat(1, 2, 2)]
            # The same URLs again change nothing: the stream stays up.
            reported = len(first.unreachable)
            first.transport.update_peer(2, [second.url])
            first.transport.send([heartbeat(1, 2, 3)])
            await eventually(lambda: len(second.messages) == 3)
            assert len(first.unreachable) == reported

    run(body)


def test_a_url_leading_to_another_member_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def body() -> None:
        first, second = Member(1, tmp_path), Member(2, tmp_path)
        async with started(first, second):
            first.transport.add_peer(3, [second.url])  # member 2 listens there
            first.transport.send([heartbeat(1, 3, 1)])
            await eventually(lambda: 3 in first.unreachable)
            assert second.messages == []
            assert "expected member 3" in caplog.text

    run(body)


# --- Garbage on the port -----------------------------------------------------------------


def good_handshake(kind: ConnectionKind = ConnectionKind.STREAM) -> bytes:
    return encode_handshake(CLUSTER_ID, 9, kind)


def local_type_message() -> bytes:
    # Version 1, type 0 (HUP), seven zero fields, no flags, context or entries.
    return bytes((1, 0)) + bytes(7) + bytes(3)


GARBAGE = {
    "http request": (b"GET / HTTP/1.1\r\nHost: raftkv\r\n\r\n", "bad magic b'GET '"),
    "short garbage": (b"hello", "closed after 5 bytes of a handshake"),
    "wrong version": (
        MAGIC + bytes((9,)) + good_handshake()[5:],
        "protocol version 9",
    ),
    "wrong cluster": (
        encode_handshake(CLUSTER_ID + 1, 9, ConnectionKind.STREAM),
        "cluster ID mismatch: local 1234, remote 1235",
    ),
    "unknown connection kind": (good_handshake()[:-1] + b"\x09", "unknown connection kind 9"),
    "oversized frame": (
        good_handshake()
        + transport_module._FRAME_HEADER.pack(limits.PEER_MAX_FRAME_BYTES + 1, 0, 1),
        "exceeds the limit",
    ),
    "bad checksum": (
        good_handshake() + transport_module._FRAME_HEADER.pack(3, 12345, 1) + b"abc",
        "checksum mismatch",
    ),
    "undecodable message": (
        good_handshake() + encode_frame(FrameKind.MESSAGE, b"\x01\x03\xff"),
        "undecodable message",
    ),
    "local message type": (
        good_handshake() + encode_frame(FrameKind.MESSAGE, local_type_message()),
        "local message type HUP",
    ),
    "snapshot frame on a stream": (
        good_handshake() + encode_frame(FrameKind.SNAPSHOT_CHUNK, b"xyz"),
        "unexpected SNAPSHOT_CHUNK frame on a message stream",
    ),
    "snap message on a stream": (
        good_handshake() + encode_frame(FrameKind.MESSAGE, encode_message(snap_message(9, 2))),
        "SNAP message outside a snapshot connection",
    ),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_is_rejected_and_the_listener_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    garbage, problem = GARBAGE[case]
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            first.transport.send([heartbeat(1, 2, 1)])
            await eventually(lambda: len(second.messages) == 1)

            reader, writer = await asyncio.open_connection(HOST, second.transport.port)
            try:
                host, port = writer.get_extra_info("sockname")[:2]
                writer.write(garbage)
                if case == "short garbage":
                    writer.write_eof()
                await writer.drain()
                # The listener closes this connection (after its handshake reply, if any).
                await asyncio.wait_for(reader.read(), 5.0)
            finally:
                writer.close()

            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(f"{host}:{port}" in w and problem in w for w in warnings), warnings
            assert second.transport.stats.bad_frames == 1
            assert second.messages == [heartbeat(1, 2, 1)]

            # The well-behaved peer's stream was never disturbed and still delivers.
            first.transport.send([heartbeat(1, 2, 2)])
            await eventually(lambda: len(second.messages) == 2)
            assert second.messages[1] == heartbeat(1, 2, 2)
            assert first.transport.stats.reconnects == 0

    run(body)


def test_a_member_of_another_cluster_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def body() -> None:
        local = Member(2, tmp_path)
        stranger = Member(1, tmp_path, cluster_id=0xBEEF)
        async with started(local, stranger):
            stranger.transport.add_peer(2, [local.url])
            stranger.transport.send([heartbeat(1, 2, 1)])
            await eventually(lambda: 2 in stranger.unreachable)
            with pytest.raises(PeerUnavailableError):
                await stranger.transport.request(2, b"ping", 2.0)
            assert local.messages == []
            assert "cluster ID mismatch: local 1234, remote beef" in caplog.text

    run(body)


def test_a_joining_member_talks_before_it_knows_the_cluster_id(tmp_path: Path) -> None:
    """A member joining an existing cluster learns the cluster id from the leader's
    snapshot, so until then (id 0) it must be able to exchange messages; once it knows
    the id, that id is checked like everyone else's."""

    async def body() -> None:
        joiner = Member(1, tmp_path, cluster_id=0)  # not known yet
        local = Member(2, tmp_path)
        async with started(joiner, local):
            joiner.transport.add_peer(2, [local.url])
            local.transport.add_peer(1, [joiner.url])
            joiner.transport.send([heartbeat(1, 2, 1)])
            local.transport.send([heartbeat(2, 1, 1)])
            await eventually(lambda: len(joiner.messages) == 1 and len(local.messages) == 1)
            assert local.messages == [heartbeat(1, 2, 1)]
            assert joiner.messages == [heartbeat(2, 1, 1)]

            # Adopting the id re-establishes every connection; a message written into a
            # closing one may be lost (Raft resends), so resend until it arrives.
            joiner.transport.set_cluster_id(CLUSTER_ID)
            for _ in range(50):
                joiner.transport.send([heartbeat(1, 2, 2)])
                local.transport.send([heartbeat(2, 1, 2)])
                await asyncio.sleep(0.1)
                if heartbeat(1, 2, 2) in local.messages and heartbeat(2, 1, 2) in joiner.messages:
                    break
            assert heartbeat(1, 2, 2) in local.messages
            assert heartbeat(2, 1, 2) in joiner.messages
            assert await joiner.transport.request(2, b"ping", 2.0) == b"1:ping"

    run(body)


def test_stop_closes_inbound_connections_and_is_idempotent(tmp_path: Path) -> None:
    async def body() -> None:
        member = Member(2, tmp_path)
        async with started(member):
            reader, writer = await asyncio.open_connection(HOST, member.transport.port)
            try:
                writer.write(good_handshake())
                reply = await reader.readexactly(len(good_handshake()))
                assert reply == encode_handshake(CLUSTER_ID, 2, ConnectionKind.STREAM)
                await member.transport.stop()
                assert await asyncio.wait_for(reader.read(), 5.0) == b""
                await member.transport.stop()
            finally:
                writer.close()

    run(body)


# --- Snapshots ---------------------------------------------------------------------------


def write_file(path: Path, size_bytes: int) -> bytes:
    data = random.Random(size_bytes).randbytes(size_bytes)
    path.write_bytes(data)
    return data


def test_a_multi_mib_snapshot_arrives_intact(tmp_path: Path) -> None:
    image = write_file(tmp_path / "image.snap", 5 * limits.MIB + 123)
    msg = snap_message(1, 2)

    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            assert await first.transport.send_snapshot(msg, str(tmp_path / "image.snap"))
            await eventually(lambda: len(second.snapshots) == 1)
            received, path = second.snapshots[0]
            assert received == msg
            assert Path(path).read_bytes() == image
            assert Path(path).parent == second.snapshot_dir
            assert Path(path).name.startswith("incoming-") and path.endswith(".tmp")
            assert first.unreachable == []
            assert second.transport.stats.received == 1

    run(body)


def test_a_failed_snapshot_reports_the_peer_unreachable(tmp_path: Path) -> None:
    write_file(tmp_path / "image.snap", 1000)

    async def body() -> None:
        first = Member(1, tmp_path)
        async with started(first):
            first.transport.add_peer(2, [url(free_port())])
            image = str(tmp_path / "image.snap")
            assert not await first.transport.send_snapshot(snap_message(1, 2), image)
            assert first.unreachable == [2]
            # A missing file fails the same way, and so does an unknown member.
            missing = str(tmp_path / "missing")
            assert not await first.transport.send_snapshot(snap_message(1, 2), missing)
            assert not await first.transport.send_snapshot(snap_message(1, 5), image)
            assert first.unreachable == [2, 2, 5]

    run(body)


def test_one_snapshot_at_a_time_per_peer(tmp_path: Path) -> None:
    image = write_file(tmp_path / "image.snap", 2 * limits.MIB)

    async def body() -> None:
        async with cluster(tmp_path, 2) as (first, second):
            path = str(tmp_path / "image.snap")
            outcomes = await asyncio.gather(
                first.transport.send_snapshot(snap_message(1, 2), path),
                first.transport.send_snapshot(snap_message(1, 2), path),
            )
            assert list(outcomes) == [True, False]
            await eventually(lambda: len(second.snapshots) == 1)
            assert first.unreachable == [2]  # the second one was refused at once
            assert Path(second.snapshots[0][1]).read_bytes() == image

    run(body)


def test_an_interrupted_snapshot_leaves_no_file(tmp_path: Path) -> None:
    async def body() -> None:
        member = Member(2, tmp_path)
        async with started(member):
            reader, writer = await asyncio.open_connection(HOST, member.transport.port)
            try:
                writer.write(good_handshake(ConnectionKind.SNAPSHOT))
                begin = (1000).to_bytes(8, "big") + encode_message(snap_message(9, 2))
                writer.write(encode_frame(FrameKind.SNAPSHOT_BEGIN, begin))
                writer.write(encode_frame(FrameKind.SNAPSHOT_CHUNK, b"x" * 10))
                await writer.drain()
                await eventually(lambda: len(os.listdir(member.snapshot_dir)) == 1)
            finally:
                writer.close()
            await eventually(lambda: os.listdir(member.snapshot_dir) == [])
            assert member.snapshots == []

    run(body)


def test_stale_incoming_snapshots_are_removed_at_start(tmp_path: Path) -> None:
    async def body() -> None:
        member = Member(2, tmp_path)
        member.snapshot_dir.mkdir()
        (member.snapshot_dir / "incoming-abc.tmp").write_bytes(b"half")
        (member.snapshot_dir / "0000000000000004-00000000000001f4.snap").write_bytes(b"kept")
        async with started(member):
            assert os.listdir(member.snapshot_dir) == ["0000000000000004-00000000000001f4.snap"]

    run(body)


# --- Requests ----------------------------------------------------------------------------


def test_requests_are_answered_even_out_of_order(tmp_path: Path) -> None:
    async def slow_echo(frm: int, payload: bytes) -> bytes:
        await asyncio.sleep((20 - int(payload)) * 0.002)  # later requests answer first
        return await echo(frm, payload)

    async def body() -> None:
        first, second = Member(1, tmp_path), Member(2, tmp_path, on_request=slow_echo)
        async with started(first, second):
            first.transport.add_peer(2, [second.url])
            replies = await asyncio.gather(
                *(first.transport.request(2, b"%d" % i, 5.0) for i in range(20))
            )
            assert replies == [b"1:%d" % i for i in range(20)]

    run(body)


def test_a_failing_handler_is_reported_to_the_requester(tmp_path: Path) -> None:
    async def failing(frm: int, payload: bytes) -> bytes:
        raise RuntimeError("no lease 42")

    async def body() -> None:
        first, second = Member(1, tmp_path), Member(2, tmp_path, on_request=failing)
        async with started(first, second):
            first.transport.add_peer(2, [second.url])
            with pytest.raises(PeerRequestFailedError, match="no lease 42"):
                await first.transport.request(2, b"keepalive", 5.0)

    run(body)


def test_requests_time_out_or_fail_when_the_peer_is_gone(tmp_path: Path) -> None:
    async def body() -> None:
        blocked = asyncio.Event()  # never set: the handler never answers

        async def stuck(frm: int, payload: bytes) -> bytes:
            await blocked.wait()
            return b""

        first, second = Member(1, tmp_path), Member(2, tmp_path, on_request=stuck)
        async with started(first):
            async with started(second):
                first.transport.add_peer(2, [second.url])
                began = time.monotonic()
                with pytest.raises(PeerUnavailableError, match="did not answer within"):
                    await first.transport.request(2, b"ping", 0.2)
                assert 0.2 <= time.monotonic() - began < 2.0

                # A request pending when the peer stops fails at once, not at its timeout.
                pending = asyncio.create_task(first.transport.request(2, b"ping", 20.0))
                await asyncio.sleep(0.1)
                began = time.monotonic()
                await second.transport.stop()
                with pytest.raises(PeerUnavailableError):
                    await pending
                assert time.monotonic() - began < 2.0

            with pytest.raises(PeerUnavailableError):
                await first.transport.request(2, b"ping", 2.0)
            with pytest.raises(PeerUnavailableError):
                await first.transport.request(3, b"ping", 2.0)  # not a peer
            with pytest.raises(ValueError):
                await first.transport.request(2, bytes(limits.PEER_REQUEST_MAX_BYTES + 1), 2.0)

    run(body)


def test_frames_round_trip_through_read_frame() -> None:
    async def body() -> None:
        reader = asyncio.StreamReader()
        payload = dataclasses.replace(heartbeat(1, 2, 3), context=b"c")
        reader.feed_data(encode_frame(FrameKind.MESSAGE, encode_message(payload)))
        reader.feed_eof()
        kind, data = await read_frame(reader)
        assert kind is FrameKind.MESSAGE
        assert data == encode_message(payload)
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader)

    run(body)


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _receiver() -> tuple[Any, list[Message], _FakeTransport]:
    delivered: list[Message] = []
    receiver = transport_module._StreamReceiver(delivered.append, lambda amount: None)
    fake = _FakeTransport()
    receiver.connection_made(fake)
    return receiver, delivered, fake


def test_the_stream_receiver_reassembles_frames_however_the_bytes_are_split() -> None:
    async def scenario() -> None:
        messages = [
            Message(MessageType.HEARTBEAT, to=2, frm=1, term=3),
            Message(
                MessageType.APP,
                to=2,
                frm=1,
                term=3,
                index=7,
                commit=6,
                entries=(Entry(3, 8, EntryType.NORMAL, b"x" * 300),),
            ),
            Message(MessageType.APP_RESP, to=2, frm=1, term=3, index=8),
        ]
        wire = b"".join(encode_frame(FrameKind.MESSAGE, encode_message(m)) for m in messages)
        for cut in range(1, len(wire)):
            receiver, delivered, fake = _receiver()
            receiver.data_received(wire[:cut])
            receiver.data_received(wire[cut:])
            assert delivered == messages, cut
            assert not fake.closed and not receiver.closed.done()
        receiver, delivered, _ = _receiver()
        for byte in wire:
            receiver.data_received(bytes((byte,)))
        assert delivered == messages
        receiver.connection_lost(None)
        assert receiver.closed.result() is None

    asyncio.run(scenario())


def test_the_stream_receiver_closes_the_connection_on_a_broken_frame() -> None:
    good = encode_frame(FrameKind.MESSAGE, encode_message(Message(MessageType.HEARTBEAT, 2, 1)))
    bad_checksum = good[:5] + bytes((good[5] ^ 1,)) + good[6:]
    too_long = (limits.PEER_MAX_FRAME_BYTES + 1).to_bytes(4, "big") + good[4:]

    async def scenario(wire: bytes, expected: str) -> None:
        receiver, delivered, fake = _receiver()
        receiver.data_received(good + wire + good)
        assert delivered == [Message(MessageType.HEARTBEAT, 2, 1)]  # none after the bad one
        assert fake.closed
        with pytest.raises(PeerProtocolError, match=expected):
            receiver.closed.result()
        receiver.data_received(good)  # bytes still arriving are ignored
        assert len(delivered) == 1

    asyncio.run(scenario(bad_checksum, "checksum mismatch"))
    asyncio.run(scenario(too_long, "exceeds the limit"))
    snapshot_chunk = encode_frame(FrameKind.SNAPSHOT_CHUNK, b"data")
    asyncio.run(scenario(snapshot_chunk, "unexpected SNAPSHOT_CHUNK frame"))
